"""The drift engine: every channel's baseline and detectors, fed batch by batch.

The engine owns the drift state of each channel it watches (``ChannelDrift``: the baseline,
the detectors, the latest trend); a ``Channel`` itself only says what the stream is. What a
channel of each kind is judged by when its config does not say is ``agent/drift/kinds.py``:
those defaults are sized to the channel's own sampling interval, measured from its first
readings (or its configured ``interval``), so the detectors wait for those few readings first.
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
    ChangePointConfig,
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
from agent.drift.baselines import BaselineStore, ChannelBaseline, span
from agent.drift.changepoint import ChangePoint
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
from agent.drift.kinds import (
    KIND_DEFAULTS,
    MEASURE_READINGS,
    ROLLING_ONLY,
    KindDefaults,
    block_readings,
    measure_interval,
    sized,
    sized_baseline,
)
from agent.reading import Channel

__all__ = [
    "KIND_DEFAULTS",
    "ROLLING_ONLY",
    "ChannelDrift",
    "DetectResult",
    "DriftEngine",
    "KindDefaults",
    "NotReady",
    "build_detector",
    "thresholds",
]

SMALL_BATCH = 16  # readings per channel below which detection runs sample by sample


@dataclass(frozen=True, slots=True)
class DetectResult:
    """What a batch of readings caused: alert events, and readings skipped as late."""

    events: list[AlertEvent]
    late: int


@dataclass(frozen=True, slots=True)
class NotReady:
    """A detector that has not judged a reading yet, and why (replay and shutdown reports)."""

    channel: str
    detector: str
    why: str


@dataclass(slots=True)
class _Plan:
    """What a channel's detectors will be, once its interval is known (defaults are sized)."""

    specs: Sequence[DetectorConfig]
    baseline: BaselineSpecConfig
    defaults: bool  # the kind's default detectors: sized to the interval
    default_baseline: bool  # the kind's baseline: sized with them
    interval: float | None = None


@dataclass(slots=True, eq=False)
class ChannelDrift:
    """The drift state of one watched channel: its baseline, detectors and latest trend.

    Until its interval is known (``measuring``), readings wait in ``waiting_*``; then the
    detectors are built and judge them first.
    """

    channel: Channel
    baseline: ChannelBaseline
    detectors: list[Detector]
    trend: Trend
    stale: Stale | None = None
    last_ns: int = -(2**63)  # newest reading the detectors have seen
    arrived: float = 0.0  # monotonic time its newest readings reached the detectors
    sees_invalid: list[Detector] = field(default_factory=list)
    plan: _Plan | None = None  # set while measuring the interval
    waiting_ns: list[int] = field(default_factory=list)
    waiting_x: list[float] = field(default_factory=list)
    early_ns: int = -(2**63)  # newest reading the limits judged while measuring
    interval: float | None = None  # seconds between readings, measured or configured
    first_ns: int | None = None  # oldest reading judged (readiness reports)
    seen: int = 0  # readings judged

    @property
    def measuring(self) -> bool:
        """Whether it still waits for readings to measure its interval."""
        return self.plan is not None


def thresholds(spec: DetectorConfig, alerts: AlertsConfig) -> Thresholds:
    """A detector's alert thresholds and timing: its own settings plus the agent's alerts: ones."""
    repeat, flap_count, flap_window = alerts.repeat, alerts.flap_count, alerts.flap_window
    if isinstance(spec, StuckConfig):
        # A flat window is a yes/no condition: score 1 against a warn level of 0.5.
        return Thresholds(
            warn=0.5, hold=spec.hold, clear_hold=spec.clear_hold, hysteresis=0.0,
            repeat=repeat, flap_count=flap_count, flap_window=flap_window,
        )  # fmt: skip
    if isinstance(spec, ChangePointConfig):
        return Thresholds(warn=spec.h, repeat=None, flap_count=flap_count, flap_window=flap_window)
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
    interval: float | None = None,
) -> Detector:
    """One detector for a channel from its validated settings (configured or a kind default);
    ``interval`` (seconds between readings) turns a change-point chart's block into readings."""
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
    if isinstance(spec, ChangePointConfig):
        return ChangePoint(
            channel, base, th, trend, k=spec.k, h=spec.h,
            spread_h=spec.spread_h if spec.spread_h is not None else spec.h, learn=spec.learn,
            block=block_readings(spec, interval if interval is not None else 1.0),
            spread=spec.spread, alarm_size=spec.alarm,
        )  # fmt: skip
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
        but the baseline. Kind defaults are sized to the channel's interval: its configured
        ``interval``, else measured from its first MEASURE_READINGS readings (the detectors
        are built then, and judge those readings first).
        """
        defaults = KIND_DEFAULTS.get(channel.kind)
        from_kind = False
        if config is not None and not config.enabled:
            specs: Sequence[DetectorConfig] = ()
        elif config is not None and config.detectors is not None:
            specs = config.detectors
        elif detectors is not None:
            specs = detectors
        else:
            specs = defaults.detectors if defaults is not None else ()
            from_kind = bool(specs)
        if config is not None and config.enabled and config.limits is not None:
            specs = [*specs, config.limits]  # a spec band adds to the channel's detectors
        spec_baseline = (config.baseline if config is not None else None) or baseline
        base_from_kind = spec_baseline is None
        if spec_baseline is None:
            spec_baseline = defaults.baseline if defaults is not None else ROLLING_ONLY
        interval = config.interval if config is not None else None
        base = ChannelBaseline(channel.name, spec_baseline, self.baselines)
        drift = ChannelDrift(channel=channel, baseline=base, detectors=[], trend=Trend())
        drift.plan = _Plan(specs, spec_baseline, from_kind, base_from_kind, interval)
        self._drifts[channel.name] = drift
        if not from_kind or interval is not None:
            self._build(drift, interval)
        else:
            # A spec band needs no sizing and must not wait for the interval: it judges every
            # reading from the first (the others judge the measuring readings once built).
            limits = [s for s in specs if isinstance(s, LimitConfig)]
            drift.plan.specs = [s for s in specs if not isinstance(s, LimitConfig)]
            drift.detectors = [
                build_detector(channel, base, drift.trend, s, self.alerts, None) for s in limits
            ]
        channel.watched = bool(specs)
        channel.wants_invalid = any(isinstance(s, StaleConfig | InvalidRateConfig) for s in specs)
        return drift

    def _build(self, drift: ChannelDrift, interval: float | None) -> None:
        """Build a channel's detectors (kind defaults sized to ``interval``)."""
        plan = drift.plan
        assert plan is not None
        specs, spec_baseline = plan.specs, plan.baseline
        if plan.defaults and interval is not None:
            specs = [sized(s, interval) for s in specs]
            if plan.default_baseline and spec_baseline.value is None:
                drift.baseline.resize(sized_baseline(spec_baseline, interval))
        channel, base, trend = drift.channel, drift.baseline, drift.trend
        built = [build_detector(channel, base, trend, s, self.alerts, interval) for s in specs]
        # Trend detectors run first on each batch: the others quote the trend in their messages.
        built.sort(key=lambda d: d.name != "slope")
        drift.detectors = built + drift.detectors  # the limits built at once stay
        drift.stale = next((d for d in built if isinstance(d, Stale)), None)
        drift.sees_invalid = [d for d in built if getattr(d, "sees_invalid", False)]
        drift.interval = interval
        drift.plan = None

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
        if drift is None:
            return DetectResult([], 0)
        if drift.plan is not None:
            early = _judge_early(drift, ns, values)  # the limits, at once
            drift.waiting_ns += ns
            drift.waiting_x += values
            if len(drift.waiting_ns) < MEASURE_READINGS:
                return DetectResult(early, 0)
            ns, values = drift.waiting_ns, drift.waiting_x
            drift.waiting_ns, drift.waiting_x = [], []
            limits = drift.detectors
            drift.detectors = []  # the new detectors judge the measuring readings, not the
            self._build(drift, measure_interval(ns[:MEASURE_READINGS]))  # limits again
            try:
                got = self._judge(drift, ns, values)
            finally:
                drift.detectors += limits
            if early:
                got.events.extend(early)
                got.events.sort(key=lambda e: e.ts_ns)
            return got
        return self._judge(drift, ns, values)

    def _judge(
        self, drift: ChannelDrift, ns: Sequence[int], values: Sequence[float]
    ) -> DetectResult:
        """Run the channel's (built) detectors over the readings."""
        if not drift.detectors:
            return DetectResult([], 0)
        drift.arrived = time.monotonic()
        if drift.first_ns is None:
            drift.first_ns = min(ns)
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
            if drift.plan is not None:  # still measuring its interval: afresh on the new line
                if drift.early_ns > now_ns or (drift.waiting_ns and max(drift.waiting_ns) > now_ns):
                    drift.waiting_ns, drift.waiting_x = [], []
                    drift.early_ns = -(2**63)
                    drift.baseline.restart()
                    for detector in drift.detectors:  # the limits
                        detector.restart()
                    names.append(name)
                continue
            if drift.last_ns <= now_ns:
                continue
            drift.last_ns = -(2**63)
            drift.baseline.restart()
            for detector in drift.detectors:
                detector.restart()
            names.append(name)
        return names

    def not_ready(self) -> list[NotReady]:
        """Detectors that have not judged a reading yet, and why, with the data's span in the
        words ("baseline needs 3 d of readings (at least 30), the readings span 13 h")."""
        out: list[NotReady] = []
        for name, drift in self._drifts.items():
            if drift.measuring:
                if drift.channel.watched:
                    got = len(drift.waiting_ns)
                    out.append(NotReady(name, "*", f"its interval is measured from "
                                        f"{MEASURE_READINGS} readings; it had {got}"))  # fmt: skip
                continue
            if drift.first_ns is None:
                continue
            spanned = span(max(drift.last_ns - drift.first_ns, 0) / 1e9)
            data = f"the readings span {spanned} ({drift.seen} readings)"
            base = drift.baseline
            for detector in drift.detectors:
                if detector.ready:
                    continue
                waits_base = base.spec.learn is not None and base.locked is None and (
                    detector.needs_settled or (base.seasonal and not detector.raw)
                )  # fmt: skip
                why = (
                    f"baseline needs {base.needs()}, {data}"
                    if waits_base
                    else f"needs {detector.needs()}, {data}"
                )
                out.append(NotReady(name, detector.name, why))
        return out

    def skip_ahead(self, step_ns: int) -> None:
        """The wall clock stepped forward by ``step_ns``: for stale detectors that time was
        not silence (their last reading moves forward with the clock)."""
        for drift in self._drifts.values():
            if drift.stale is not None:
                drift.stale.skip(step_ns)


def _judge_early(
    drift: ChannelDrift, ns: Sequence[int], values: Sequence[float]
) -> list[AlertEvent]:
    """A channel still measuring its interval: its limits judge the readings (in order; a late
    or invalid one is skipped, as the detectors would)."""
    events: list[AlertEvent] = []
    if not drift.detectors:
        return events
    last = drift.early_ns
    for ns_, v in zip(ns, values, strict=True):
        if ns_ < last or math.isnan(v):
            continue
        last = ns_
        for detector in drift.detectors:
            _collect(events, detector.update_one(ns_ * 1e-9, v, ns_, math.nan, math.nan))
    drift.early_ns = last
    return events


def _detect_small(drift: ChannelDrift, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
    events: list[AlertEvent] = []
    base = drift.baseline
    detectors = drift.detectors
    late = 0
    last = drift.last_ns
    seen = 0
    for ns_, v in zip(ns, values, strict=True):
        if ns_ < last:
            late += 1
            continue
        last = ns_
        seen += 1
        t_ = ns_ * 1e-9
        if math.isnan(v):  # an invalid reading: only invalid_rate and stale see it
            for detector in drift.sees_invalid:
                _collect(events, detector.update_one(t_, v, ns_, math.nan, math.nan))
            continue
        bm, bs = base.update_one(t_, v)
        xa = base.adjust_one(t_, v)  # NaN: a seasonal profile not learned yet
        judging = base.judging
        for detector in detectors:
            if detector.raw:
                _collect(events, detector.update_one(t_, v, ns_, bm, bs))
            elif not math.isnan(xa) and (judging or not detector.needs_settled):
                _collect(events, detector.update_one(t_, xa, ns_, bm, bs))
    drift.last_ns = last
    drift.seen += seen
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
    drift.seen += len(ts)
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
    base = drift.baseline
    bmean, bstd = base.update_many(t, x)
    xa, begin = base.adjust_many(t, x)  # seasonal: judged from the profile's lock on
    settled = max(begin, base.settled_from)
    drift.trend.batch = None
    for detector in drift.detectors:
        if any_invalid and detector in drift.sees_invalid:
            continue
        if detector.raw:
            base.view_from = base.settled_from
            drift.trend.offset = 0
            events += detector.update_many(t, x, ts, bmean, bstd)
            continue
        a = settled if detector.needs_settled else begin
        if a >= len(t):
            continue
        base.view_from = base.settled_from - a
        drift.trend.offset = a
        if a:
            events += detector.update_many(t[a:], xa[a:], ts[a:], bmean[a:], bstd[a:])
        else:
            events += detector.update_many(t, xa, ts, bmean, bstd)
    drift.trend.batch = None
    drift.trend.offset = 0
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
