"""The sliding window: exact statistics, eviction by time and count, the rounding guard."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from agent.drift.ring import Window


def _reference(times: list[float], values: list[float]) -> tuple[float, float, float]:
    t = np.array(times)
    v = np.array(values)
    slope = float(np.polyfit(t - t.mean(), v, 1)[0]) if len(v) > 1 else math.nan
    return float(v.mean()), float(v.std(ddof=1)), slope


@pytest.mark.parametrize("size", [2, 100, 5000])
def test_count_window_matches_numpy_after_many_wraps(size: int) -> None:
    rng = random.Random(size)
    w = Window(max_samples=size, trend=True)
    times: list[float] = []
    values: list[float] = []
    for i in range(size * 7 + 3):
        t = 1.7e9 + i * 60.0
        x = 50.0 + 0.001 * i + rng.gauss(0.0, 1.0)
        w.add(t, x)
        times.append(t)
        values.append(x)
    mean, std, slope = _reference(times[-size:], values[-size:])
    assert w.n == size
    assert w.mean() == pytest.approx(mean, rel=1e-12, abs=1e-9)
    assert w.std() == pytest.approx(std, rel=1e-9)
    assert w.slope() == pytest.approx(slope, rel=1e-7)


def test_time_window_evicts_by_reading_time_and_grows() -> None:
    w = Window(span=3600.0, max_samples=100_000)
    for i in range(10_000):
        w.add(1.7e9 + i * 10.0, float(i))
    # the last hour holds 361 samples (both ends inclusive at 10 s spacing)
    assert w.n == 361
    assert w.mean() == pytest.approx(np.mean(np.arange(10_000 - 361, 10_000)))
    assert w.covered == pytest.approx(3600.0)
    assert not w.truncated


def test_time_window_capped_by_max_samples_says_so() -> None:
    w = Window(span=3600.0, max_samples=100)
    for i in range(1000):
        w.add(1.7e9 + i * 10.0, float(i))
    assert w.n == 100
    assert w.truncated
    assert w.mean() == pytest.approx(np.mean(np.arange(900, 1000)))


def test_gap_in_readings_empties_the_window_but_for_the_new_sample() -> None:
    w = Window(span=600.0, max_samples=1000, trend=True)
    for i in range(50):
        w.add(1000.0 + i, 5.0)
    w.add(1_000_000.0, 9.0)
    assert w.n == 1
    assert w.mean() == 9.0
    assert math.isnan(w.slope())


def test_rounding_guard_keeps_large_offsets_exact() -> None:
    """Values far from zero with tiny noise: naive running sums would lose every digit."""
    rng = random.Random(7)
    w = Window(max_samples=1000, trend=True)
    values: list[float] = []
    times: list[float] = []
    for _ in range(3000):
        for _ in range(100):
            x = 1e9 + rng.gauss(0.0, 1e-3)
            t = 1.7e9 + len(values) * 0.01
            w.add(t, x)
            values.append(x)
            times.append(t)
        del values[:-1000]
        del times[:-1000]
    v = np.array(values)
    assert w.std() == pytest.approx(float(v.std(ddof=1)), rel=1e-6)
    assert w.mean() == pytest.approx(float(v.mean()), rel=1e-15)


def test_slope_needs_a_trend_window() -> None:
    w = Window(max_samples=10)
    w.add(0.0, 1.0)
    with pytest.raises(ValueError, match="trend=True"):
        w.slope()


def _random_batches(seed: int) -> tuple[Window, Window, list[tuple[list[float], list[float]]]]:
    rng = random.Random(seed)
    span = rng.choice([math.inf, 30.0, 100.0, 3600.0])
    max_samples = rng.choice([10, 64, 100, 1000])
    trend = rng.random() < 0.5
    batches = []
    t = 1.7e9
    for _ in range(8):
        times: list[float] = []
        values: list[float] = []
        for _ in range(rng.choice([1, 2, 3, 50, 200, 1500])):
            t += rng.choice([0.0, 1.0, 1.0, 10.0, 60.0, 5000.0 if rng.random() < 0.01 else 1.0])
            times.append(t)
            values.append(50.0 + rng.gauss(0.0, 1.0))
        batches.append((times, values))
    return Window(span, max_samples, trend), Window(span, max_samples, trend), batches


@pytest.mark.parametrize("seed", range(30))
def test_batch_extend_equals_adding_one_by_one(seed: int) -> None:
    """The vectorised batch path gives every sample the statistics `add` would have."""
    one, batch, batches = _random_batches(seed)
    for times, values in batches:
        ref_n, ref_mean, ref_var, ref_old, ref_slope = [], [], [], [], []
        for t, x in zip(times, values, strict=True):
            one.add(t, x)
            ref_n.append(one.n)
            ref_mean.append(one.mean())
            ref_var.append(one.variance())
            ref_old.append(one.oldest)
            ref_slope.append(one.slope() if one.trend else math.nan)
        stats = batch.extend(np.array(times), np.array(values))
        assert stats.n.tolist() == ref_n
        assert stats.oldest.tolist() == ref_old
        np.testing.assert_allclose(stats.mean, ref_mean, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(stats.var, ref_var, rtol=1e-6, atol=1e-9)
        if one.trend:
            assert stats.slope is not None
            # Windows of a handful of samples lose a few digits to prefix-sum differences.
            judged = (stats.n >= 10) & np.isfinite(ref_slope) & np.isfinite(stats.slope)
            np.testing.assert_allclose(
                stats.slope[judged], np.array(ref_slope)[judged], rtol=1e-5, atol=1e-9
            )
        assert (batch.n, batch.head, batch.tail, batch.truncated) == (
            one.n,
            one.head,
            one.tail,
            one.truncated,
        )
