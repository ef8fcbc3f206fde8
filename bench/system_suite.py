"""The system suite's wall time: tests/system/ boots a Debian bookworm gateway with its own
systemd per test, after one run of deploy/install.sh.

Runs ``pytest tests/system`` in a subprocess and reports its wall time, whether the container
root was already cached (building it is a one-off of a few minutes, not part of the figure), and
the phases the suite's fixtures measured themselves: gathering the wheels, install.sh, and the
boot of each gateway to ``systemctl is-system-running``; then each test's own time (setup,
call and teardown). Needs root and the Debian packages debootstrap and systemd-container.

    .venv/bin/python bench/system_suite.py           # the whole suite
    .venv/bin/python bench/system_suite.py --quick   # without the second install (upgrade)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _common import ROOT, emit_json, print_header, table

QUICK_SKIPS = "not second_install"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the upgrade test")
    args = parser.parse_args()
    machine_info = print_header("System suite: tests/system/ on a containerised bookworm systemd")
    with tempfile.TemporaryDirectory() as tmp:
        figures_path = Path(tmp) / "figures.json"
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "tests/system", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", "-o", "junit_duration_report=total"]  # fmt: skip
        if args.quick:
            command += ["-k", QUICK_SKIPS]
        env = {**os.environ, "DRIFTGATE_SYSTEM_FIGURES": str(figures_path)}
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                check=False)  # fmt: skip
        wall = time.monotonic() - started
        tail = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
        print(f"pytest: {tail[0]} (exit {result.returncode})")
        figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
        tests = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            if case.find("failure") is not None or case.find("error") is not None:
                outcome = "failed"
            elif case.find("skipped") is not None:
                outcome = "skipped"
            tests.append({"test": case.get("name", ""), "s": round(float(case.get("time", 0)), 1),
                          "outcome": outcome})  # fmt: skip
    boots = figures.get("boot_s", [])
    phases = {
        "root cached at start": "yes" if figures.get("root_cached") else "no (built now)",
        "root (debootstrap or cache check) s": figures.get("root_s"),
        "wheels s": figures.get("wheels_s"),
        "install.sh s": figures.get("install_s"),
        "gateway boot s (median)": statistics.median(boots) if boots else None,
        "gateways booted": len(boots),
        "suite wall s": round(wall, 1),
    }
    print()
    table(["phase", "value"], [[k, "-" if v is None else v] for k, v in phases.items()])
    print()
    table(["test", "s", "outcome"], [[t["test"], t["s"], t["outcome"]] for t in tests])
    print()
    emit_json(
        "system_suite",
        machine_info,
        quick=args.quick,
        exit_status=result.returncode,
        wall_s=round(wall, 1),
        root_cached=bool(figures.get("root_cached")),
        root_s=figures.get("root_s"),
        wheels_s=figures.get("wheels_s"),
        install_s=figures.get("install_s"),
        boot_median_s=statistics.median(boots) if boots else None,
        gateways=len(boots),
        passed=sum(t["outcome"] == "passed" for t in tests),
        failed=sum(t["outcome"] == "failed" for t in tests),
        skipped=sum(t["outcome"] == "skipped" for t in tests),
        tests=tests,
    )


if __name__ == "__main__":
    main()
