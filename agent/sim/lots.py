"""Two lots of demo data for ``driftgate report``: the workshop's floor over four and a half
days, lot A from the first morning, lot B from the fifth, through a real (in-process) agent.

Everything takes the agent's own path: the climate and tension readings of the simulated
workshop, the leather moisture meter's and the spectrophotometer's real frames (their
emulators, decoded by their profiles), the production context set per zone as
``driftgate context set`` does, detection, lot samples, the history, incidents. The two lots
differ in one thing only: the second leather delivery is drier (about 1.5 % moisture).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.color.references import ReferenceStore
from agent.config import config_from_dict
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, SourceHealth
from agent.ingest.profiles import load_profile
from agent.runtime.agent import Agent
from agent.sim.devices import DEMO_START, DeviceEmulator
from agent.sim.workshop import DAY, Workshop

LOT_A, LOT_B = "LOT-2411-A", "LOT-2411-B"
ZONES = ("edge_paint", "cutting", "sewing", "intake", "qc")
LOT_B_DAY = 4.0  # the second delivery (agent.sim.workshop: twice a week) is the drier one
READINGS = 720  # lots.readings: twelve hours of one reading a minute, same hours of each day
HIDES = 30  # moisture readings per delivery (lot_readings of the intake channel)
HOURS = 12.0  # each lot's sampled hours: a reading a minute
COLOUR_HOURS = 3.0  # QC measures each part every COLOUR_EVERY_S in the lot's first hours
COLOUR_EVERY_S = 300.0
QUIET_STEP_S = 300.0  # between the sampled hours a reading every 5 minutes (never stale)


@dataclass(frozen=True, slots=True)
class LotDemo:
    """What was made: the state dir and the lots, for the report's command line."""

    state_dir: Path
    lot_a: str
    lot_b: str
    alerts: tuple[str, ...]  # the agent's alert messages


def demo_config(state_dir: Path) -> dict[str, Any]:
    """The demo floor's configuration with an intake moisture meter and a colour station."""
    return {
        "site": "demo-atelier",
        "gateway": "demo-gw",
        "timezone": "Europe/Paris",
        "state_dir": str(state_dir),
        "alerts": {"console": False},
        "log": {"level": "warning"},
        "lots": {"readings": READINGS},
        "channels": [
            {
                "name": "intake.moisture",
                "label": "Leather moisture at intake",
                "affects": "cutting dimensions and edge paint adhesion",
                "action": "hold the lot; check its moisture against the approved lot's "
                "before cutting",
                "compare_on": ["lot"],
                "lot_readings": HIDES,
            }
        ],
    }


def _handler(agent: Agent, name: str, profile: str, zone: str, **tags: str) -> FrameHandler:
    base = {"site": agent.cfg.site, "gateway": agent.cfg.gateway, "zone": zone, **tags}
    return FrameHandler(
        name,
        Decoder(load_profile(profile), tags=base),
        agent.pipeline,
        agent.registry,
        prefix=zone,
        base_tags=base,
        health=SourceHealth(),
        measurements=agent.color,
    )


async def make_two_lots(state_dir: Path, *, seed: int = 1) -> LotDemo:
    """Run the demo floor through lot A (from day 0) and lot B (from day 4) into ``state_dir``."""
    state_dir = Path(state_dir)
    ReferenceStore(state_dir / "references").request_capture(
        "4711", "clasp", label="Clasp plating", note="golden sample"
    )
    ReferenceStore(state_dir / "references").request_capture(
        "4711", "body", label="Body leather", note="golden sample"
    )
    agent = Agent(config_from_dict(demo_config(state_dir), source="<lot demo>"))
    workshop = Workshop.build(DEMO_START, seed=seed, tags={"site": "demo-atelier",
                                                           "gateway": "demo-gw"})  # fmt: skip
    for channel in workshop.channels():
        agent.registry.add(channel)
    meter = DeviceEmulator("leather-moisture", workshop=workshop, seed=seed)
    spectro = {
        part: DeviceEmulator("spectro-31", workshop=workshop, seed=seed, device=kind)
        for part, kind in (("clasp", "plating"), ("body", "leather"))
    }
    handlers = {
        "meter": _handler(agent, "moisture-meter", "leather-moisture", "intake", sensor="lm-01"),
        "clasp": _handler(agent, "spectro", "spectro-31", "qc", sku="4711", part="clasp"),
        "body": _handler(agent, "spectro", "spectro-31", "qc", sku="4711", part="body"),
    }
    task = asyncio.create_task(agent.run(handle_signals=False))
    lots = {DEMO_START: LOT_A, DEMO_START + LOT_B_DAY * DAY: LOT_B}
    end = DEMO_START + LOT_B_DAY * DAY + HOURS * 3600
    try:
        now, lot_start, steps = DEMO_START, DEMO_START, 0
        while now < end:
            ts = int(now * 1e9)
            lot = lots.get(now)
            if lot is not None:  # a delivery arrives: set its lot, then measure the hides
                lot_start = now
                for zone in ZONES:
                    agent.context.set("zone", zone, {"lot": lot})
                agent.apply_context()
                for i in range(HIDES):
                    t = now + i * meter.interval
                    frame = meter.frames(t)[0]
                    handlers["meter"].frame(frame.data, received_ns=int(t * 1e9))
            for channel, value in workshop.sample(now):
                agent.pipeline.ingest(channel, ts, value)
            sampled = now - lot_start < HOURS * 3600
            qc = now - lot_start < COLOUR_HOURS * 3600
            if qc and (now - lot_start) % COLOUR_EVERY_S == 0:
                for part, emulator in spectro.items():
                    handlers[part].frame(emulator.frames(now)[0].data, received_ns=ts)
            now += 60.0 if sampled else QUIET_STEP_S
            steps += 1
            if steps % 240 == 0:
                agent.pipeline.process()
                await asyncio.sleep(0)
        agent.pipeline.process()
    finally:
        agent.stop_event.set()
        await task
    return LotDemo(state_dir, LOT_A, LOT_B, tuple(e.message for e in agent.events))
