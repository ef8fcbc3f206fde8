"""Change points: every change its own event (old and new level, onset), re-armed on the new
segment; quiet on noise, wandering noise and outliers; defaults sized to any rate; live equals
replay for any split of the readings into batches, the moment a baseline locks included."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from engines import watch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.drift.alerts import AlertEvent
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DriftEngine
from agent.reading import Channel

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
CHANGEPOINT = [{"type": "changepoint"}]


def _channel(kind: str = "generic", name: str = "line.value") -> Channel:
    return Channel(name=name, measurement="m", field="v", unit="cN", kind=kind,
                   label="Sewing machine M05 thread tension", affects="seam strength")  # fmt: skip


def _feed(
    engine: DriftEngine, channel: Channel, x: np.ndarray, step: float = 60.0, batch: int = 500,
    t0: float = T0,
) -> list[AlertEvent]:  # fmt: skip
    ns = ((t0 + np.arange(len(x)) * step) * 1e9).astype(np.int64).tolist()
    events: list[AlertEvent] = []
    for i in range(0, len(x), batch):
        events += engine.detect(channel, ns[i : i + batch], x[i : i + batch].tolist()).events
    return events


def _index(e: AlertEvent, step: float = 60.0, *, at: str = "since") -> int:
    ns = e.since_ns if at == "since" else e.ts_ns
    return round((ns / 1e9 - T0) / step)


def test_each_change_is_its_own_event_with_the_old_and_the_new_level() -> None:
    """Before: a CUSUM signalled once and never reset; the second and third change were
    missed while the first alert was still on."""
    rng = np.random.default_rng(3)
    x = 120.0 + 2.0 * rng.standard_normal(6000)
    x[1500:] += 4.0  # 2 σ up
    x[3000:] -= 8.0  # 4 σ down, below the start
    x[4500:] += 2.0  # 1 σ up
    channel = _channel()
    events = _feed(watch(channel, CHANGEPOINT), channel, x)
    assert [e.transition for e in events] == ["changed"] * 3
    # (where, old level, new level, how near the onset and the new level are placed)
    changes = [(1500, 120, 124, 5, 1.0), (3000, 124, 116, 5, 1.0), (4500, 116, 118, 15, 1.5)]
    for e, (cp, old, new, near, close) in zip(events, changes, strict=True):
        assert abs(_index(e) - cp) <= near, (e.message, cp)  # the onset it places
        assert cp <= _index(e, at="ts") <= cp + 60  # told within an hour at one a minute
        assert e.baseline == pytest.approx(old, abs=0.5)
        assert e.value == pytest.approx(new, abs=close)
        assert e.delta == pytest.approx(new - old, abs=close)
    assert events[1].message.startswith(
        "WARN: Sewing machine M05 thread tension has changed: down from 124 cN to about 116 cN"
    )
    assert "This affects seam strength." in events[1].message
    assert events[2].baseline_note.startswith("previous level since 2026-01-03")


def test_a_change_of_spread_is_its_own_kind_of_change() -> None:
    rng = np.random.default_rng(4)
    x = 2.0 * rng.standard_normal(4000)
    x[2000:] *= 2.0
    channel = _channel()
    (event,) = _feed(watch(channel, CHANGEPOINT), channel, x)
    assert "more erratic" in event.message
    assert event.baseline_note.startswith("previous spread")
    assert event.value / event.baseline == pytest.approx(2.0, rel=0.3)
    assert 1990 <= _index(event) <= 2030


@pytest.mark.parametrize("noise", ["iid", "AR(1) 0.8", "outliers", "flat"])
def test_no_change_in_noise_wandering_noise_outliers_or_a_flat_line(noise: str) -> None:
    rng = np.random.default_rng(5)
    n = 100_000
    if noise == "AR(1) 0.8":
        from scipy.signal import lfilter

        x = lfilter([1.0], [1.0, -0.8], rng.standard_normal(n) * math.sqrt(1 - 0.64))
    elif noise == "flat":
        x = np.full(n, 42.0)
    else:
        x = rng.standard_normal(n)
        if noise == "outliers":
            hits = rng.random(n) < 1e-3
            x[hits] += rng.choice([-1.0, 1.0], hits.sum()) * rng.uniform(6, 10, hits.sum())
    channel = _channel()
    assert _feed(watch(channel, CHANGEPOINT), channel, x, batch=4096) == []


@pytest.mark.parametrize("step", [1.0, 60.0, 3600.0])
def test_the_generic_kind_works_at_any_rate(step: float) -> None:
    """Before: an unknown column was judged as climate: a 3.5-day baseline and a 24 h window
    (nothing in a day of readings) and a 15-minute stale check that fired at every reading
    of an hourly sensor."""
    rng = np.random.default_rng(6)
    x = 10.0 + rng.standard_normal(2000)
    x[1200:] += 2.0
    channel = _channel()
    engine = watch(channel)
    events = _feed(engine, channel, x, step=step)
    drift = engine.drift(channel)
    assert drift is not None
    assert drift.interval == step  # measured from the readings
    assert drift.stale is not None
    assert drift.stale.max_gap >= 10 * step
    assert [(e.detector, e.transition) for e in events] == [("changepoint", "changed")]
    assert abs(_index(events[0], step) - 1200) <= 5


def test_kind_defaults_are_sized_to_the_interval_or_the_configured_one() -> None:
    from agent.config.models import ChannelConfig

    hourly = _channel("climate", "room.humidity")
    engine = DriftEngine(BaselineStore(None))
    cfg = ChannelConfig.model_validate({"name": "room.humidity", "interval": "1h"})
    drift = engine.attach(hourly, cfg)
    assert not drift.measuring  # the configured interval sizes it at once
    spans = {d.name: getattr(d, "window", None) for d in drift.detectors}
    stuck = spans["stuck"]
    assert stuck is not None
    assert stuck.span >= 30 * 3600  # 6 h of one reading an hour would be 6 readings
    assert drift.stale is not None
    assert drift.stale.max_gap == 10 * 3600
    fast = _channel("climate", "room2.humidity")
    drift = engine.attach(fast)
    assert drift.measuring
    assert drift.detectors == []
    ns = [(T0 + i) * 10**9 for i in range(12)]
    engine.detect(fast, ns, [50.0] * 12)
    assert not drift.measuring
    assert drift.interval == 1.0
    assert drift.stale is not None
    assert drift.stale.max_gap == 15 * 60  # the kind's own where it holds enough readings


def _stream(kind: str, seed: int) -> tuple[np.ndarray, float]:
    """A channel's readings: a learned baseline locks inside, a change follows, with a few
    out-of-range readings (NaN) and a daily cycle for climate."""
    rng = np.random.default_rng(seed)
    if kind == "climate":
        step, n = 600.0, 1400  # 3 days of learning at one reading every 10 minutes
        day = np.arange(n) * step / 86400
        x = 50 + 4 * np.sin(2 * math.pi * day) + 0.5 * rng.standard_normal(n)
        x[900:] += 1.5
    elif kind == "tension":
        step, n = 60.0, 3600  # the baseline locks after 2 days (2,880 readings)
        x = 120 + 2 * rng.standard_normal(n)
        x[2875:] += 6.0  # just before the lock: CUSUM and EWMA judge from the lock on
    else:
        step, n = 1.0, 3000
        x = rng.standard_normal(n)
        x[[700, 1800]] += 8.0
        x[1000:] += 1.5
    x[rng.choice(n, 5, replace=False)] = np.nan
    return x, step


Row = tuple[object, ...]


def _events(kind: str, x: np.ndarray, step: float, sizes: Sequence[int]) -> list[Row]:
    channel = _channel(kind, f"prop.{kind}")
    engine = watch(channel)
    ns = ((T0 + np.arange(len(x)) * step) * 1e9).astype(np.int64).tolist()
    values = x.tolist()
    out: list[Row] = []
    i = k = 0
    while i < len(values):
        size = sizes[k % len(sizes)]
        k += 1
        for e in engine.detect(channel, ns[i : i + size], values[i : i + size]).events:
            out.append((e.ts_ns, e.detector, e.transition, e.level, round(e.value, 6),
                        round(e.delta, 6), e.since_ns, e.message, e.baseline_note))  # fmt: skip
        i += size
    return out


_REFERENCE: dict[str, tuple[np.ndarray, float, list[Row]]] = {}


def _reference(kind: str) -> tuple[np.ndarray, float, list[Row]]:
    if kind not in _REFERENCE:
        x, step = _stream(kind, 11)
        _REFERENCE[kind] = (x, step, _events(kind, x, step, [1]))
    return _REFERENCE[kind]


@pytest.mark.parametrize("kind", ["tension", "climate", "generic"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=12))
def test_live_equals_replay_for_any_batch_split(kind: str, sizes: list[int]) -> None:
    """One reading at a time (a live sensor) and any split into batches (a replay, a burst)
    give the same events, to the word. Before: in 1,024-reading batches CUSUM and EWMA scored
    the readings before the baseline locked against the rolling one, and an event's baseline
    words came from after the batch."""
    x, step, reference = _reference(kind)
    assert reference, "the stream must make events to compare"
    assert _events(kind, x, step, sizes) == reference


@pytest.mark.parametrize("kind", ["tension", "climate"])
def test_live_equals_replay_with_a_batch_boundary_at_the_lock(kind: str) -> None:
    x, step, reference = _reference(kind)
    assert reference, "the stream must make events to compare"
    lock = 2880 if kind == "tension" else 432  # readings in the learning span (2 d / 3 d)
    for cut in (lock - 1, lock, lock + 1):
        assert _events(kind, x, step, [cut, len(x)]) == reference


def test_a_spec_band_judges_from_the_first_reading_while_the_interval_is_measured() -> None:
    """Before: kind defaults wait for 12 readings to measure the interval, and the channel's
    spec band waited with them (12 hours late at one reading an hour); the status page showed
    no band meanwhile. The band needs no sizing: it judges every reading at once, and once
    the others are built it does not judge the measuring readings twice."""
    from agent.config.models import ChannelConfig

    channel = _channel("climate", "room.humidity")
    engine = DriftEngine(BaselineStore(None))
    cfg = ChannelConfig.model_validate(
        {"name": "room.humidity", "limits": {"low_warn": 40, "high_warn": 60, "high_alarm": 70}}
    )
    drift = engine.attach(channel, cfg)
    assert drift.measuring
    assert [d.name for d in drift.detectors] == ["limit"]
    hour = 3600 * 10**9
    got = engine.detect(channel, [T0 * 10**9], [75.0]).events
    assert [(e.detector, e.transition, e.level.name) for e in got] == [("limit", "raised", "ALARM")]
    events = list(got)
    for i in range(1, 13):
        events += engine.detect(channel, [T0 * 10**9 + i * hour], [50.0]).events
    assert not drift.measuring
    assert sorted(d.name for d in drift.detectors).count("limit") == 1
    limit = [e for e in events if e.detector == "limit"]
    assert [e.transition for e in limit] == ["raised", "cleared"]  # each reading judged once
    assert drift.stale is not None
    assert drift.stale.max_gap == 10 * 3600  # the others sized to one reading an hour
