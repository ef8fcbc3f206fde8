"""Learned baselines: robust to outliers, to a change inside the learning span (learned from the
stable part, and the description says so) and to a trend (φ measured without it, capped); a
climate channel's daily (weekly) profile learned and taken out, so a shift of its noise's size
is seen within hours and the daily cycle alone never alerts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engines import watch

from agent.config.detectors import BaselineSpecConfig
from agent.drift.alerts import AlertEvent
from agent.drift.baselines import PHI_CAP, Baseline, BaselineStore, ChannelBaseline
from agent.drift.engine import DriftEngine
from agent.reading import Channel

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a Thursday
D = 86400


def _learned(x: np.ndarray, step: float = 60.0, **spec: object) -> Baseline:
    learn = (len(x) - 1) * step
    base = ChannelBaseline(
        "c", BaselineSpecConfig.model_validate({"learn": learn, "window": learn, **spec}),
        BaselineStore(None),
    )  # fmt: skip
    t = T0 + np.arange(len(x)) * step
    for i in range(0, len(x), 700):
        base.update_many(t[i : i + 700], x[i : i + 700])
    assert base.locked is not None
    return base.locked


def test_outliers_in_the_learning_span_do_not_move_the_baseline() -> None:
    rng = np.random.default_rng(1)
    x = 120 + 2 * rng.standard_normal(2880)
    x[::97] += 40.0  # a knocked sensor now and then: 30 readings 20 σ high
    learned = _learned(x)
    assert learned.mean == pytest.approx(120.0, abs=0.2)  # the plain mean is 120.4
    assert learned.std == pytest.approx(2.0, rel=0.1)  # the plain std is 4.3


def test_a_change_inside_the_learning_span_is_left_out_and_said() -> None:
    """Before: a change inside the learning span was learned as normal (a mean between the two
    levels, a σ that takes in the step)."""
    rng = np.random.default_rng(2)
    x = 120 + 2 * rng.standard_normal(2880)
    x[2000:] += 6.0  # 3 σ, two thirds of the way through two days
    learned = _learned(x)
    assert learned.mean == pytest.approx(120.0, abs=0.3)
    assert learned.std == pytest.approx(2.0, rel=0.1)
    assert "stable part 2026-01-01 00:00 to 2026-01-02" in learned.describe()
    assert "a change at 2026-01-02" in learned.describe()
    assert "left out" in learned.describe()
    steady = _learned(120 + 2 * rng.standard_normal(2880))
    assert steady.note == ""  # nothing to leave out: nothing said


def test_autocorrelation_is_measured_without_the_trend_and_capped() -> None:
    """Before: a trend in the learning span read as autocorrelation (φ ≈ 0.9) and widened the
    charts' σ 4.4×, which made the channel deaf."""
    rng = np.random.default_rng(3)
    n = 2880
    trend = np.linspace(0.0, 12.0, n)  # 6 σ over the span
    learned = _learned(120 + trend + 2 * rng.standard_normal(n))
    assert learned.phi < 0.1
    assert learned.inflation < 1.1
    from scipy.signal import lfilter

    ar = lfilter([1.0], [1.0, -0.99], rng.standard_normal(n))
    wandering = _learned(120 + ar)
    assert wandering.phi > PHI_CAP
    assert wandering.inflation == pytest.approx(math.sqrt((1 + PHI_CAP) / (1 - PHI_CAP)))


def _room(days: float, step: float, seed: int, *, shift_at: float | None = None,
          shift: float = 1.0, weekend: float = 0.0, wander: bool = True) -> np.ndarray:  # fmt: skip
    """A room's humidity: 4 %RH daily cycle, slowly wandering noise (AR(1), 0.8 %RH) and
    sensor noise (0.3 %RH), single outliers (``wander=False``: independent noise of 1 %RH);
    a shift of ``shift`` %RH from ``shift_at`` days."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(days * D / step)
    t = np.arange(n) * step
    phi = 0.95 ** (step / 60.0)
    noise = (
        lfilter([1.0], [1.0, -phi], rng.standard_normal(n) * 0.8 * math.sqrt(1 - phi**2))
        + 0.3 * rng.standard_normal(n)
        if wander
        else rng.standard_normal(n)
    )
    x = 50 + 4 * np.sin(2 * math.pi * t / D) + noise
    x[rng.random(n) < 1e-3] += 8.0
    if weekend:
        weekday = ((T0 + t) // D + 3) % 7  # 1970-01-01 was a Thursday: 5, 6 = Sat, Sun
        x[weekday >= 5] -= weekend
    if shift_at is not None:
        x[int(shift_at * D / step) :] += shift
    return x


def _climate_events(x: np.ndarray, step: float, baseline: dict[str, object] | None = None,
                    store: BaselineStore | None = None) -> list[AlertEvent]:  # fmt: skip
    channel = Channel(name="edge_paint.humidity", measurement="climate", field="humidity_rh",
                      unit="%RH", kind="climate", label="Edge paint room humidity")  # fmt: skip
    engine: DriftEngine = watch(channel, store=store, baseline=baseline)
    ns = ((T0 + np.arange(len(x)) * step) * 1e9).astype(np.int64).tolist()
    events: list[AlertEvent] = []
    for i in range(0, len(x), 1000):
        events += engine.detect(channel, ns[i : i + 1000], x[i : i + 1000].tolist()).events
    return [e for e in events if e.detector not in ("stale", "stuck", "invalid_rate")]


@pytest.mark.parametrize("seed", [4, 8, 9])
def test_climate_sees_a_one_sigma_humidity_shift_within_hours(seed: int) -> None:
    """Noise of 1 %RH around a 4 %RH daily cycle, then 1 %RH more. Before: the 24 h mean
    against a 7-day baseline, in σ of a baseline that took in the daily swing (warn 0.5 σ ≈
    1.5 %RH): the shift was never seen."""
    x = _room(days=10, step=60.0, seed=seed, shift_at=6.25, shift=1.0, wander=False)
    events = _climate_events(x, 60.0)
    assert events, "a 1 %RH shift of a room with a 4 %RH daily cycle went unseen"
    first = events[0]
    hours = (first.ts_ns / 1e9 - T0 - 6.25 * D) / 3600
    assert 0 <= hours <= 4, (hours, first.message)
    assert first.baseline_note.startswith("previous level") or "daily cycle taken out" in (
        first.baseline_note
    )


@pytest.mark.parametrize(("seed", "wander"), [(5, True), (6, True), (7, False)])
def test_climate_is_quiet_on_a_month_of_daily_cycles(seed: int, wander: bool) -> None:
    assert _climate_events(_room(days=30, step=60.0, seed=seed, wander=wander), 60.0) == []


def test_a_weekly_profile_takes_the_weekend_out() -> None:
    """Two degrees colder at weekends: a daily profile alone calls each weekend a change; the
    weekly one (learned over two weeks) knows them."""
    x = _room(days=35, step=600.0, seed=7, weekend=3.0)
    daily = _climate_events(x, 600.0)
    assert daily, "a daily profile alone should see the weekends"
    weekly = _climate_events(x, 600.0, {"learn": "14d", "window": "14d", "season": "weekly"})
    assert weekly == []


def test_a_climate_baseline_learned_before_profiles_is_learned_anew() -> None:
    """baselines.json from a version before daily profiles holds a climate channel's learned
    baseline without one: its σ takes in the daily swing and its level one time of day. Before:
    it was kept and the level detectors judged the raw cycle against it (bench/hot_path.py's
    rooms, seeded so: a `changed` on the first morning's heating, baseline_shift flapping).
    Now the channel learns anew, with its profile (a captured baseline would stay: an engineer
    chose it)."""
    x = _room(days=20, step=60.0, seed=5)
    store = BaselineStore(None)
    legacy = Baseline(float(x[:4320].mean()), float(x[:4320].std()), 4320, 0, 0, "learned")
    store.put("edge_paint.humidity", legacy, write=False)
    assert _climate_events(x, 60.0, store=store) == []
    relearned = store.get("edge_paint.humidity")
    assert relearned is not None
    assert relearned.profile is not None
    assert "daily cycle taken out" in relearned.describe()
