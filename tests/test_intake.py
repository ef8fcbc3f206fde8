"""Leather moisture at intake, end to end: the meter's emulator (`driftgate simulate`'s) writes
its real frames to a socat pty, a running agent reads them under the lot set with
`driftgate context set --zone intake lot=…`, `driftgate lot approve` marks the approved lot, and
each new lot is compared with the previous lot's and the approved lot's moisture."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import SerialPair
from waiting import until

from agent.cli import main
from agent.config import config_from_dict
from agent.drift.alerts import AlertEvent
from agent.runtime.agent import Agent
from agent.sim.devices import DEMO_START, DeviceEmulator
from agent.sim.emulator import SimulateOptions, simulate
from agent.sim.workshop import DAY

HIDES = 20
CHANNEL = "intake.moisture"
DAY_OF = {"LOT-A": 0.0, "LOT-B": 1.0, "LOT-C": 4.0}  # LOT-C: the second, drier delivery


def _config(state: Path, port: str) -> dict[str, Any]:
    return {
        "site": "atelier",
        "gateway": "gw-intake",
        "state_dir": str(state),
        "alerts": {"console": False},
        "self_metrics": {"interval": 60},
        "sources": [
            {"type": "serial", "name": "moisture-meter", "profile": "leather-moisture",
             "zone": "intake", "sensor": "lm-01", "port": port, "baud": 9600},
        ],
        "channels": [
            {"name": CHANNEL, "label": "Leather moisture at intake",
             "affects": "cutting dimensions", "compare_on": ["lot"], "lot_readings": HIDES},
        ],
    }  # fmt: skip


def _expected(lot: str) -> list[float]:
    """The moisture the emulator sends for this lot's hides (the same seed and start)."""
    emulator = DeviceEmulator("leather-moisture", start=DEMO_START + DAY_OF[lot] * DAY)
    start = DEMO_START + DAY_OF[lot] * DAY
    return [emulator.frames(start + i * emulator.interval)[0].expected[0][2] for i in range(HIDES)]


async def _measure(agent: Agent, state: Path, port: str, lot: str) -> None:
    """`driftgate context set --zone intake lot=LOT`, then the meter measures HIDES hides."""
    argv = ["context", "set", "--state-dir", str(state), "--zone", "intake", f"lot={lot}"]
    assert main(argv) == 0
    await until(lambda: agent.context.scopes.get("zone:intake", {}).get("lot") == lot, 5,
                f"the agent to take lot {lot}")  # fmt: skip
    channel = agent.registry.channels.get(CHANNEL)
    before = channel.readings if channel is not None else 0
    await simulate(
        SimulateOptions(profile="leather-moisture", serial=port, rate=400, count=HIDES,
                        start=DEMO_START + DAY_OF[lot] * DAY, baud=9600),
    )  # fmt: skip
    await until(
        lambda: (
            (c := agent.registry.channels.get(CHANNEL)) is not None and c.readings == before + HIDES
        ),
        10,
        f"{HIDES} readings of lot {lot}",
    )
    agent.pipeline.process()


def _compared(agent: Agent) -> list[AlertEvent]:
    return [e for e in agent.events if e.detector == "lot_compare"]


async def test_a_drier_lot_is_told_against_the_previous_and_the_approved_lot(
    tmp_path: Path, serial_pair: SerialPair
) -> None:
    state = tmp_path / "state"
    agent = Agent(config_from_dict(_config(state, serial_pair.device)))
    task = asyncio.create_task(agent.run(handle_signals=False))
    try:
        source = agent.sources[0]
        await until(lambda: source.health.connected, 5, "the meter's port to open")  # type: ignore[attr-defined]
        await _measure(agent, state, serial_pair.emulator, "LOT-A")
        await _measure(agent, state, serial_pair.emulator, "LOT-B")  # closes LOT-A's sample
        assert _compared(agent) == []  # the same delivery: no difference
        await agent.history.flush()  # type: ignore[union-attr]  # LOT-A's sample on disk now
        argv = ["lot", "approve", "LOT-A", "--state-dir", str(state), "--note", "golden sample"]
        assert main(argv) == 0
        await until(lambda: bool(agent.lots.approved.lots), 5, "the agent to read the approval")  # type: ignore[union-attr]
        await _measure(agent, state, serial_pair.emulator, "LOT-C")
        await until(lambda: bool(_compared(agent)), 5, "the comparison of LOT-C")
    finally:
        agent.stop_event.set()
        await task
    (event,) = _compared(agent)
    a, b, c = (np.asarray(_expected(lot)) for lot in ("LOT-A", "LOT-B", "LOT-C"))
    assert c.mean() < a.mean() - 1.0  # the emulator's second delivery is drier
    assert event.transition == "lot_change"
    assert event.channel.name == CHANNEL
    assert math.isclose(event.value, float(c.mean()), rel_tol=1e-12)
    # The baseline is the approved lot's: the effect in % moisture against the approved sample.
    assert math.isclose(event.baseline, float(a.mean()), rel_tol=1e-12)
    assert math.isclose(event.delta, float(c.mean() - a.mean()), rel_tol=1e-12)
    assert event.baseline_note == f"approved lot LOT-A, first {HIDES} readings"
    message = event.message
    assert message.startswith(
        f"Zone intake, after lot LOT-B → LOT-C: leather moisture at intake averages "
        f"{c.mean():.1f} % over the first {HIDES} readings of lot LOT-C, "
        f"{b.mean() - c.mean():.1f} % below lot LOT-B ({b.mean():.1f} %) and "
        f"{a.mean() - c.mean():.1f} % below the approved lot LOT-A ({a.mean():.1f} %)."
    ), message
    assert "Against lot LOT-B: Welch t = " in message
    assert "Against the approved lot LOT-A: Welch t = " in message
    assert message.endswith("This affects cutting dimensions.")


@pytest.mark.parametrize("sku", ["4711", ""])
def test_an_approval_for_a_sku_wins_over_the_one_for_every_sku(tmp_path: Path, sku: str) -> None:
    from agent.drift.approved import ApprovedLot, ApprovedLots, approved_path

    store = ApprovedLots(approved_path(tmp_path))
    store.put(
        [
            ApprovedLot(CHANNEL, "LOT-ANY", (14.0, 14.2), 1, 2, 3),
            ApprovedLot(CHANNEL, "LOT-4711", (13.0, 13.1), 1, 2, 3, sku="4711"),
        ]
    )
    again = ApprovedLots(approved_path(tmp_path))  # as the agent reads what the CLI wrote
    found = again.find(CHANNEL, sku or None)
    assert found is not None
    assert found.lot == ("LOT-4711" if sku else "LOT-ANY")
    assert again.find(CHANNEL, "9999") == again.lots[(CHANNEL, "")]
    assert again.find("other.channel", "4711") is None
