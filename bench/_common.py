"""Shared bits of the bench scripts: machine facts, tables, the JSON result line.

Not a benchmark itself. The scripts import it as ``_common`` (their own directory is first on
``sys.path`` when run as ``python bench/NAME.py``).

``emit_json`` also keeps the latest result of each script in ``bench/results/<bench>.json``
(committed); ``scripts/gen_docs.py`` renders ``docs/performance.md`` from those files.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS_ENV = "DRIFTGATE_BENCH_RESULTS"
"""Set to another directory to keep a trial run out of the committed results."""
_STARTED = time.monotonic()  # the scripts import this module first: elapsed_s is the run's


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "loadavg_at_start": load_average(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def print_header(title: str) -> dict[str, Any]:
    """Print the script's title and the machine; return the machine dict for the JSON line."""
    m = machine()
    print(title)
    print(f"  Python {m['python']} ({m['implementation']}) on {m['cpu']}, {m['cpus']} CPUs")
    print(f"  load average at start: {' '.join(map(str, m['loadavg_at_start']))}")
    print()
    return m


def rss_now_mib() -> float:
    """Current resident set size (VmRSS) in MiB, 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (getrusage; KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print a plain left/right aligned table (text left, numbers right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(_numberish(r[i]) for r in cells[1:]) if rows else False for i in range(len(headers))
    ]

    def fmt(row: list[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(fmt(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))


def _numberish(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace("x", "").strip()
    try:
        float(t)
    except ValueError:
        return t in ("", "-", "n/a")
    return True


def emit_json(bench: str, machine_info: dict[str, Any], **results: Any) -> None:
    """The last line of every script: one machine-readable JSON object, also saved.

    The object is written to ``bench/results/<bench>.json`` (or ``$DRIFTGATE_BENCH_RESULTS``),
    replacing the previous run's: the figures in docs/performance.md are the latest run's.
    """
    machine_info = {**machine_info, "loadavg_at_end": load_average()}
    print(f"load average at end: {' '.join(map(str, machine_info['loadavg_at_end']))}")
    print()
    record = {
        "bench": bench,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(),
        "commit": git_commit(),
        "elapsed_s": round(time.monotonic() - _STARTED, 1),
        "machine": machine_info,
        **results,
    }
    print(json.dumps(record, sort_keys=False))
    path = save_result(record)
    print(f"saved to {path}", file=sys.stderr)


def command_line() -> str:
    """How this run was started, relative to the repository: ``bench/forward.py --quick``."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = script.name
    return shlex.join([shown, *sys.argv[1:]])


def git_commit() -> str:
    """The checkout's short commit, with ``+dirty`` when agent/ or bench/ code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "agent", "bench/*.py", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            check=False,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def save_result(record: dict[str, Any]) -> Path:
    """Write one result object to ``<results dir>/<bench>.json`` (atomically)."""
    directory = Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record['bench']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def remove_files(directory: Path, pattern: str) -> None:
    """Delete the files in directory matching a glob pattern (spool databases between runs)."""
    for path in directory.glob(pattern):
        path.unlink()


def load_servers() -> ModuleType:
    """tests/servers.py (plain classes, no pytest) imported as a module."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import servers

    return servers


def quiet_logs() -> None:
    """Only warnings and errors from the agent's structlog loggers (to stderr)."""
    from agent.logs import configure_logging

    configure_logging("warning", "console", sys.stderr)
