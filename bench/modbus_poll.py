"""Modbus polling: polls per second one bus sustains (RTU at 9600 and 19200 baud, TCP), and
the agent's CPU per poll.

The agent side is a real ``Agent`` (``agent.runtime``) with one ``modbus`` source, in this
process, so its CPU time (``os.times`` of this process: the event loop, pymodbus, decoding,
detection and the spool's SQLite thread) is what is measured. The devices are
``driftgate simulate`` in a subprocess of its own: pymodbus's server answering as XY-MD02
transmitters (two input registers each), RTU on the emulator end of a ``socat`` pty pair
(``tests/servers.py`` ``SerialPair``), or TCP on 127.0.0.1 (no other address).

A pty carries bytes at once whatever the baud rate, so the emulator answers after the time the
request (8 bytes) and its answer (9 bytes) take on a real RS-485 line at the bus's baud rate
(10 bits a character at 8N1); the agent keeps its frame gap (3.5 characters: 4.0 ms at 9600
baud, 2.0 ms at 19200) between frames as on a real bus. ``wire limit`` is the most a perfect
master could do: 1 / (wire time + gap).

``net CPU ms/poll`` leaves out what the agent spends anyway (its detection, maintenance and
loop-lag ticks), measured on the same agent polling once a day: at a few dozen polls a second
that base load is most of the raw figure.

Every device is polled every 50 ms (the shortest ``poll``), and there are more devices than
the bus can serve at that rate, so the bus is saturated: the figure is the bus's capacity with
the agent as master, not the demand.

    .venv/bin/python bench/modbus_poll.py            # ~60 s
    .venv/bin/python bench/modbus_poll.py --quick    # ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

from agent.config import config_from_dict
from agent.ingest.modbus import ModbusSource
from agent.logs import configure_logging
from agent.runtime.agent import Agent
from agent.sim.modbus import wire_seconds

POLL_S = 0.05
REQUEST_BYTES, ANSWER_BYTES = 8, 9  # read 2 input registers: 01 04 00 01 00 02 + CRC
WARMUP_S = 1.5


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def measure(
    name: str,
    bus: dict[str, Any],
    slaves: int,
    simulate: list[str],
    seconds: float,
    poll: float = POLL_S,
) -> dict[str, Any]:
    """Run the emulated devices and an agent polling them; polls/s and CPU per poll."""
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "simulate", "--profile", "xy-md02",
        *simulate, *(a for n in range(1, slaves + 1) for a in ("--slave", str(n))),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    state = Path(tempfile.mkdtemp(prefix="modbus-bench-"))
    try:
        assert sim.stdout is not None
        # Its first progress line: pymodbus imported and the port open (or listening).
        await asyncio.wait_for(sim.stdout.readline(), 30)
        devices = [{"slave": n, "profile": "xy-md02", "poll": poll} for n in range(1, slaves + 1)]
        cfg = config_from_dict(
            {
                "site": "bench",
                "gateway": "gw",
                "state_dir": str(state),
                "log": {"level": "warning"},
                "self_metrics": {"interval": 3600},
                "sources": [{"type": "modbus", "name": "bus", **bus, "devices": devices}],
            }
        )
        agent = Agent(cfg)
        (source,) = agent.sources
        assert isinstance(source, ModbusSource)
        task = asyncio.create_task(agent.run(handle_signals=False))
        await asyncio.sleep(WARMUP_S)
        health = source.health.slaves
        reads0, cpu0, t0 = sum(h.reads for h in health), cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        reads1, cpu1, t1 = sum(h.reads for h in health), cpu_seconds(), time.monotonic()
        failed = sum(h.timeouts + h.crc_errors + h.exceptions for h in health)
        agent.stop_event.set()
        await asyncio.wait_for(task, 15)
    finally:
        if sim.returncode is None:
            sim.terminate()
        await sim.wait()
    polls = reads1 - reads0
    wall = t1 - t0
    return {
        "name": name,
        "slaves": slaves,
        "seconds": round(wall, 2),
        "polls": polls,
        "polls_per_s": round(polls / wall, 1),
        "cpu_ms_per_poll": round((cpu1 - cpu0) * 1000 / polls, 3) if polls else None,
        "cpu_share_of_one_core": round((cpu1 - cpu0) / wall, 3),
        "failed_tries": failed,
        "readings": source.health.readings,
    }


async def run(seconds: float) -> list[dict[str, Any]]:
    servers = _common.load_servers()
    runs = []
    port = servers.free_port()
    idle = await measure(
        "idle agent (TCP, polls once a day)",
        {"host": "127.0.0.1", "tcp_port": port, "timeout": 0.5},
        1,
        ["--modbus-tcp", f"127.0.0.1:{port}"],
        seconds,
        poll=86400.0,
    )
    for baud, slaves in ((9600, 8), (19200, 8)):
        pair = servers.SerialPair(Path(tempfile.mkdtemp(prefix="modbus-pty-"))).start()
        try:
            result = await measure(
                f"RTU {baud} baud",
                {"port": pair.device, "baud": baud, "timeout": 0.2},
                slaves,
                ["--serial", pair.emulator, "--baud", str(baud)],
                seconds,
            )
        finally:
            pair.stop()
        wire = wire_seconds(REQUEST_BYTES, ANSWER_BYTES, baud, 10)
        gap = 3.5 * 11 / baud
        result["wire_limit_per_s"] = round(1 / (wire + gap), 1)
        runs.append(result)
    port = servers.free_port()
    tcp = await measure(
        "TCP 127.0.0.1",
        {"host": "127.0.0.1", "tcp_port": port, "timeout": 0.5},
        32,
        ["--modbus-tcp", f"127.0.0.1:{port}"],
        seconds,
    )
    tcp["wire_limit_per_s"] = None
    runs.append(tcp)
    for result in runs:  # what polling adds to an agent that runs anyway
        extra = result["cpu_share_of_one_core"] - idle["cpu_share_of_one_core"]
        result["net_cpu_ms_per_poll"] = round(extra * 1000 / max(result["polls_per_s"], 1e-9), 3)
    idle["wire_limit_per_s"] = idle["net_cpu_ms_per_poll"] = None
    return [idle, *runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="4 s per bus instead of 10 s")
    args = parser.parse_args()
    configure_logging("warning", "console")
    seconds = 4.0 if args.quick else 10.0
    machine = _common.print_header("Modbus polling: polls/s on one bus, agent CPU per poll")
    runs = asyncio.run(run(seconds))
    _common.table(
        ["bus", "devices", "polls/s", "wire limit/s", "CPU ms/poll", "net CPU ms/poll",
         "CPU of one core", "failed tries"],
        [
            [r["name"], r["slaves"], f"{r['polls_per_s']:,.1f}",
             "–" if r["wire_limit_per_s"] is None else f"{r['wire_limit_per_s']:,.1f}",
             "–" if r["cpu_ms_per_poll"] is None else f"{r['cpu_ms_per_poll']:.3f}",
             "–" if r["net_cpu_ms_per_poll"] is None else f"{r['net_cpu_ms_per_poll']:.3f}",
             f"{100 * r['cpu_share_of_one_core']:.1f}%", r["failed_tries"]]
            for r in runs
        ],
    )  # fmt: skip
    print()
    _common.emit_json("modbus_poll", machine, quick=args.quick, runs=runs)


if __name__ == "__main__":
    main()
