"""When the wall clock jumps (an NTP step, a date set by hand): readings keep the clock's time,
detection goes on after a step back, and a step forward is not silence (agent/clock.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from pathlib import Path

import pytest
import serial
from servers import SerialPair

from agent import clock
from agent.clock import WallClock
from agent.config import config_from_dict
from agent.logs import configure_logging
from agent.runtime.agent import Agent

HOUR_NS = 3600 * 10**9


def frame(rh: float, t: float = 21.0) -> bytes:
    body = f"id=sht41-ep1,rh={rh:.2f},t={t:.2f}"
    check = 0
    for c in body.encode():
        check ^= c
    return f"${body}*{check:02X}\r\n".encode()


class FakeWall:
    """The real wall clock plus an offset the test steps."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset


def test_the_wall_clock_tells_a_step_from_slewing(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = FakeWall()
    monkeypatch.setattr(clock, "read_wall", wall)
    watched = WallClock()
    steps: list[int] = []
    watched.listeners.append(lambda step, _now: steps.append(step))
    watched.now()
    wall.offset += 500_000_000  # half a second: NTP slews that, not a step
    watched.now()
    assert steps == []
    wall.offset -= HOUR_NS
    now = watched.now()
    assert abs(now - (time.time_ns() - HOUR_NS + 500_000_000)) < 10**8
    (step,) = steps
    assert -HOUR_NS - 10**8 < step < -HOUR_NS + 10**8
    watched.now()
    assert len(steps) == 1  # told once


async def test_readings_follow_a_stepped_clock_and_detection_goes_on(
    tmp_path: Path, serial_pair: SerialPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: after a step back every reading was stamped 1 ns after the last one (an hour of
    readings within microseconds), and a step forward made the stale check fire."""
    wall = FakeWall()
    monkeypatch.setattr(clock, "read_wall", wall)
    cfg = config_from_dict(
        {
            "site": "s",
            "gateway": "gw",
            "state_dir": str(tmp_path / "state"),
            "sources": [
                {"type": "serial", "name": "probe", "profile": "sht4x-serial", "zone": "ep",
                 "sensor": "sht41-ep1", "port": serial_pair.device},
            ],
            "channels": [
                {"name": "ep.humidity", "baseline": {"value": 50.0, "std": 1.0},
                 "detectors": [{"type": "stale", "max_gap": "3s"},
                               {"type": "baseline_shift", "window": "1s", "warn": 5.0,
                                "min_samples": 2}]},
            ],
        },
        env={},
    )  # fmt: skip
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(cfg)
    stamps: list[int] = []
    original = agent.pipeline.ingest

    def spy(channel: object, ts_ns: int, value: float, prefix: str | None = None) -> None:
        if getattr(channel, "name", "") == "ep.humidity":
            stamps.append(ts_ns)
        original(channel, ts_ns, value, prefix)  # type: ignore[arg-type]

    agent.pipeline.ingest = spy  # type: ignore[method-assign]
    task = asyncio.create_task(agent.run(handle_signals=False))
    port = serial.Serial(serial_pair.emulator, 115200, write_timeout=2)

    async def send(n: int, every: float, rh: float = 50.0) -> None:
        for _ in range(n):
            port.write(frame(rh))
            port.flush()
            await asyncio.sleep(every)

    try:
        await asyncio.sleep(0.3)  # the port opens
        await send(10, 0.05)
        before = len(stamps)
        wall.offset -= HOUR_NS  # NTP steps the clock back an hour
        await send(5, 0.1)
        # An alarm-worthy shift after the step is still judged: the window restarted.
        await send(15, 0.1, rh=60.0)
        after_back = len(stamps)
        wall.offset += 2 * HOUR_NS  # and forward two hours, with a slow sensor
        await send(2, 1.6)  # the stale check runs every second meanwhile (max_gap 3 s)
        await asyncio.sleep(0.2)
    finally:
        port.close()
        agent.stop_event.set()
        result = await asyncio.wait_for(task, 20)
        wall.offset = 0
        clock.WALL.now()  # back on the real time line before the next test

    back = stamps[before:after_back]
    assert back[0] < stamps[before - 1] - HOUR_NS // 2  # the new time, not last + 1 ns
    gaps = [b - a for a, b in itertools.pairwise(back)]
    assert min(gaps) > 50_000_000  # readings 0.1 s apart stay 0.1 s apart, never 1 ns
    assert result.metrics.clock_steps == 2
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    steps = [e for e in logs if e["event"].startswith("the wall clock stepped")]
    assert [e["event"] for e in steps] == [
        "the wall clock stepped back",
        "the wall clock stepped forward",
    ]
    assert steps[0]["restarted_channels"] == 2  # humidity and temperature
    assert 3599 <= steps[0]["by_s"] <= 3601
    events = [(e.detector, e.transition) for e in result.events]
    assert ("baseline_shift", "raised") in events  # detection went on after the step back
    assert ("stale", "raised") not in events  # the step forward was not silence
    assert result.metrics.late_readings == 0  # the step is noticed at the first stamp after it
