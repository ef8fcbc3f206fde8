"""The drift engine: every channel's baseline and detectors, fed batch by batch.

The engine owns the drift state of each channel it watches (``ChannelDrift``: the baseline,
the detectors, the latest trend); a ``Channel`` itself only says what the stream is. Defaults
per channel kind live here as data (``KIND_DEFAULTS``), typed like a config file's settings:
they must hold up on real floor data (daily humidity cycles, sensor noise, single outliers: no
alert; a sustained shift or ramp: an alert), which ``bench/detector_quality.py`` measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config.detectors import (
    BaselineShiftConfig,
    BaselineSpecConfig,
    CusumConfig,
    DetectorConfig,
    EwmaConfig,
    InvalidRateConfig,
    LimitBand,
    LimitConfig,
    SlopeConfig,
    StaleConfig,
    StuckConfig,
    VarianceChangeConfig,
)
from agent.config.models import AlertsConfig, ChannelConfig
from agent.drift.alerts import AlertEvent
from agent.drift.baselines import BaselineStore, ChannelBaseline
from agent.drift.detectors import (
    Band,
    BaselineShift,
    Cusum,
    Detector,
    Ewma,
    InvalidRate,
    Limit,
    Slope,
    Stale,
    Stuck,
    Thresholds,
    Trend,
    VarianceChange,
)
from agent.reading import Channel

H = 3600.0
D = 86400.0

SMALL_BATCH = 16  # readings per channel below which detection runs sample by sample


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """What a channel of one kind compares against, and which detectors judge it."""

    baseline: BaselineSpecConfig
    detectors: tuple[DetectorConfig, ...]


KIND_DEFAULTS: dict[str, KindDefaults] = {
    # Climate: a daily cycle of several %RH is normal, so compare a full day's mean with the
    # baseline, and judge trends over days; no per-reading CUSUM/EWMA (the cycle would trip them).
    "climate": KindDefaults(
        baseline=BaselineSpecConfig(window=7 * D, learn=7 * D),
        detectors=(
            # In baseline sigmas: the learned std includes the daily swing (~3 %RH for a 4 %RH
            # cycle), so 0.5 sigma of the daily mean is ~1.5 %RH, far above its noise.
            BaselineShiftConfig(type="baseline_shift", window=24 * H, units="sigma", warn=0.5,
                                alarm=1.0, hold=2 * H),
            SlopeConfig(type="slope", window=3 * D, warn=0.0625, alarm=0.125, hold=12 * H,
                        clear_hold=12 * H),
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
            StaleConfig(type="stale", max_gap=10 * 60),
            StuckConfig(type="stuck", window=H),
            InvalidRateConfig(type="invalid_rate", window=H, warn=0.05, alarm=0.2),
        ),
    ),
    # Colour: ΔE00 against the approved reference is already a difference (baseline 0).
    "color": KindDefaults(baseline=BaselineSpecConfig(value=0.0), detectors=()),
}  # fmt: skip

ROLLING_ONLY = BaselineSpecConfig()
"""The baseline of a channel whose kind has no defaults: a rolling window, never locked."""


@dataclass(frozen=True, slots=True)
class DetectResult:
    """What a batch of readings caused: alert events, and readings skipped as late."""

    events: list[AlertEvent]
    late: int


@dataclass(slots=True, eq=False)
class ChannelDrift:
    """The drift state of one watched channel: its baseline, detectors and latest trend."""

    channel: Channel
    baseline: ChannelBaseline
    detectors: list[Detector]
    trend: Trend
    stale: Stale | None = None
    last_ns: int = -(2**63)  # newest reading the detectors have seen
    arrived: float = 0.0  # monotonic time its newest readings reached the detectors
    sees_invalid: list[Detector] = field(default_factory=list)


def thresholds(spec: DetectorConfig, alerts: AlertsConfig) -> Thresholds:
    """A detector's alert thresholds and timing: its own settings plus the agent's alerts: ones."""
    repeat, flap_count, flap_window = alerts.repeat, alerts.flap_count, alerts.flap_window
    if isinstance(spec, StuckConfig):
        # A flat window is a yes/no condition: score 1 against a warn level of 0.5.
        return Thresholds(
            warn=0.5, hold=spec.hold, clear_hold=spec.clear_hold, hysteresis=0.0,
            repeat=repeat, flap_count=flap_count, flap_window=flap_window,
        )  # fmt: skip
    if isinstance(spec, StaleConfig | LimitConfig):
        raise TypeError(f"a {spec.type} detector has no warn/alarm thresholds of its own")
    units = spec.units if isinstance(spec, BaselineShiftConfig | SlopeConfig
                                      | VarianceChangeConfig) else "abs"  # fmt: skip
    direction = spec.direction if not isinstance(spec, InvalidRateConfig) else "up"
    hysteresis = None if isinstance(spec, InvalidRateConfig) else spec.hysteresis
    return Thresholds(
        warn=spec.warn,
        alarm=spec.alarm,
        direction=direction,
        hold=spec.hold,
        clear_hold=spec.clear_hold,
        hysteresis=hysteresis,
        repeat=repeat,
        units=units,
        flap_count=flap_count,
        flap_window=flap_window,
    )


def _band(b: LimitBand) -> Band:
    return Band(b.low_alarm, b.low_warn, b.high_warn, b.high_alarm)


def build_detector(
    channel: Channel,
    base: ChannelBaseline,
    trend: Trend,
    spec: DetectorConfig,
    alerts: AlertsConfig,
) -> Detector:
    """One detector for a channel from its validated settings (configured or a kind default)."""
    if isinstance(spec, StaleConfig):
        return Stale(channel, base, spec.max_gap)
    if isinstance(spec, LimitConfig):
        th = Thresholds(
            warn=1.0, hold=spec.hold, clear_hold=spec.clear_hold, repeat=alerts.repeat,
            flap_count=alerts.flap_count, flap_window=alerts.flap_window,
        )  # fmt: skip
        bands = {
            key: {value: _band(b) for value, b in values.items()}
            for key, values in spec.by_context.items()
        }
        return Limit(channel, base, _band(spec), bands, th, spec.deadband)
    th = thresholds(spec, alerts)
    if isinstance(spec, StuckConfig):
        return Stuck(channel, base, th, trend, span=spec.window, tolerance=spec.tolerance,
                     max_samples=spec.max_samples, min_samples=spec.min_samples)  # fmt: skip
    if isinstance(spec, CusumConfig):
        return Cusum(channel, base, th, trend, k=spec.k, min_samples=spec.min_samples)
    if isinstance(spec, EwmaConfig):
        return Ewma(channel, base, th, trend, lam=spec.lam, min_samples=spec.min_samples)
    if isinstance(spec, InvalidRateConfig):
        return InvalidRate(channel, base, th, trend, span=spec.window,
                           max_samples=spec.max_samples, min_samples=spec.min_samples)  # fmt: skip
    windowed: dict[type, type[BaselineShift | Slope | VarianceChange]] = {
        BaselineShiftConfig: BaselineShift,
        SlopeConfig: Slope,
        VarianceChangeConfig: VarianceChange,
    }
    detector = windowed[type(spec)]
    return detector(channel, base, th, trend, span=spec.window, max_samples=spec.max_samples,
                    min_samples=spec.min_samples)  # fmt: skip


class DriftEngine:
    """Watches channels: attaches their baseline and detectors, and runs batches through them."""

    def __init__(self, baselines: BaselineStore, alerts: AlertsConfig | None = None) -> None:
        self.baselines = baselines
        self.alerts = alerts if alerts is not None else AlertsConfig()
        self._drifts: dict[str, ChannelDrift] = {}

    def attach(
        self,
        channel: Channel,
        config: ChannelConfig | None = None,
        *,
        detectors: Sequence[DetectorConfig] | None = None,
        baseline: BaselineSpecConfig | None = None,
    ) -> ChannelDrift:
        """Watch a channel: its configured detectors and baseline, else its kind's defaults.

        ``detectors``/``baseline`` (for channels the agent makes itself, such as ΔE00) apply
        where ``config`` does not say; ``detectors=[]`` or ``enabled: false`` watch nothing
        but the baseline.
        """
        defaults = KIND_DEFAULTS.get(channel.kind)
        if config is not None and not config.enabled:
            specs: Sequence[DetectorConfig] = ()
        elif config is not None and config.detectors is not None:
            specs = config.detectors
        elif detectors is not None:
            specs = detectors
        else:
            specs = defaults.detectors if defaults is not None else ()
        if config is not None and config.enabled and config.limits is not None:
            specs = [*specs, config.limits]  # a spec band adds to the channel's detectors
        spec_baseline = (
            (config.baseline if config is not None else None)
            or baseline
            or (defaults.baseline if defaults is not None else ROLLING_ONLY)
        )
        base = ChannelBaseline(channel.name, spec_baseline, self.baselines)
        trend = Trend()
        built = [build_detector(channel, base, trend, s, self.alerts) for s in specs]
        # Trend detectors run first on each batch: the others quote the trend in their messages.
        built.sort(key=lambda d: d.name != "slope")
        drift = ChannelDrift(
            channel=channel,
            baseline=base,
            detectors=built,
            trend=trend,
            stale=next((d for d in built if isinstance(d, Stale)), None),
            sees_invalid=[d for d in built if getattr(d, "sees_invalid", False)],
        )
        self._drifts[channel.name] = drift
        channel.watched = bool(built)
        channel.wants_invalid = bool(drift.sees_invalid)
        return drift

    def detach(self, name: str) -> None:
        """Stop watching a channel (its source was removed by a reload)."""
        self._drifts.pop(name, None)

    def context_changed(self, channel: Channel, context: Mapping[str, str]) -> None:
        """A channel's production context changed: detectors that depend on it follow."""
        drift = self._drifts.get(channel.name)
        if drift is None:
            return
        for detector in drift.detectors:
            if isinstance(detector, Limit):
                detector.set_context(context)

    def drift(self, channel: Channel) -> ChannelDrift | None:
        """The drift state of a watched channel."""
        return self._drifts.get(channel.name)

    def __iter__(self) -> Iterator[ChannelDrift]:
        return iter(self._drifts.values())

    def reload_baselines(self) -> bool:
        """Pick up baselines captured or cleared with the CLI; True if any changed."""
        if not self.baselines.reload():
            return False
        for drift in self._drifts.values():
            drift.baseline.reload()
        return True

    def detect(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
        """Run a channel's detectors over readings in arrival order (NaN marks an invalid one).

        Readings older than one the detectors already saw (late arrivals) are skipped by the
        detectors (they are still spooled and forwarded) and counted in ``late``.
        """
        drift = self._drifts.get(channel.name)
        if drift is None or not drift.detectors:
            return DetectResult([], 0)
        drift.arrived = time.monotonic()
        if len(ns) <= SMALL_BATCH:
            # A few readings (a slow sensor between two process() calls): the scalar path costs
            # microseconds where NumPy's per-call overheads cost tens.
            return _detect_small(drift, ns, values)
        return _detect_many(drift, ns, values)

    def check_stale(self, now_s: float | None = None) -> list[AlertEvent]:
        """Raise the stale alerts of channels that have gone quiet by ``now_s`` (reading time,
        for replays and accelerated simulations), or live: by the monotonic time since their
        newest readings arrived, which a step of the wall clock does not move."""
        events = []
        mono = time.monotonic()
        for drift in self._drifts.values():
            stale = drift.stale
            if stale is None or drift.last_ns == -(2**63):
                continue
            now = now_s if now_s is not None else drift.last_ns / 1e9 + (mono - drift.arrived)
            event = stale.check(now)
            if event is not None:
                events.append(event)
        return events

    def rewind(self, now_ns: int) -> list[str]:
        """The wall clock stepped back to ``now_ns``: channels whose newest reading is now in
        the future start their windows afresh (else every new reading would be skipped as
        late until the clock caught up). Returns their names."""
        names = []
        for name, drift in self._drifts.items():
            if drift.last_ns <= now_ns:
                continue
            drift.last_ns = -(2**63)
            drift.baseline.restart()
            for detector in drift.detectors:
                detector.restart()
            names.append(name)
        return names

    def skip_ahead(self, step_ns: int) -> None:
        """The wall clock stepped forward by ``step_ns``: for stale detectors that time was
        not silence (their last reading moves forward with the clock)."""
        for drift in self._drifts.values():
            if drift.stale is not None:
                drift.stale.skip(step_ns)


def _detect_small(drift: ChannelDrift, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
    events: list[AlertEvent] = []
    base = drift.baseline
    detectors = drift.detectors
    late = 0
    last = drift.last_ns
    for ns_, v in zip(ns, values, strict=True):
        if ns_ < last:
            late += 1
            continue
        last = ns_
        t_ = ns_ * 1e-9
        if math.isnan(v):  # an invalid reading: only invalid_rate and stale see it
            for detector in drift.sees_invalid:
                _collect(events, detector.update_one(t_, v, ns_, math.nan, math.nan))
            continue
        bm, bs = base.update_one(t_, v)
        for detector in detectors:
            _collect(events, detector.update_one(t_, v, ns_, bm, bs))
    drift.last_ns = last
    if len(events) > 1:
        events.sort(key=lambda e: e.ts_ns)
    return DetectResult(events, late)


def _detect_many(drift: ChannelDrift, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
    events: list[AlertEvent] = []
    ts = np.asarray(ns, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    late = 0
    before = np.maximum.accumulate(np.concatenate(([drift.last_ns], ts[:-1])))
    if bool(np.any(ts < before)):
        keep = ts >= before
        late = int(len(ts) - np.count_nonzero(keep))
        ts = ts[keep]
        x = x[keep]
        if not len(ts):
            return DetectResult([], late)
    drift.last_ns = int(ts[-1])
    t = ts * 1e-9
    invalid = np.isnan(x)
    any_invalid = bool(invalid.any())
    if any_invalid:
        for detector in drift.sees_invalid:
            events += detector.update_many(t, x, ts, t, t)
        valid = ~invalid
        ts, t, x = ts[valid], t[valid], x[valid]
        if not len(ts):
            return DetectResult(sorted(events, key=lambda e: e.ts_ns), late)
    bmean, bstd = drift.baseline.update_many(t, x)
    drift.trend.batch = None
    for detector in drift.detectors:
        if any_invalid and detector in drift.sees_invalid:
            continue
        events += detector.update_many(t, x, ts, bmean, bstd)
    drift.trend.batch = None
    if len(events) > 1:
        events.sort(key=lambda e: e.ts_ns)
    return DetectResult(events, late)


def _collect(events: list[AlertEvent], got: AlertEvent | list[AlertEvent] | None) -> None:
    if got is None:
        return
    if isinstance(got, list):
        events.extend(got)
    else:
        events.append(got)
