"""What a channel of each kind is judged by when its config does not say, sized to its data.

Defaults per channel kind live here as data (``KIND_DEFAULTS``), typed like a config file's
settings. They must hold up on real floor data (daily humidity cycles, sensor noise, single
outliers: no alert; a sustained shift or ramp: an alert), which ``bench/detector_quality.py``
and ``bench/changepoints.py`` measure.

Each channel answers two questions where it makes sense:

* "is it different from the approved reference?": detectors against the locked baseline
  (``baseline_shift``, ``cusum``, ``ewma``, ``slope``...), one alert per departure, cleared when
  back;
* "did something just change?": the ``changepoint`` detector, one event per change, re-armed on
  the new level each time.

A kind's spans are in time where time means something (a day of learning covers a shift
change; a humidity cycle is a day). The engine measures each channel's sampling interval from
its first readings (``MEASURE_READINGS``) and raises spans that would hold too few readings at
that rate to the floors in ``FLOORS``: a 15-minute ``stale`` gap on a sensor that reads once an
hour becomes ten hours, a 4-hour window at one reading an hour becomes a day. The ``generic``
kind (channels whose kind nobody knows: a replayed CSV column) is sized from the interval
alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config.detectors import (
    BaselineShiftConfig,
    BaselineSpecConfig,
    ChangePointConfig,
    CusumConfig,
    DetectorConfig,
    EwmaConfig,
    InvalidRateConfig,
    SlopeConfig,
    StaleConfig,
    StuckConfig,
    VarianceChangeConfig,
)

H = 3600.0
D = 86400.0
GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """What a channel of one kind compares against, and which detectors judge it."""

    baseline: BaselineSpecConfig
    detectors: tuple[DetectorConfig, ...]


KIND_DEFAULTS: dict[str, KindDefaults] = {
    # Climate: a daily cycle of several %RH is normal. The baseline learns it over 3 days (with
    # one level per day, so a change during those days does not bend it) and the level
    # detectors judge what it leaves: the room's level and noise. Slow, strongly correlated
    # noise (a room wanders for an hour) is judged in 30-minute means by the change-point chart.
    "climate": KindDefaults(
        baseline=BaselineSpecConfig(window=3 * D, learn=3 * D, season="daily"),
        detectors=(
            BaselineShiftConfig(type="baseline_shift", window=6 * H, units="sigma", warn=2.0,
                                alarm=4.0, hold=H),
            SlopeConfig(type="slope", window=3 * D, warn=0.0625, alarm=0.125, hold=12 * H,
                        clear_hold=12 * H),
            ChangePointConfig(type="changepoint", block=30 * 60.0, learn=16),
            StaleConfig(type="stale", max_gap=15 * 60),
            StuckConfig(type="stuck", window=6 * H),
            InvalidRateConfig(type="invalid_rate", window=1 * H, warn=0.05, alarm=0.2),
        ),
    ),
    # Tension: per-batch means scatter around a set point without a cycle, so CUSUM and EWMA
    # in baseline sigmas catch small persistent shifts (an operator change) early.
    "tension": KindDefaults(
        baseline=BaselineSpecConfig(window=2 * D, learn=2 * D),
        detectors=(
            BaselineShiftConfig(type="baseline_shift", window=4 * H, warn=6.0, alarm=10.0, hold=H),
            # CUSUM integrates the evidence itself: no hold; h = 14 keeps false alarms near
            # 0.1 per 100,000 readings (bench/detector_quality.py) at ~25 readings' delay on 1σ.
            CusumConfig(type="cusum", k=0.5, warn=14.0, alarm=22.0, hysteresis=2.0),
            EwmaConfig(type="ewma", lam=0.05, warn=5.5, alarm=7.5, hold=60),
            # A spread needs many readings to estimate (at 1/min, 10 minutes' std scatters by
            # ±25 %), and a step in the mean inflates a window straddling it: a 2 h window,
            # at least 60 readings, and a hold of one window keep both from reading as erratic.
            VarianceChangeConfig(type="variance_change", window=2 * H, warn=1.6, alarm=2.2,
                                 hold=2 * H, min_samples=60),
            ChangePointConfig(type="changepoint", h=14.0, spread_h=14.0),
            StaleConfig(type="stale", max_gap=10 * 60),
            StuckConfig(type="stuck", window=H),
            InvalidRateConfig(type="invalid_rate", window=H, warn=0.05, alarm=0.2),
        ),
    ),
    # Colour: ΔE00 against the approved reference is already a difference (baseline 0).
    "color": KindDefaults(baseline=BaselineSpecConfig(value=0.0), detectors=()),
    # Anything else (a CSV column nobody named): no approved reference to hold it to, so the
    # question is only "did it change?", in readings, at whatever rate it comes. No `stuck`:
    # a setpoint or a counter may sit still for hours.
    GENERIC: KindDefaults(
        baseline=BaselineSpecConfig(window=60.0),
        detectors=(
            ChangePointConfig(type="changepoint"),
            StaleConfig(type="stale", max_gap=1.0),
            InvalidRateConfig(type="invalid_rate", window=1.0, warn=0.05, alarm=0.2),
        ),
    ),
}  # fmt: skip

ROLLING_ONLY = BaselineSpecConfig()
"""The baseline of a channel whose kind has no defaults: a rolling window, never locked."""

MEASURE_READINGS = 12
"""Readings a channel's interval is measured from (the median of their gaps) before its
defaults are sized; detection of those readings waits for them (same events, a moment later)."""


@dataclass(frozen=True, slots=True)
class Floors:
    """The fewest readings a default span may hold at the channel's measured interval."""

    window: int = 25  # baseline_shift, slope, variance_change: min_samples and more
    stuck: int = 30
    invalid_rate: int = 40
    max_gap: int = 10  # a stale gap of ten readings
    learn: int = 60  # a learned baseline
    baseline_window: int = 60


FLOORS = Floors()


def measure_interval(ns: Sequence[int]) -> float:
    """A channel's sampling interval, seconds: the median gap between its readings."""
    times = sorted(ns)
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    if not gaps:
        return 1.0
    gaps.sort()
    return max(gaps[len(gaps) // 2] / 1e9, 1e-3)


def _at_least(span: float, readings: int, interval: float) -> float:
    return max(span, math.ceil(readings * interval))


def sized(spec: DetectorConfig, interval: float) -> DetectorConfig:
    """A default detector with spans that hold enough readings at this interval."""
    f = FLOORS
    if isinstance(spec, BaselineShiftConfig | SlopeConfig | VarianceChangeConfig):
        need = math.ceil(max(spec.min_samples, f.window) / 0.8) + 1
        return spec.model_copy(update={"window": _at_least(spec.window, need, interval)})
    if isinstance(spec, StuckConfig):
        need = max(spec.min_samples, f.stuck)
        return spec.model_copy(update={"window": _at_least(spec.window, need, interval)})
    if isinstance(spec, InvalidRateConfig):
        need = max(spec.min_samples, f.invalid_rate)
        return spec.model_copy(update={"window": _at_least(spec.window, need, interval)})
    if isinstance(spec, StaleConfig):
        return spec.model_copy(update={"max_gap": _at_least(spec.max_gap, f.max_gap, interval)})
    return spec


def sized_baseline(spec: BaselineSpecConfig, interval: float) -> BaselineSpecConfig:
    """A default baseline whose spans hold enough readings at this interval."""
    update: dict[str, float] = {
        "window": _at_least(spec.window, FLOORS.baseline_window, interval),
    }
    if spec.learn is not None:
        need = max(spec.min_samples, FLOORS.learn)
        update["learn"] = _at_least(spec.learn, need, interval)
        update["window"] = max(update["window"], update["learn"])
    return spec.model_copy(update=update)


def block_readings(spec: ChangePointConfig, interval: float) -> int:
    """Readings per block of a change-point chart (its ``block`` span at this interval)."""
    if spec.block is None:
        return 1
    return max(1, round(spec.block / interval))
