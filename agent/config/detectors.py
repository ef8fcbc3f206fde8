"""Detector and baseline settings of a channel, as validated models the drift engine takes as is."""

import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, model_validator

from agent.config.base import (
    Direction,
    Duration,
    Loc,
    Section,
    positive,
    raise_problems,
    reason,
)
from agent.config.bounds import within

CLIP_SIGMA = 4.0
"""CUSUM and EWMA see readings clipped to baseline ± 4σ: a single outlier (a door left open, a
knocked sensor) moves them by a bounded step instead of tripping them; a real 1–3σ shift is
untouched. (Here, because check-config reasons about it too.)"""
WINDOW_COVER = 0.8
"""A window is judged once its readings cover this share of its span (and min_samples)."""


class _Timing(Section):
    """How long a condition must hold before an alert, and before it clears."""

    hold: Annotated[Duration, within("detectors.hold")] = 0.0
    clear_hold: Annotated[Duration, within("detectors.hold")] | None = Field(
        default=None, description="None: same as hold"
    )


class _ThresholdDetector(_Timing):
    """Settings shared by detectors that compare a drift figure against warn/alarm thresholds."""

    window: Annotated[Duration, within("detectors.window")]
    warn: Annotated[float, AfterValidator(positive)]
    alarm: float | None = None
    units: Literal["abs", "sigma"] = Field(
        default="abs",
        description="abs: thresholds in the channel's units; sigma: in baseline std devs",
    )
    direction: Direction = "both"
    hysteresis: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="in the thresholds' units; None: 10% of warn"
    )
    min_samples: Annotated[int, Field(ge=2)] = 10
    max_samples: Annotated[int, Field(le=10_000_000)] = Field(
        default=100_000, description="ring buffer capacity"
    )

    @property
    def effective_clear_hold(self) -> float:
        """Seconds the condition must be gone before the alert clears."""
        return self.hold if self.clear_hold is None else self.clear_hold

    @property
    def effective_hysteresis(self) -> float:
        """How far back below a threshold the figure must come to step down."""
        return 0.1 * self.warn if self.hysteresis is None else self.hysteresis

    @model_validator(mode="after")
    def _check_thresholds(self) -> "_ThresholdDetector":
        problems: list[tuple[Loc, str]] = []
        if self.alarm is not None and self.alarm <= self.warn:
            problems.append(
                (("alarm",), f"alarm ({self.alarm:g}) must be greater than warn ({self.warn:g})")
            )
        if self.hysteresis is not None and self.hysteresis >= self.warn:
            problems.append(
                (
                    ("hysteresis",),
                    f"hysteresis ({self.hysteresis:g}) must be smaller than warn ({self.warn:g}), "
                    "or the alert could never clear",
                )
            )
        if self.max_samples < self.min_samples:
            problems.append(
                (
                    ("max_samples",),
                    f"max_samples ({self.max_samples}) must be at least "
                    f"min_samples ({self.min_samples})",
                )
            )
        raise_problems(type(self).__name__, problems)
        return self


class BaselineShiftConfig(_ThresholdDetector):
    """Alert when the recent mean moves away from the channel's baseline."""

    type: Literal["baseline_shift"]


class SlopeConfig(_ThresholdDetector):
    """Alert when the trend over a window is steeper than warn/alarm (units, or sigmas, per h)."""

    type: Literal["slope"]


class VarianceChangeConfig(_ThresholdDetector):
    """Alert when the rolling std departs from the baseline's (warn/alarm are ratios, e.g. 1.5)."""

    type: Literal["variance_change"]


class _NoWindow(_Timing):
    """Threshold settings for detectors without a window of their own."""

    warn: Annotated[float, AfterValidator(positive)]
    alarm: float | None = None
    direction: Direction = "both"
    hysteresis: Annotated[float, Field(ge=0)] | None = None
    min_samples: Annotated[int, Field(ge=2)] = 10

    @model_validator(mode="after")
    def _check_alarm(self) -> "_NoWindow":
        if self.alarm is not None and self.alarm <= self.warn:
            raise_problems(
                type(self).__name__,
                [(("alarm",), f"alarm ({self.alarm:g}) must be greater than warn ({self.warn:g})")],
            )
        return self


class CusumConfig(_NoWindow):
    """Two-sided tabular CUSUM of standardised readings (k, and warn/alarm = h, in σ)."""

    type: Literal["cusum"]
    k: Annotated[float, Field(ge=0)] = Field(default=0.5, description="allowance, in sigmas")


class EwmaConfig(_NoWindow):
    """EWMA control chart: alert when the EWMA leaves baseline ± L·σ_ewma (warn/alarm = L)."""

    type: Literal["ewma"]
    lam: Annotated[float, Field(gt=0, le=1)] = Field(default=0.05, description="λ, the weight")


class ChangePointConfig(Section):
    """Change points: one `changed` event per change of level (or spread), then re-armed on the
    new segment, which learns its own level from its first `learn` values."""

    type: Literal["changepoint"]
    k: Annotated[float, Field(gt=0, le=5)] = Field(
        default=0.5, description="allowance in σ: half the shift the chart is tuned for"
    )
    h: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=12.0, description="decision interval of the level CUSUM, in σ"
    )
    spread: bool = Field(default=True, description="also report changes of the spread")
    spread_h: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None, description="decision interval of the spread CUSUM (None: h)"
    )
    learn: Annotated[int, Field(ge=5, le=100_000)] = Field(
        default=30, description="values a new segment learns its level and spread from"
    )
    block: Annotated[Duration, within("detectors.block")] | None = Field(
        default=None,
        description="judge means of this much of readings (None: every reading)",
    )
    alarm: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="a level change of this many σ or more is an alarm"
    )


class StaleConfig(Section):
    """Alert when no reading arrived for max_gap (sensor or link down)."""

    type: Literal["stale"]
    max_gap: Annotated[Duration, within("detectors.max_gap")]


class StuckConfig(_Timing):
    """Alert when the readings do not change at all over a window (a frozen sensor)."""

    type: Literal["stuck"]
    window: Annotated[Duration, within("detectors.window")]
    tolerance: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="a spread (std) at or below this counts as flat"
    )
    min_samples: Annotated[int, Field(ge=2)] = 10
    max_samples: Annotated[int, Field(le=10_000_000)] = 100_000


class InvalidRateConfig(_Timing):
    """Alert when the share of out-of-range readings over a window exceeds warn/alarm (0..1)."""

    type: Literal["invalid_rate"]
    window: Annotated[Duration, within("detectors.window")]
    warn: Annotated[float, Field(gt=0, le=1)] = 0.05
    alarm: Annotated[float, Field(gt=0, le=1)] | None = 0.2
    min_samples: Annotated[int, Field(ge=1)] = 20
    max_samples: Annotated[int, Field(le=10_000_000)] = 100_000


class LimitBand(Section):
    """Warn and alarm limits in the channel's units; any may be left out (one-sided bands)."""

    low_alarm: float | None = None
    low_warn: float | None = None
    high_warn: float | None = None
    high_alarm: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "LimitBand":
        given = [
            (name, value)
            for name, value in (
                ("low_alarm", self.low_alarm),
                ("low_warn", self.low_warn),
                ("high_warn", self.high_warn),
                ("high_alarm", self.high_alarm),
            )
            if value is not None
        ]
        problems: list[tuple[Loc, str]] = []
        for (a, va), (b, vb) in itertools.pairwise(given):
            if not va < vb:
                problems.append(((b,), f"{b} ({vb:g}) must be above {a} ({va:g})"))
        if not given:
            problems.append(((), "give at least one of low_warn, low_alarm, high_warn, high_alarm"))
        if self.high_alarm is not None and self.high_warn is None:
            problems.append((("high_warn",), "high_alarm needs high_warn below it"))
        if self.low_alarm is not None and self.low_warn is None:
            problems.append((("low_warn",), "low_alarm needs low_warn above it"))
        raise_problems(type(self).__name__, problems)
        return self


class LimitConfig(LimitBand, _Timing):
    """A plain spec band: warn and alarm when a reading leaves it (e.g. 45–55 %RH), after
    ``hold``, back to normal once inside by ``deadband``; ``by_context`` gives the approved
    sample's own band for a SKU or lot the production context names."""

    type: Literal["limit"] = "limit"
    deadband: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="units inside a limit a reading must come back to clear"
    )
    by_context: dict[str, dict[str, LimitBand]] = Field(
        default_factory=dict,
        description="context key → value → band, e.g. sku: {'4711': {high_warn: 54}}",
    )


DetectorConfig = Annotated[
    BaselineShiftConfig
    | SlopeConfig
    | VarianceChangeConfig
    | CusumConfig
    | EwmaConfig
    | ChangePointConfig
    | StaleConfig
    | StuckConfig
    | InvalidRateConfig
    | LimitConfig,
    Field(discriminator="type"),
]
DETECTOR_TYPES = (
    "baseline_shift",
    "slope",
    "variance_change",
    "cusum",
    "ewma",
    "changepoint",
    "stale",
    "stuck",
    "invalid_rate",
    "limit",
)


def _baseline_value(v: Any) -> Any:
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
        return v
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise reason(f"{v!r} is not a baseline value: give a number in the channel's units")


class BaselineSpecConfig(Section):
    """What a channel's detectors compare against.

    A locked baseline (captured with `driftgate baseline capture`, or learned automatically over
    the first `learn` of readings) when there is one, else the mean and std of a long rolling
    `window`. `value` (and `std`) fix it instead.
    """

    value: Annotated[float | None, BeforeValidator(_baseline_value)] = None
    std: Annotated[float, Field(gt=0)] | None = None
    window: Annotated[Duration, within("baseline.window")] = 7 * 86400.0
    learn: Annotated[Duration, within("baseline.learn")] | None = Field(
        default=None, description="lock a learned baseline after this much data (None: never)"
    )
    min_samples: Annotated[int, Field(ge=2)] = 30
    season: Literal["none", "daily", "weekly"] = Field(
        default="none",
        description="daily: learn the daily profile and judge what is left; weekly: also "
        "the days of the week (needs learn of at least 14 d)",
    )

    @model_validator(mode="after")
    def _season_needs_learning(self) -> "BaselineSpecConfig":
        problems: list[tuple[Loc, str]] = []
        if self.season != "none" and self.value is not None:
            problems.append((("season",), "a configured value has no daily profile to learn"))
        if self.season != "none" and self.learn is None:
            problems.append((("season",), f"a {self.season} profile is learned: set learn"))
        if self.season == "weekly" and self.learn is not None and self.learn < 14 * 86400.0:
            problems.append(
                (("learn",), "a weekly profile needs at least two weeks: learn of 14 d or more")
            )
        raise_problems(type(self).__name__, problems)
        return self


_DETECTOR_LIST: TypeAdapter[list[DetectorConfig]] = TypeAdapter(list[DetectorConfig])


def parse_detectors(items: Sequence[Mapping[str, Any]]) -> list[DetectorConfig]:
    """Detector settings from plain mappings (benchmarks, tests, tools), validated like a file."""
    return _DETECTOR_LIST.validate_python(list(items))
