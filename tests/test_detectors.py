"""Each detector on deterministic streams: fires within its delay bound at the right place, and
stays silent on stationary seeded noise and on a daily cycle. Times are reading times."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engines import watch

from agent.drift.alerts import CLEARED, FLAPPING, RAISED, SETTLED, AlertState
from agent.reading import Channel

T0 = 1_760_000_000
STEP = 60  # seconds between readings


def _channel(kind: str = "tension") -> Channel:
    return Channel(
        name=f"test.{kind}",
        measurement=kind,
        field="v",
        unit="cN",
        kind=kind,
        label="Sewing machine M05 thread tension",
        affects="seam strength",
        tags={"zone": "sewing"},
    )


def _run(
    specs: list[dict], values: np.ndarray, baseline: dict | None = None, batch: int = 500
) -> list:  # type: ignore[type-arg]
    channel = _channel()
    engine = watch(channel, specs, baseline=baseline or {"value": 0.0, "std": 1.0})
    ns = (T0 + np.arange(len(values)) * STEP) * 10**9
    events = []
    for i in range(0, len(values), batch):
        events += engine.detect(
            channel, ns[i : i + batch].tolist(), values[i : i + batch].tolist()
        ).events
    return events


def _first_raised(events: list, detector: str) -> int | None:  # type: ignore[type-arg]
    for e in events:
        if e.detector == detector and e.transition == RAISED:
            return int((e.ts_ns // 10**9 - T0) // STEP)
    return None


NOISE = np.random.default_rng(11).standard_normal(100_000)
SHIFT_AT = 5000


@pytest.mark.parametrize(
    ("spec", "bound"),
    [
        ({"type": "cusum", "k": 0.5, "warn": 12.0, "alarm": 20.0}, 60),
        ({"type": "ewma", "lam": 0.05, "warn": 4.5, "alarm": 6.0}, 120),
        ({"type": "baseline_shift", "window": 60 * STEP, "warn": 0.7, "units": "sigma"}, 60),
    ],
)
def test_a_one_sigma_step_is_caught_quickly_and_noise_never(spec: dict, bound: int) -> None:  # type: ignore[type-arg]
    quiet = _run([spec], NOISE)
    assert [e for e in quiet if e.transition == RAISED] == [], (
        "false alarm on 100,000 stationary readings"
    )
    stepped = NOISE[:20_000].copy()
    stepped[SHIFT_AT:] += 1.0
    events = _run([spec], stepped)
    first = _first_raised(events, spec["type"])
    assert first is not None
    assert SHIFT_AT <= first <= SHIFT_AT + bound, first
    assert "above" in events[0].message or "up" in events[0].message


def test_variance_change_catches_a_doubled_spread_not_a_step() -> None:
    spec = {
        "type": "variance_change",
        "window": 120 * STEP,
        "warn": 1.6,
        "alarm": 2.2,
        "hold": 120 * STEP,
    }
    spread = NOISE[:20_000].copy()
    spread[SHIFT_AT:] *= 2.0
    first = _first_raised(_run([spec], spread), "variance_change")
    assert first is not None
    assert SHIFT_AT + 60 <= first <= SHIFT_AT + 400
    step = NOISE[:20_000].copy()
    step[SHIFT_AT:] += 4.0  # a level shift inflates a straddling window only for a while
    assert _first_raised(_run([spec], step), "variance_change") is None
    assert _first_raised(_run([spec], NOISE), "variance_change") is None


def test_stuck_sensor_is_reported_and_cleared() -> None:
    values = NOISE[:3000].copy()
    values[1000:1500] = 42.0
    events = _run([{"type": "stuck", "window": 60 * STEP}], values)
    kinds = [(e.transition, int((e.ts_ns // 10**9 - T0) // STEP)) for e in events]
    assert kinds[0][0] == RAISED
    assert 1000 + 48 <= kinds[0][1] <= 1000 + 62  # 80% of the window must be covered
    assert kinds[1] == (CLEARED, 1500)
    assert "has not changed from 42.0 cN" in events[0].message


def test_stale_raises_at_the_gap_and_clears_on_the_next_reading() -> None:
    channel = _channel()
    engine = watch(channel, [{"type": "stale", "max_gap": 600}])
    ns = [(T0 + i * 60) * 10**9 for i in range(10)] + [(T0 + 9 * 60 + 3600) * 10**9]
    replayed = engine.detect(channel, ns, [1.0] * len(ns)).events
    assert [e.transition for e in replayed] == [RAISED, CLEARED]
    assert replayed[0].ts_ns == ns[9] + 600 * 10**9
    assert replayed[1].ts_ns == ns[10]
    # Live: a timer notices the silence before the next reading; same events, same times.
    live = _channel()
    engine = watch(live, [{"type": "stale", "max_gap": 600}])
    events = engine.detect(live, ns[:10], [1.0] * 10).events
    assert engine.check_stale(ns[9] / 1e9 + 300) == []
    (raised,) = engine.check_stale(ns[9] / 1e9 + 900)
    assert engine.check_stale(ns[9] / 1e9 + 1000) == []  # once
    events = [raised, *engine.detect(live, ns[10:], [1.0]).events]
    assert [(e.transition, e.ts_ns) for e in events] == [(e.transition, e.ts_ns) for e in replayed]


def test_invalid_rate_counts_out_of_range_readings() -> None:
    values = np.ones(2000)
    values[1000:1100:2] = np.nan  # half the readings out of range for 100 readings
    spec = {
        "type": "invalid_rate",
        "window": 60 * STEP,
        "warn": 0.2,
        "alarm": 0.4,
        "min_samples": 20,
    }
    events = _run([spec], values)
    assert _first_raised(events, "invalid_rate") is not None
    assert "out of the sensor's physical range" in events[0].message
    assert _first_raised(_run([spec], np.ones(2000)), "invalid_rate") is None


def test_flapping_is_announced_once_then_held_back_then_settles() -> None:
    state = AlertState(warn=1.0, flap_count=4, flap_window=3600.0)
    kinds = []
    for i in range(40):  # the score toggles every minute for 40 minutes
        kind = state.observe(i * 60.0, 2.0 if i % 2 == 0 else 0.0)
        if kind:
            kinds.append(kind)
    assert kinds == [RAISED, CLEARED, RAISED, FLAPPING]
    later = [state.observe(40 * 60.0 + 3600.0 + i * 60, 0.0) for i in range(3)]
    assert later[0] == SETTLED
    assert later[1:] == [None, None]


@pytest.mark.parametrize("batches", [[1], [7, 300, 1, 2000, 16, 17], [4096]])
def test_tension_defaults_give_the_same_events_however_batched(batches: list[int]) -> None:
    rng = np.random.default_rng(5)
    n = 5 * 1440
    values = 120.0 + 2.0 * rng.standard_normal(n)
    values[3 * 1440 :] += 7.0  # an operator change on day 3
    values[4 * 1440 : 4 * 1440 + 200] = np.nan  # a burst of out-of-range readings
    ns = ((T0 + np.arange(n) * 60) * 10**9).tolist()

    def run(sizes: list[int]) -> list[tuple[object, ...]]:
        channel = _channel()
        engine = watch(channel)
        out = []
        i = k = 0
        while i < n:
            size = sizes[k % len(sizes)]
            k += 1
            for e in engine.detect(channel, ns[i : i + size], values[i : i + size].tolist()).events:
                out.append(
                    (e.ts_ns, e.detector, e.transition, e.level, round(e.value, 6), e.message)
                )
            i += size
        return out

    reference = run([1])
    detectors = {e[1] for e in reference}
    assert {"cusum", "ewma", "baseline_shift", "invalid_rate"} <= detectors, detectors
    assert run(batches) == reference


def test_climate_defaults_stay_quiet_on_a_month_of_daily_cycles_and_outliers() -> None:
    rng = np.random.default_rng(9)
    n = 30 * 1440
    day = np.arange(n) / 1440
    ar = np.zeros(n)
    e = rng.normal(0.0, 0.25, n)
    for i in range(1, n):
        ar[i] = 0.95 * ar[i - 1] + e[i]
    values = 50 + 4 * np.sin(2 * math.pi * day) + ar + rng.normal(0, 0.3, n)
    values[rng.choice(n, 40, replace=False)] += rng.normal(0, 8, 40)  # single outliers
    channel = _channel("climate")
    engine = watch(channel)
    ns = ((T0 + np.arange(n) * 60) * 10**9).tolist()
    events = []
    for i in range(0, n, 1000):
        events += engine.detect(channel, ns[i : i + 1000], values[i : i + 1000].tolist()).events
    assert events == []


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "cusum", "k": 0.5, "warn": 12.0, "alarm": 20.0, "hold": 600},
        {"type": "ewma", "lam": 0.05, "warn": 4.5, "alarm": 6.0, "hold": 1200},
    ],
)
def test_a_single_outlier_does_not_trip_cusum_or_ewma(spec: dict) -> None:  # type: ignore[type-arg]
    values = NOISE[:5000].copy()
    values[2500] += 30.0  # one wild reading: 30 sigma
    assert _first_raised(_run([spec], values), spec["type"]) is None


def test_cusum_and_ewma_allow_for_autocorrelated_noise_but_still_catch_a_shift() -> None:
    """Slowly wandering sensor noise (AR(1), φ 0.5): the learned baseline measures φ and widens
    the charts' σ by √((1+φ)/(1−φ)), so noise stays quiet and a 1σ-of-the-noise shift is seen."""
    rng = np.random.default_rng(21)
    n = 60_000
    e = rng.standard_normal(n)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.5 * ar[i - 1] + e[i]
    specs = [
        {"type": "cusum", "k": 0.5, "warn": 14.0, "alarm": 22.0, "hysteresis": 2.0},
        {"type": "ewma", "lam": 0.05, "warn": 5.5, "alarm": 7.5, "hold": 60},
    ]
    learn = {"window": 10_000 * STEP, "learn": 10_000 * STEP}
    quiet = _run(specs, ar, baseline=learn)
    assert [e for e in quiet if e.transition == RAISED] == []
    shifted = ar.copy()
    shifted[30_000:] += 1.2  # one standard deviation of the AR(1) readings
    first = _first_raised(_run(specs, shifted, baseline=learn), "cusum")
    assert first is not None
    assert 30_000 <= first <= 30_000 + 150


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "cusum", "k": 0.5, "warn": 5.0},
        {"type": "ewma", "lam": 0.5, "warn": 2.0},
    ],
)
@pytest.mark.parametrize("batch", [1, 500])
def test_min_samples_of_cusum_and_ewma_delays_their_first_judgement(
    spec: dict[str, object], batch: int
) -> None:
    """Before: min_samples was validated for cusum and ewma, and then ignored."""
    values = np.full(200, 3.0)  # 3 sigma above the baseline from the first reading
    early = _first_raised(_run([{**spec, "min_samples": 2}], values, batch=batch), spec["type"])
    assert early is not None
    assert early < 5
    late = _first_raised(_run([{**spec, "min_samples": 40}], values, batch=batch), spec["type"])
    assert late == 39  # the 40th reading is the first judged
    default = _first_raised(_run([spec], values, batch=batch), spec["type"])
    assert default == 9  # min_samples 10 by default
