"""Lot comparison: a new lot's first readings against the previous lot's, through a running
agent (context change → samples → lot_summary points and a lot_change alert)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from spoolfile import committed_lines

from agent.config import config_from_dict
from agent.drift.compare import compare, summary_fields
from agent.reading import Channel
from agent.runtime.agent import Agent

N = 200
T0 = 1_772_409_600 * 10**9  # 2026-03-02T00:00Z
STEP = 60 * 10**9
CHANNEL = "sewing.m05.tension"


def _agent(state_dir: Path, channels: list[dict[str, Any]] | None = None) -> tuple[Agent, Channel]:
    cfg = config_from_dict(
        {
            "site": "atelier",
            "gateway": "gw1",
            "state_dir": str(state_dir),
            "alerts": {"console": False},
            "lots": {"readings": N},
            "channels": channels or [],
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

    def __init__(
        self, state_dir: Path, t: int = T0, channels: list[dict[str, Any]] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.agent, self.channel = _agent(state_dir, channels)
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
        self.set(scope, name, lot=lot)

    def set(self, scope: str, name: str, **tags: str) -> None:
        self.agent.context.set(scope, name, dict(tags))
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


def _summaries(
    state_dir: Path, measurement: str = "lot_summary", key: str = "lot"
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in _spooled(state_dir, measurement):
        tags, fields, _ = line.split(" ")
        tag = dict(kv.split("=", 1) for kv in tags.split(",")[1:])
        assert tag["channel"] == CHANNEL
        assert tag["zone"] == "sewing"
        assert tag["line"] == "L2"
        assert tag["site"] == "atelier"
        assert tag["gateway"] == "gw1"
        if measurement == "context_summary":
            if tag["key"] != key:
                continue
            name = tag["value"]
        else:
            name = tag["lot"]
        out[name] = {k: float(v.rstrip("i")) for k, v in
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
        f"Line L2, after lot LOT-2411-A → LOT-2411-B: sewing M05 thread tension averages "
        f"{first_b.mean():.1f} cN over the first {N} readings of lot LOT-2411-B, {diff:.1f} cN "
        f"above lot LOT-2411-A ({first_a.mean():.1f} cN). Welch t = {welch.statistic:.1f}, "
        f"p < 0.001; KS D = {ks.statistic:.2f}. This affects seam strength and stitch appearance."
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


async def test_an_operator_change_compares_tension_per_operator(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    a = np.round(rng.normal(123.4, 2.0, N), 1)
    b = np.round(rng.normal(128.6, 2.0, N), 1)
    channels = [{"name": CHANNEL, "compare_on": ["lot", "operator", "shift"]}]
    async with Floor(tmp_path, channels=channels) as floor:
        floor.set("line", "L2", lot="LOT-7", operator="op12")
        await floor.feed(a)
        floor.set("line", "L2", operator="op17")  # the lot stays: only the operator changed
        await floor.feed(b)
        events = floor.agent.events
        incidents = list(floor.agent.incidents.manager.open.values())
    # The tension defaults' change-point detector sees the step too (test_changepoint.py);
    # here the comparison is what counts.
    (event,) = [e for e in events if e.detector != "changepoint"]
    welch = stats.ttest_ind(b, a, equal_var=False)
    ks = stats.ks_2samp(b, a)
    assert (event.detector, event.transition) == ("operator_compare", "context_change")
    assert math.isclose(event.value, float(b.mean()), rel_tol=1e-12)
    assert math.isclose(event.baseline, float(a.mean()), rel_tol=1e-12)
    assert event.baseline_note == f"operator op12, first {N} readings"
    assert event.message == (
        f"Line L2, after operator op12 → op17: sewing M05 thread tension averages "
        f"{b.mean():.1f} cN over the first {N} readings with operator op17, "
        f"{b.mean() - a.mean():.1f} cN above operator op12 ({a.mean():.1f} cN). Welch t = "
        f"{welch.statistic:.1f}, p < 0.001; KS D = {ks.statistic:.2f}. This affects seam "
        "strength and stitch appearance."
    )
    # A finding, like a lot change: its incident stays open until someone acknowledges it.
    (incident,) = incidents
    assert incident.one_shot
    # Per operator, per lot: context_summary points; lot_summary only for lots.
    per_operator = _summaries(tmp_path, "context_summary", "operator")
    assert set(per_operator) == {"op12", "op17"}
    _check_summary(per_operator["op12"], a)
    _check_summary(per_operator["op17"], b)
    per_lot = _summaries(tmp_path, "context_summary", "lot")
    assert set(per_lot) == {"LOT-7"}  # its sample filled with op12's readings
    _check_summary(per_lot["LOT-7"], a)
    assert set(_summaries(tmp_path)) == {"LOT-7"}
    assert _summaries(tmp_path, "context_summary", "shift") == {}  # no shift was set


async def test_without_compare_on_an_operator_change_compares_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    async with Floor(tmp_path) as floor:
        floor.set("line", "L2", operator="op12")
        await floor.feed(np.round(rng.normal(123.4, 2.0, N), 1))
        floor.set("line", "L2", operator="op17")
        await floor.feed(np.round(rng.normal(131.4, 2.0, N), 1))
        compared = [e for e in floor.agent.events if e.detector != "changepoint"]
        assert compared == []  # lots.compare_on is [lot] by default
    assert _spooled(tmp_path, "context_summary") == []


async def test_the_first_versions_lots_json_is_continued(tmp_path: Path) -> None:
    """lots.json written before compare_on (per channel, lots only) is read as the lot key's."""
    rng = np.random.default_rng(17)
    a = np.round(rng.normal(123.4, 2.0, N), 1)
    b = np.round(rng.normal(131.2, 2.0, N), 1)
    old = {
        CHANNEL: {
            "current": "LOT-B",
            "previous": "LOT-A",
            "samples": {
                "LOT-A": {"values": a.tolist(), "first_ns": T0, "last_ns": T0 + N * STEP,
                          "done": True, "summarised": True, "compared": True},
                "LOT-B": {"values": b[:50].tolist(), "first_ns": T0 + N * STEP,
                          "last_ns": T0 + (N + 49) * STEP, "done": False, "summarised": False,
                          "compared": False},
            },
        }
    }  # fmt: skip
    (tmp_path / "lots.json").write_text(json.dumps(old))
    async with Floor(tmp_path, T0 + (N + 50) * STEP) as floor:
        floor.lot("line", "L2", "LOT-B")
        await floor.feed(b[50:])
        events = [e for e in floor.agent.events if e.detector == "lot_compare"]
    (event,) = events
    assert math.isclose(event.value, float(b.mean()), rel_tol=1e-12)
    assert math.isclose(event.baseline, float(a.mean()), rel_tol=1e-12)
    saved = json.loads((tmp_path / "lots.json").read_text())
    assert saved["version"] == 2
    assert set(saved["channels"][CHANNEL]) == {"lot"}


def test_the_statistics_are_scipys_and_numpys_own() -> None:
    """compare() and summary_fields() skip scipy.stats' and np.percentile's argument handling
    (a lot change runs them for every channel on the event loop): same numbers, any size."""
    rng = np.random.default_rng(5)
    for n_new, n_prev in [(2, 2), (3, 30), (30, 30), (31, 200), (200, 57), (500, 501)]:
        for scale in (1e-6, 1.0, 1e6):
            new = rng.normal(10.0, 2.0, n_new) * scale
            prev = rng.normal(10.5, 3.0, n_prev) * scale
            r = compare(new.tolist(), prev.tolist(), alpha=0.01)
            welch = stats.ttest_ind(new, prev, equal_var=False)
            ci = welch.confidence_interval(0.99)
            ks = stats.kstwobign.sf(r.ks_d * math.sqrt(n_new * n_prev / (n_new + n_prev)))
            assert math.isclose(r.p, welch.pvalue, rel_tol=1e-9, abs_tol=1e-300)
            assert math.isclose(r.t, welch.statistic, rel_tol=1e-9)
            assert math.isclose(r.low, ci.low, rel_tol=1e-9)
            assert math.isclose(r.high, ci.high, rel_tol=1e-9)
            assert math.isclose(r.ks_d, stats.ks_2samp(new, prev).statistic, rel_tol=1e-12)
            assert math.isclose(r.ks_p, ks, rel_tol=1e-12)
            s = summary_fields(new.tolist())
            assert (s["p5"], s["p95"]) == tuple(float(p) for p in np.percentile(new, [5.0, 95.0]))
