"""Footprint: what each library costs to import, how fast the agent is ready and how much memory
it holds by floor size, after a simulated day, and its CPU at the floor load.

1. **Imports**: each library alone in a fresh interpreter (after ``asyncio``, which every
   agent imports): milliseconds (``time.perf_counter`` around the import, median of the runs)
   and MiB of RSS it adds; and whether the agent has it loaded once it runs a floor of
   200 channels with every default detector (the heavy ones must wait for their feature:
   SciPy for a lot comparison, colour-science for a colour instrument, influxdb-client for
   the v2 API, apprise for chat targets).
2. **Start**: ``driftgate run -c agent.yaml`` as a process, a simulated floor of 12, 200 and
   1,000 channels (``sources[].rooms``/``machines``; climate and tension channels with their
   kinds' default detectors): seconds from the process start to the log line ``agent running``
   (the spool open and the sources started: what systemd's READY means), and the RSS then.
3. **A day**: 200 channels, one reading a minute each (the simulated workshop's rate), one
   simulated day at 1,000× (12 hours with ``--quick``); RSS sampled every 0.2 s, the figure
   judged is at the end of the day, when every detector window holds a day.
4. **Floor load**: ``bench/serial_ingest.py``'s floor, 40 thread-tension sensors at 100 Hz
   in frames of 50 samples and 20 climate probes at 1 Hz on 60 ptys, every default detector;
   CPU share of one core of the agent process.

Targets (issue 12): start to ready ≤ 2 s; RSS ≤ 80 MB with 200 channels after one simulated
day; the floor load ≤ 10 % of one core.

    .venv/bin/python bench/footprint.py            # ~5 min
    .venv/bin/python bench/footprint.py --quick    # ~2 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

TARGET_READY_S = 2.0
TARGET_RSS_MIB = 80.0
TARGET_FLOOR_SHARE = 0.10
LIBRARIES = (
    ("numpy", "numpy"),
    ("pydantic", "pydantic"),
    ("aiohttp", "aiohttp"),
    ("aiomqtt (paho)", "aiomqtt"),
    ("structlog", "structlog"),
    ("PyYAML", "yaml"),
    ("pyserial-asyncio-fast", "serial_asyncio_fast"),
    ("aiosmtplib", "aiosmtplib"),
    ("apprise", "apprise"),
    ("influxdb-client (v2)", "influxdb_client.client.influxdb_client_async"),
    ("scipy.signal", "scipy.signal"),
    ("scipy.stats", "scipy.stats"),
    ("colour-science", "colour"),
    ("the whole agent", "agent.runtime.agent"),
)
SIZES = ((2, 8), (60, 80), (300, 400))  # rooms (2 channels each), machines (1 each)

_IMPORT = """
import asyncio, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
before = rss()
t = time.perf_counter()
import {module}
print(time.perf_counter() - t, rss() - before)
"""

_DAY = """
import sys
from agent.cli import main
code = main(["run", "-c", sys.argv[1]])
heavy = ("scipy", "colour", "influxdb_client", "apprise", "aiosmtplib", "matplotlib", "aiohttp")
print("LOADED " + " ".join(m for m in heavy if m in sys.modules), flush=True)
sys.exit(code)
"""


def rss_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def measure_imports(runs: int) -> list[dict[str, Any]]:
    out = []
    for name, module in LIBRARIES:
        times, sizes = [], []
        for _ in range(runs):
            code = _IMPORT.format(module=module)
            printed = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                cwd=_common.ROOT,
            ).stdout.split()
            times.append(float(printed[0]))
            sizes.append(float(printed[1]))
        out.append(
            {
                "library": name,
                "module": module,
                "ms": round(1000 * statistics.median(times)),
                "mib": round(statistics.median(sizes), 1),
            }
        )
        print(f"  import {module}: {out[-1]['ms']} ms, {out[-1]['mib']} MiB", flush=True)
    return out


def config(work: Path, rooms: int, machines: int, **source: Any) -> Path:
    path = work / f"agent-{rooms}-{machines}.yaml"
    sim = {"type": "simulated", "name": "floor", "rooms": rooms, "machines": machines, **source}
    path.write_text(
        json.dumps(
            {
                "site": "bench",
                "gateway": "gw1",
                "state_dir": str(work / f"state-{rooms}-{machines}"),
                "log": {"format": "json", "level": "info"},
                "alerts": {"console": False},
                "sources": [sim],
            }
        )
    )
    return path


def measure_start(work: Path, runs: int) -> list[dict[str, Any]]:
    """Process start to the ``agent running`` line, for each floor size."""
    driftgate = Path(sys.executable).parent / "driftgate"
    out = []
    for rooms, machines in SIZES:
        path = config(work, rooms, machines)
        ready, rss = [], []
        for _ in range(runs):
            started = time.monotonic()
            proc = subprocess.Popen(
                [str(driftgate), "run", "-c", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stderr is not None
            for line in proc.stderr:
                if '"agent running"' in line:
                    ready.append(time.monotonic() - started)
                    rss.append(rss_of(proc.pid) or 0.0)
                    break
            proc.terminate()
            proc.wait(30)
        channels = 2 * rooms + machines
        out.append(
            {
                "channels": channels,
                "ready_s": round(statistics.median(ready), 2),
                "ready_runs_s": [round(x, 2) for x in ready],
                "rss_mib": round(statistics.median(rss), 1),
            }
        )
        print(
            f"  {channels} channels: ready in {out[-1]['ready_s']} s, {out[-1]['rss_mib']} MiB",
            flush=True,
        )
    return out


def measure_day(work: Path, days: float) -> dict[str, Any]:
    """200 channels for ``days`` simulated days at 1,000×; RSS sampled as it runs."""
    rooms, machines = SIZES[1]
    path = config(work, rooms, machines, days=days, speed=1000, start="2026-01-05T00:00:00Z")
    script = work / "day.py"
    script.write_text(_DAY)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_common.ROOT,
    )
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        rss = rss_of(proc.pid)
        if rss is not None:
            samples.append((time.monotonic() - started, rss))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    ran = next(e for e in events if e["event"] == "agent running")
    stopped = next(e for e in events if e["event"] == "agent stopped")
    loaded = next(line for line in stdout.splitlines() if line.startswith("LOADED"))
    # The last sample before the shutdown started: every window then holds the day.
    end = [rss for t, rss in samples if t < samples[-1][0] - 1.0] or [samples[-1][1]]
    return {
        "channels": ran["channels"],
        "simulated_days": days,
        "readings": stopped["readings"],
        "wall_s": round(samples[-1][0], 1),
        "rss_ready_mib": round(samples[min(len(samples) - 1, 10)][1], 1),
        "rss_max_mib": round(max(r for _, r in samples), 1),
        "rss_end_mib": round(end[-1], 1),
        "timeline_mib": [round(r, 1) for _, r in samples[:: max(1, len(samples) // 20)]],
        "heavy_loaded": loaded.split()[1:],
    }


def measure_floor(work: Path, seconds: float) -> dict[str, Any]:
    import serial_ingest

    m = serial_ingest.floor_load(work, seconds)
    return {
        "seconds": round(m.seconds, 1),
        "readings_per_s": round(m.readings / m.seconds),
        "cpu_share_of_one_core": round(m.cpu_share, 4),
        "peak_rss_mib": round(m.rss_mib, 1),
        "committed_all": m.committed == m.appended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run each, 12 h, 15 s floor")
    args = parser.parse_args()
    m = _common.print_header("Footprint: imports, start, RSS by floor size and after a day, CPU")
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        print("1. imports")
        imports = measure_imports(runs)
        print("2. start to ready")
        start = measure_start(work, runs)
        print("3. a simulated day, 200 channels")
        day = measure_day(work, 0.5 if args.quick else 1.0)
        print("4. floor load")
        floor = measure_floor(work / "floor", 15.0 if args.quick else 30.0)
    print()
    _common.table(
        ["library", "import ms", "RSS MiB", "loaded by the agent (200 channels)"],
        [
            [
                i["library"],
                i["ms"],
                i["mib"],
                "-"
                if i["module"].startswith("agent")
                else (
                    "yes"
                    if i["module"].split(".")[0] in day["heavy_loaded"]
                    or i["module"]
                    in ("numpy", "pydantic", "aiomqtt", "structlog", "yaml", "serial_asyncio_fast")
                    else "no"
                ),
            ]
            for i in imports
        ],
    )
    print()
    _common.table(
        ["channels", "start to ready s", "runs", "RSS at ready MiB"],
        [
            [s["channels"], s["ready_s"], " ".join(map(str, s["ready_runs_s"])), s["rss_mib"]]
            for s in start
        ],
    )
    print()
    print(
        f"a day: {day['channels']} channels, {day['readings']:,} readings in "
        f"{day['wall_s']} s: RSS {day['rss_ready_mib']} MiB at ready, {day['rss_end_mib']} MiB "
        f"after {day['simulated_days']:g} simulated day(s) (max {day['rss_max_mib']} MiB)"
    )
    print(f"heavy libraries loaded: {', '.join(day['heavy_loaded']) or 'none'}")
    print(
        f"floor load: {floor['readings_per_s']:,} readings/s at "
        f"{100 * floor['cpu_share_of_one_core']:.1f}% of one core (peak RSS "
        f"{floor['peak_rss_mib']} MiB)"
    )
    ready_12 = start[0]["ready_s"]
    verdicts = {
        "ready": ready_12 <= TARGET_READY_S,
        "rss": day["rss_end_mib"] <= TARGET_RSS_MIB,
        "floor": floor["cpu_share_of_one_core"] <= TARGET_FLOOR_SHARE,
    }
    print(
        f"targets: ready ≤ {TARGET_READY_S} s ({'met' if verdicts['ready'] else 'NOT met'}), "
        f"RSS ≤ {TARGET_RSS_MIB:g} MiB after a day ({'met' if verdicts['rss'] else 'NOT met'}), "
        f"floor ≤ {100 * TARGET_FLOOR_SHARE:g}% ({'met' if verdicts['floor'] else 'NOT met'})"
    )
    print()
    _common.emit_json(
        "footprint",
        m,
        imports=imports,
        start=start,
        day=day,
        floor=floor,
        targets={
            "ready_s": TARGET_READY_S,
            "rss_mib": TARGET_RSS_MIB,
            "floor_share": TARGET_FLOOR_SHARE,
        },
        verdicts=verdicts,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
