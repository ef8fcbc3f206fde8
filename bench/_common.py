"""Shared bits of the bench scripts: machine facts, tables, the JSON result line.

Not a benchmark itself. The scripts import it as ``_common`` (their own directory is first on
``sys.path`` when run as ``python bench/NAME.py``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
    """The last line of every script: one machine-readable JSON object."""
    machine_info = {**machine_info, "loadavg_at_end": load_average()}
    print(f"load average at end: {' '.join(map(str, machine_info['loadavg_at_end']))}")
    print()
    print(json.dumps({"bench": bench, "machine": machine_info, **results}, sort_keys=False))


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
