"""Lot comparison: a new lot's first readings against the previous lot's, through a running
agent (context change → samples → lot_summary points and a lot_change alert)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
from scipy import stats
from spoolfile import committed_lines

from agent.config import config_from_dict
from agent.reading import Channel
from agent.runtime.agent import Agent

N = 200
T0 = 1_772_409_600 * 10**9  # 2026-03-02T00:00Z
STEP = 60 * 10**9
CHANNEL = "sewing.m05.tension"


def _agent(state_dir: Path) -> tuple[Agent, Channel]:
    cfg = config_from_dict(
        {
            "site": "atelier",
            "gateway": "gw1",
            "state_dir": str(state_dir),
            "alerts": {"console": False},
            "lots": {"readings": N},
        }
    )
    agent = Agent(cfg)
    channel = agent.registry.add(
        Channel(
            name=CHANNEL,
            measurement="tension",
            field="tension_cn",
            unit="cN",
            kind="tension",
            label="Sewing M05 thread tension",
            affects="seam strength and stitch appearance",
            tags={"site": "atelier", "gateway": "gw1", "zone": "sewing", "line": "L2",
                  "station": "m05"},
        )
    )  # fmt: skip
    return agent, channel


class Floor:
    """Feeds one channel through a running agent, one reading a minute."""

    def __init__(self, state_dir: Path, t: int = T0) -> None:
        self.state_dir = state_dir
        self.agent, self.channel = _agent(state_dir)
        self.t = t
        self.task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> Floor:
        self.task = asyncio.create_task(self.agent.run(handle_signals=False))
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.agent.stop_event.set()
        assert self.task is not None
        await self.task

    def lot(self, scope: str, name: str, lot: str) -> None:
        self.agent.context.set(scope, name, {"lot": lot})
        self.agent.apply_context()

    async def feed(self, values: np.ndarray) -> None:
        for i, x in enumerate(values.tolist()):
            self.agent.pipeline.ingest(self.channel, self.t, x)
            self.t += STEP
            if i % 37 == 36:
                await asyncio.sleep(0)  # the agent's detect loop runs between bursts
        self.agent.pipeline.process()


def _spooled(state_dir: Path, measurement: str) -> list[str]:
    return committed_lines(state_dir, measurement)


def _summaries(state_dir: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in _spooled(state_dir, "lot_summary"):
        tags, fields, _ = line.split(" ")
        tag = dict(kv.split("=", 1) for kv in tags.split(",")[1:])
        assert tag["channel"] == CHANNEL
        assert tag["zone"] == "sewing"
        assert tag["line"] == "L2"
        assert tag["site"] == "atelier"
        assert tag["gateway"] == "gw1"
        out[tag["lot"]] = {k: float(v.rstrip("i")) for k, v in
                           (kv.split("=", 1) for kv in fields.split(","))}  # fmt: skip
    return out


def _check_summary(got: dict[str, float], values: np.ndarray) -> None:
    assert got["n"] == len(values)
    assert math.isclose(got["mean"], float(values.mean()), rel_tol=1e-12)
    assert math.isclose(got["std"], float(values.std(ddof=1)), rel_tol=1e-12)
    assert math.isclose(got["p5"], float(np.percentile(values, 5)), rel_tol=1e-12)
    assert math.isclose(got["p95"], float(np.percentile(values, 95)), rel_tol=1e-12)


async def test_lots_from_different_distributions_raise_lot_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    a = np.round(rng.normal(123.4, 2.0, N + 60), 1)
    b = np.round(rng.normal(131.2, 2.0, N + 60), 1)
    async with Floor(tmp_path) as floor:
        floor.lot("line", "L2", "LOT-2411-A")
        await floor.feed(a)
        floor.lot("line", "L2", "LOT-2411-B")
        await floor.feed(b)
        events = [e for e in floor.agent.events if e.detector == "lot_compare"]
    assert len(events) == 1
    event = events[0]
    first_a, first_b = a[:N], b[:N]
    welch = stats.ttest_ind(first_b, first_a, equal_var=False)
    ks = stats.ks_2samp(first_b, first_a)
    diff = float(first_b.mean() - first_a.mean())
    assert event.transition == "lot_change"
    assert event.level.label == "warn"
    assert event.channel.name == CHANNEL
    assert math.isclose(event.value, float(first_b.mean()), rel_tol=1e-12)
    assert math.isclose(event.baseline, float(first_a.mean()), rel_tol=1e-12)
    assert math.isclose(event.delta, diff, rel_tol=1e-12)
    assert event.ts_ns == T0 + (len(a) + N - 1) * STEP  # the reading that completed the sample
    assert event.since_ns == T0 + len(a) * STEP
    expected = (
        f"Line L2 lot LOT-2411-B: sewing M05 thread tension averages {first_b.mean():.1f} cN "
        f"over its first {N} readings, {diff:.1f} cN above lot LOT-2411-A "
        f"({first_a.mean():.1f} cN); Welch t = {welch.statistic:.1f}, p < 0.001; "
        f"KS D = {ks.statistic:.2f}. This affects seam strength and stitch appearance."
    )
    assert event.message == expected
    # ...and it is in the spool as a drift_alert point.
    alerts = [x for x in _spooled(tmp_path, "drift_alert") if "detector=lot_compare" in x]
    assert len(alerts) == 1
    assert 'transition="lot_change"' in alerts[0]
    summaries = _summaries(tmp_path)
    assert set(summaries) == {"LOT-2411-A", "LOT-2411-B"}
    _check_summary(summaries["LOT-2411-A"], first_a)
    _check_summary(summaries["LOT-2411-B"], first_b)
    # Readings beyond the sample carry the lot tag but are not part of it.
    tension = _spooled(tmp_path, "tension")
    assert sum(",lot=LOT-2411-B " in x or ",lot=LOT-2411-B," in x for x in tension) == len(b)


async def test_lots_from_equal_distributions_do_not_alert(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    a = np.round(rng.normal(123.4, 2.0, N), 1)
    b = np.round(rng.normal(123.4, 2.0, N), 1)
    async with Floor(tmp_path) as floor:
        floor.lot("zone", "sewing", "LOT-7")
        await floor.feed(a)
        floor.lot("zone", "sewing", "LOT-8")
        await floor.feed(b)
        events = [e for e in floor.agent.events if e.detector == "lot_compare"]
    assert events == []
    summaries = _summaries(tmp_path)
    _check_summary(summaries["LOT-7"], a)
    _check_summary(summaries["LOT-8"], b)


async def test_a_small_but_significant_difference_below_the_effect_size_does_not_alert(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(13)
    a = rng.normal(123.4, 0.5, N)
    b = rng.normal(124.4, 0.5, N)  # 1 cN: p is tiny, but below tension's 3 cN effect size
    assert stats.ttest_ind(b, a, equal_var=False).pvalue < 1e-6
    async with Floor(tmp_path) as floor:
        floor.lot("line", "L2", "A")
        await floor.feed(a)
        floor.lot("line", "L2", "B")
        await floor.feed(b)
        assert [e for e in floor.agent.events if e.detector == "lot_compare"] == []


async def test_lot_samples_survive_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    a = np.round(rng.normal(123.4, 2.0, N), 1)
    b = np.round(rng.normal(131.2, 2.0, N + 20), 1)
    async with Floor(tmp_path) as floor:
        floor.lot("line", "L2", "LOT-A")
        await floor.feed(a)
        floor.lot("line", "L2", "LOT-B")
        await floor.feed(b[:120])
        t = floor.t
    assert (tmp_path / "lots.json").exists()
    async with Floor(tmp_path, t) as floor:  # a new agent on the same state_dir
        await floor.feed(b[120:])
        events = [e for e in floor.agent.events if e.detector == "lot_compare"]
    assert len(events) == 1
    assert math.isclose(events[0].value, float(b[:N].mean()), rel_tol=1e-12)
    assert math.isclose(events[0].baseline, float(a.mean()), rel_tol=1e-12)
    assert events[0].since_ns == T0 + N * STEP
    summaries = _summaries(tmp_path)
    _check_summary(summaries["LOT-A"], a)
    _check_summary(summaries["LOT-B"], b[:N])
