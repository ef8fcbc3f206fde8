"""Drift detectors: O(1) per reading over ring-buffer windows, driven by the readings' timestamps.

Every detector turns each reading into a score (in the channel's units, or in baseline standard
deviations with ``units: sigma``) and an AlertState turns scores into events. All detectors of
a channel share its ChannelBaseline (locked baseline, else a long rolling window). Each has a
vectorised batch path (``update_many``) and a scalar twin (``update_one``) for small batches;
tests check both give the same events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.config.detectors import CLIP_SIGMA, WINDOW_COVER
from agent.drift.alerts import (
    CLEARED,
    ESCALATED,
    FLAP_COUNT,
    FLAP_WINDOW,
    FLAPPING,
    RAISED,
    SETTLED,
    AlertEvent,
    AlertState,
    Level,
)
from agent.drift.baselines import ChannelBaseline
from agent.drift.filters import ewma
from agent.drift.ring import BatchStats, Window
from agent.reading import Channel
from agent.words import duration_words, fmt, fmt_rate, when

_DIRECTIONS = {"up": 1, "down": -1, "both": 0}


class Detector(Protocol):
    """What the engine needs of a detector."""

    name: str
    raw: bool  # judges readings as they are (else with a learned profile taken out)
    needs_settled: bool  # judges only readings compared with a settled baseline

    @property
    def ready(self) -> bool:
        """Whether it has judged a reading yet (readiness reports)."""
        ...

    def needs(self) -> str:
        """What it waits for before judging, in words."""
        ...

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings (times in s and ns, non-decreasing) with their baseline.

        Returns the alert events the batch caused, in order; the same however the readings
        are split into batches.
        """
        ...

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | list[AlertEvent] | None:
        """Feed one reading: the scalar path for small batches (same result, no NumPy calls)."""
        ...

    def restart(self) -> None:
        """The wall clock stepped back: forget what is measured on the old time line."""
        ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Alert thresholds and timing shared by the detectors."""

    warn: float
    alarm: float | None = None
    direction: str = "both"
    hold: float = 0.0
    clear_hold: float | None = None
    hysteresis: float | None = None
    repeat: float | None = None
    units: str = "abs"
    flap_count: int = FLAP_COUNT
    flap_window: float = FLAP_WINDOW

    def state(self) -> AlertState:
        """A fresh state machine with these thresholds."""
        return AlertState(
            self.warn,
            self.alarm,
            self.hold,
            self.clear_hold,
            self.hysteresis,
            self.repeat,
            self.flap_count,
            self.flap_window,
        )


def run_states(
    state: AlertState,
    t: np.ndarray,
    scores: np.ndarray,
    begin: int,
    make_event: Callable[[int, str], AlertEvent],
) -> list[AlertEvent]:
    """Feed scores[begin:] to the state machine, skipping quiet stretches without a Python loop."""
    events: list[AlertEvent] = []
    m = len(scores)
    j = begin
    while j < m:
        if state.pending_since is None and state.clear_since is None:
            # Steady state: nothing can change until a score crosses a boundary (or a repeat
            # or the end of flapping falls due): jump to the next such reading in one step.
            ahead = np.flatnonzero(_interesting(state, t[j:], scores[j:]))
            if ahead.size == 0:
                break
            j += int(ahead[0])
        score = float(scores[j])
        if not math.isnan(score):  # NaN: not evaluable (too few samples, no baseline yet)
            kind = state.observe(float(t[j]), score)
            if kind is not None:
                events.append(make_event(j, kind))
        j += 1
    return events


def _interesting(state: AlertState, t: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Where a steady state machine could change: a score crossing a boundary, a timer due."""
    level = state.level
    if level == Level.OK:
        hit = scores >= state.warn
    else:
        up = state.alarm if level == Level.WARN else math.inf
        down = (state.warn if level == Level.WARN else state.alarm) - state.margin
        hit = (scores >= up) | (scores <= down)
        if state.repeat is not None:
            hit |= t - state.last_emit >= state.repeat
    if state.flapping:
        hit |= t - state.last_transition >= state.flap_window
    return np.asarray(hit)


def _first_true(mask: np.ndarray, begin: int = 0) -> int:
    hits = np.flatnonzero(mask[begin:])
    return begin + int(hits[0]) if hits.size else len(mask)


def span_words(span: float, samples: int) -> str:
    """How a window reads in an alert: '24 h', '3 d', or 'last 500 readings'."""
    if math.isfinite(span):
        if span <= 2 * 86400 and span % 3600 == 0:
            return f"{span / 3600:.0f} h"
        words = duration_words(span)
        return words.removesuffix(" 0 h").removesuffix(" 0 min")
    return f"last {samples} readings"


def _directed(delta: np.ndarray, sign: int) -> np.ndarray:
    out: np.ndarray = np.abs(delta) if sign == 0 else delta * sign
    return out


class Trend:
    """A channel's latest trend, published by its slope detector and quoted by the others."""

    __slots__ = ("batch", "offset", "per_h", "published_at")

    def __init__(self) -> None:
        self.per_h = math.nan  # the latest known trend, units per hour
        self.batch: np.ndarray | None = None  # the trend at each reading of the current batch
        self.offset = 0  # where the arrays the current detector was given start in the batch
        self.published_at = 0  # ...and where the slope detector's started

    def publish(self, per_h: np.ndarray) -> None:
        """Record the slope detector's trend for this batch.

        Where the trend is undefined the latest known one holds, as on the scalar path.
        """
        known = np.isfinite(per_h)
        index = np.maximum.accumulate(np.where(known, np.arange(len(per_h)), -1))
        self.batch = np.where(index >= 0, per_h[np.maximum(index, 0)], self.per_h)
        self.published_at = self.offset
        if known.any():
            self.per_h = float(per_h[known][-1])

    def at(self, j: int) -> float:
        """The trend at reading j of the current detector's arrays (j < 0: the latest known)."""
        batch = self.batch
        if batch is not None and j >= 0:
            i = j + self.offset - self.published_at
            if 0 <= i < len(batch):
                return float(batch[i])
        return self.per_h


class _Base:
    """Shared plumbing: thresholds, state machine, baseline, event building."""

    name = "detector"
    raw = False  # sees readings as they are, not with a learned profile taken out
    needs_settled = False  # judges only against a settled baseline (see ChannelBaseline)

    def __init__(
        self, channel: Channel, base: ChannelBaseline, thresholds: Thresholds, trend: Trend
    ) -> None:
        self.channel = channel
        self.base = base
        self.trend = trend
        self.thresholds = thresholds
        self.state = thresholds.state()
        self.sign = _DIRECTIONS[thresholds.direction]
        self.sigma = thresholds.units == "sigma"
        self._j = -1  # the batch index of the event being made (-1: the scalar path)

    def _scale(self, bstd: np.ndarray) -> np.ndarray:
        if not self.sigma:
            return np.ones_like(bstd)
        with np.errstate(divide="ignore", invalid="ignore"):
            out: np.ndarray = np.where(bstd > 0, 1.0 / bstd, np.nan)
        return out

    def _scale_one(self, bstd: float) -> float:
        if not self.sigma:
            return 1.0
        return 1.0 / bstd if bstd > 0 else math.nan

    def restart(self) -> None:
        """The clock went back: start judging afresh from the new time (see agent/clock.py)."""
        self.state.rewind()

    @property
    def ready(self) -> bool:
        """Whether it has judged a reading yet."""
        return True

    def needs(self) -> str:
        """What it waits for before judging, in words."""
        return ""

    def _fast_quiet(self, score: float) -> bool:
        state = self.state
        return (
            state.level == 0
            and state.pending_since is None
            and not state.flapping
            and not score >= state.warn
        )

    def _since(self, ts_ns: int) -> int:
        since = self.state.since
        return int(since * 1e9) if since is not None else ts_ns

    def _unit_words(self) -> str:
        return "σ" if self.sigma else self.channel.unit

    def _event(
        self,
        ts_ns: int,
        kind: str,
        *,
        value: float,
        baseline: float,
        delta: float,
        rate: float,
        message: str,
    ) -> AlertEvent:
        ch = self.channel
        if kind in (FLAPPING, SETTLED):
            message = self._flap_message(ts_ns, kind)
        elif kind != CLEARED and ch.affects:
            message += f" This affects {ch.affects}."
        return AlertEvent(
            ts_ns=ts_ns,
            channel=ch,
            detector=self.name,
            transition=kind,
            level=self.state.level,
            value=value,
            baseline=baseline,
            delta=delta,
            rate_per_h=rate,
            since_ns=self._since(ts_ns),
            baseline_note=self.base.describe(self._j),
            message=message,
        )

    def _flap_message(self, ts_ns: int, kind: str) -> str:
        ch = self.channel
        if kind == FLAPPING:
            return (
                f"{ch.label}: the {self.name.replace('_', ' ')} alert keeps coming and going "
                f"({self.state.flap_count} changes within "
                f"{duration_words(self.state.flap_window)}); further changes are held back "
                "until it settles. Check the sensor and the thresholds."
            )
        return (
            f"{ch.label}: the {self.name.replace('_', ' ')} alert has settled, now "
            f"{self.state.level.label}."
        )

    def _head(self, kind: str) -> str:
        return f"{self.state.level.label.upper()}: " if kind != CLEARED else ""


class _Windowed(_Base):
    """A detector over its own time window, judged once the window is full enough (80 % of
    its span covered and min_samples readings)."""

    needs_slope = False  # the window keeps least-squares sums too

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        span: float,
        max_samples: int = 100_000,
        min_samples: int = 10,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        self.window = Window(span, max_samples, trend=self.needs_slope)
        self.min_samples = min_samples
        self._ready = False
        self._min_cover = WINDOW_COVER * span if math.isfinite(span) else 0.0

    def restart(self) -> None:
        """The clock went back: the window starts afresh and must fill again before judging."""
        super().restart()
        self.window.clear()
        self._ready = False

    @property
    def ready(self) -> bool:
        """Whether its window has filled enough to be judged."""
        return self._ready

    def needs(self) -> str:
        """What its window waits for, in words."""
        span = span_words(self.window.span, self.window.max_samples)
        return f"{self.min_samples} readings covering {WINDOW_COVER:.0%} of its {span} window"

    def _extend(self, t: np.ndarray, x: np.ndarray) -> tuple[BatchStats, int] | None:
        """Add a batch; its statistics and the first index to judge (None: none yet)."""
        stats = self.window.extend(t, x)
        begin = 0
        if not self._ready:
            ok = (stats.n >= self.min_samples) & (t - stats.oldest >= self._min_cover)
            begin = _first_true(ok)
            if begin >= len(t):
                return None
            self._ready = True
        return stats, begin

    def _add(self, t: float, x: float) -> bool:
        """Add one reading; whether the window can be judged."""
        w = self.window
        w.add(t, x)
        if not self._ready:
            if w.n < self.min_samples or t - w.oldest < self._min_cover:
                return False
            self._ready = True
        return True


class BaselineShift(_Windowed):
    """Rolling-window mean against the channel's baseline."""

    name = "baseline_shift"

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading."""
        got = self._extend(t, x)
        if got is None:
            return []
        stats, begin = got
        mean = stats.mean
        delta = mean - bmean
        scores = _directed(delta, self.sign) * self._scale(bstd)

        def event(j: int, kind: str) -> AlertEvent:
            self._j = j
            return self._make(int(ns[j]), j, kind, float(mean[j]), float(bmean[j]))

        try:
            return run_states(self.state, t, scores, begin, event)
        finally:
            self._j = -1

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        if not self._add(t, x):
            return None
        mean = w.k + w.sx / w.n
        delta = mean - bmean
        score = (abs(delta) if self.sign == 0 else delta * self.sign) * self._scale_one(bstd)
        if math.isnan(score) or self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        return None if kind is None else self._make(ns, -1, kind, mean, bmean)

    def levels(self) -> dict[str, float]:
        """The warn/alarm levels in the channel's units around the current baseline (for plots)."""
        base = self.base.locked
        if base is None:
            w = self.base.rolling
            mean, std = w.mean(), w.std()
        else:
            mean, std = base.mean, base.std
        scale = std if self.sigma else 1.0
        if not (math.isfinite(mean) and math.isfinite(scale)):
            return {}
        out: dict[str, float] = {}
        th = self.thresholds
        for name, value in (("warn", th.warn), ("alarm", th.alarm)):
            if value is None:
                continue
            if self.sign >= 0:
                out[f"{name} +"] = mean + value * scale
            if self.sign <= 0:
                out[f"{name} -"] = mean - value * scale
        return out

    def _make(self, ts_ns: int, j: int, kind: str, mean: float, base: float) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        delta = mean - base
        rate = self.trend.at(j)
        avg = f"{span_words(self.window.span, self.window.max_samples)} average"
        where = "above" if delta >= 0 else "below"
        baseline = f"{fmt(base, unit)} ({self.base.describe(self._j)})"
        since = self._since(ts_ns)
        if kind == CLEARED:
            message = (
                f"{ch.label} is back to normal: {fmt(mean, unit)} ({avg}), "
                f"{fmt(abs(delta), unit)} from its baseline {baseline}; the alert that began "
                f"{when(since)} lasted {duration_words((ts_ns - since) / 1e9)}."
            )
        else:
            verb = "has risen to" if delta >= 0 else "has fallen to"
            if kind == ESCALATED:
                verb = "is now at"
            trend = ""
            if math.isfinite(rate) and rate * delta > 0.0:  # quote a trend that agrees
                trend = f", still {'rising' if rate > 0 else 'falling'} {fmt_rate(abs(rate), unit)}"
            message = (
                f"{self._head(kind)}{ch.label} {verb} {fmt(mean, unit)} ({avg}), "
                f"{fmt(abs(delta), unit)} {where} its baseline {baseline}, "
                f"since {when(since)}{trend}."
            )
        return self._event(
            ts_ns, kind, value=mean, baseline=base, delta=delta, rate=rate, message=message
        )


class Slope(_Windowed):
    """Least-squares slope over a window, in units (or baseline sigmas) per hour."""

    name = "slope"
    needs_slope = True

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading. Publishes the trend on the channel."""
        got = self._extend(t, x)
        if got is None:
            return []
        stats, begin = got
        assert stats.slope is not None
        per_h = 3600.0 * stats.slope
        per_h[:begin] = np.nan
        self.trend.publish(per_h)
        scores = _directed(per_h, self.sign) * self._scale(bstd)
        mean = stats.mean

        def event(j: int, kind: str) -> AlertEvent:
            return self._make(int(ns[j]), kind, float(per_h[j]), float(mean[j]))

        return run_states(self.state, t, scores, begin, event)

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        if not self._add(t, x):
            return None
        per_h = 3600.0 * w.slope()
        if math.isnan(per_h):
            return None
        self.trend.per_h = per_h
        score = (abs(per_h) if self.sign == 0 else per_h * self.sign) * self._scale_one(bstd)
        if math.isnan(score) or self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        return None if kind is None else self._make(ns, kind, per_h, w.mean())

    def _make(self, ts_ns: int, kind: str, per_h: float, now: float) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        over = span_words(self.window.span, self.window.max_samples)
        since = self._since(ts_ns)
        if kind == CLEARED:
            message = (
                f"{ch.label} has levelled off: trend {fmt_rate(per_h, unit)} over {over}, "
                f"now {fmt(now, unit)}; the trend alert that began {when(since)} lasted "
                f"{duration_words((ts_ns - since) / 1e9)}."
            )
        else:
            message = (
                f"{self._head(kind)}{ch.label} is {'rising' if per_h > 0 else 'falling'} "
                f"{fmt_rate(abs(per_h), unit)} (trend over {over}), now {fmt(now, unit)}, "
                f"since {when(since)}."
            )
        return self._event(
            ts_ns, kind, value=now, baseline=math.nan, delta=math.nan, rate=per_h, message=message
        )


class VarianceChange(_Windowed):
    """Rolling standard deviation against the baseline's (stitching consistency)."""

    name = "variance_change"

    def _score(self, std: np.ndarray, bstd: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bstd > 0, std / bstd, np.nan)
            if self.sign > 0:
                return np.asarray(ratio)
            inverse = np.where(ratio > 0, 1.0 / ratio, np.inf)
            return np.asarray(inverse if self.sign < 0 else np.maximum(ratio, inverse))

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading."""
        got = self._extend(t, x)
        if got is None:
            return []
        stats, begin = got
        std = np.sqrt(stats.var)
        scores = self._score(std, bstd)

        def event(j: int, kind: str) -> AlertEvent:
            self._j = j
            return self._make(int(ns[j]), kind, float(std[j]), float(bstd[j]))

        try:
            return run_states(self.state, t, scores, begin, event)
        finally:
            self._j = -1

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        if not self._add(t, x):
            return None
        std = w.std()
        score = float(self._score(np.array([std]), np.array([bstd]))[0])
        if math.isnan(score) or self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        return None if kind is None else self._make(ns, kind, std, bstd)

    def _make(self, ts_ns: int, kind: str, std: float, bstd: float) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        over = span_words(self.window.span, self.window.max_samples)
        ratio = std / bstd if bstd > 0 else math.nan
        if kind == CLEARED:
            message = (
                f"{ch.label} is steady again: spread ±{fmt(std, unit)} over {over}, "
                f"against ±{fmt(bstd, unit)} normally."
            )
        else:
            word = "more erratic" if ratio >= 1 else "unusually uniform"
            message = (
                f"{self._head(kind)}{ch.label} is {word}: spread ±{fmt(std, unit)} over {over}, "
                f"{ratio:.1f}x its baseline's ±{fmt(bstd, unit)} ({self.base.describe(self._j)}), "
                f"since {when(self._since(ts_ns))}."
            )
        return self._event(
            ts_ns,
            kind,
            value=std,
            baseline=bstd,
            delta=std - bstd,
            rate=math.nan,
            message=message,
        )


class _Warmup:
    """A per-reading chart judges a reading only once ``min_samples`` readings were scored
    against a settled baseline; its statistic accumulates from the first."""

    __slots__ = ("left", "min_samples", "seen")

    def __init__(self, min_samples: int) -> None:
        self.min_samples = min_samples
        self.left = max(min_samples - 1, 0)
        self.seen = False  # a reading reached the chart (against a settled baseline)

    @property
    def done(self) -> bool:
        """Whether the chart judges its readings now."""
        return self.seen and self.left == 0

    def take(self, n: int) -> int:
        """How many of the next ``n`` readings are still warming up (not judged)."""
        k = min(self.left, n)
        self.left -= k
        return k

    def passed(self) -> bool:
        """Count one reading; whether it is judged."""
        if self.left:
            self.left -= 1
            return False
        return True


class Cusum(_Base):
    """Two-sided tabular CUSUM of readings standardised by the baseline (k and h in sigmas)."""

    name = "cusum"
    needs_settled = True

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        k: float = 0.5,
        min_samples: int = 10,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        self.k = k
        self.warmup = _Warmup(min_samples)
        self.hi = 0.0  # S+
        self.lo = 0.0  # S-
        self.hi_n = 0  # readings since S+ was last zero (for the shift estimate)
        self.lo_n = 0

    @property
    def ready(self) -> bool:
        """Whether it judges readings (a settled baseline, min_samples seen)."""
        return self.warmup.done

    def needs(self) -> str:
        """What it waits for, in words."""
        return f"a locked baseline and {self.warmup.min_samples} readings against it"

    @staticmethod
    def _lindley(a: np.ndarray, start: float) -> np.ndarray:
        """S_j = max(0, S_{j-1} + a_j) for all j at once."""
        c = np.cumsum(a)
        out: np.ndarray = c - np.minimum(np.minimum.accumulate(c), -start)
        return out

    @staticmethod
    def _since_zero(s: np.ndarray, start_n: int) -> np.ndarray:
        idx = np.arange(len(s))
        last_zero = np.maximum.accumulate(np.where(s <= 0.0, idx, -1))
        out: np.ndarray = np.where(last_zero >= 0, idx - last_zero, start_n + idx + 1)
        return out

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings, all judged against a settled baseline; O(1) per reading."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (x - bmean) / (bstd * self.base.inflation)
        known = np.isfinite(z) & (bstd > 0)
        begin = _first_true(known)
        if begin >= len(t):
            return []
        z = np.clip(np.where(known, z, 0.0)[begin:], -CLIP_SIGMA, CLIP_SIGMA)
        hi = self._lindley(z - self.k, self.hi)
        lo = self._lindley(-z - self.k, self.lo)
        self.warmup.seen = True
        hi_n = self._since_zero(hi, self.hi_n)
        lo_n = self._since_zero(lo, self.lo_n)
        self.hi, self.lo = float(hi[-1]), float(lo[-1])
        self.hi_n, self.lo_n = int(hi_n[-1]), int(lo_n[-1])
        sign = self.sign
        score = hi if sign > 0 else lo if sign < 0 else np.maximum(hi, lo)
        scores = np.full(len(t), np.nan)
        scores[begin:] = score
        scores[begin : begin + self.warmup.take(len(score))] = np.nan

        def event(j: int, kind: str) -> AlertEvent:
            i = j - begin
            up = sign > 0 or (sign == 0 and hi[i] >= lo[i])
            s, n = (float(hi[i]), int(hi_n[i])) if up else (float(lo[i]), int(lo_n[i]))
            self._j = j
            return self._make(int(ns[j]), kind, s, n, up, float(bmean[j]), float(bstd[j]))

        try:
            return run_states(self.state, t, scores, begin, event)
        finally:
            self._j = -1

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        if not bstd > 0 or math.isnan(bmean):
            return None
        self.warmup.seen = True
        z = min(max((x - bmean) / (bstd * self.base.inflation), -CLIP_SIGMA), CLIP_SIGMA)
        self.hi = max(0.0, self.hi + z - self.k)
        self.lo = max(0.0, self.lo - z - self.k)
        self.hi_n = 0 if self.hi <= 0.0 else self.hi_n + 1
        self.lo_n = 0 if self.lo <= 0.0 else self.lo_n + 1
        sign = self.sign
        score = self.hi if sign > 0 else self.lo if sign < 0 else max(self.hi, self.lo)
        if not self.warmup.passed() or self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        if kind is None:
            return None
        up = sign > 0 or (sign == 0 and self.hi >= self.lo)
        s, n = (self.hi, self.hi_n) if up else (self.lo, self.lo_n)
        return self._make(ns, kind, s, n, up, bmean, bstd)

    def _make(
        self, ts_ns: int, kind: str, s: float, n: int, up: bool, bmean: float, bstd: float
    ) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        # The classic estimate of the shifted mean: mu0 ± sigma·(k + S/N).
        shift = bstd * (self.k + s / max(n, 1))
        level = bmean + shift if up else bmean - shift
        if kind == CLEARED:
            message = (
                f"{ch.label} is back on its baseline {fmt(bmean, unit)} "
                f"({self.base.describe(self._j)}): the small persistent shift that began "
                f"{when(self._since(ts_ns))} has gone."
            )
        else:
            message = (
                f"{self._head(kind)}{ch.label} has shifted {'up' if up else 'down'} by about "
                f"{fmt(shift, unit)} to about {fmt(level, unit)} over the last {n} readings, "
                f"against its baseline {fmt(bmean, unit)} ({self.base.describe(self._j)}); "
                f"since {when(self._since(ts_ns))} (CUSUM statistic {s:.1f}, "
                f"alert level {self.state.warn:g})."
            )
        return self._event(
            ts_ns,
            kind,
            value=level,
            baseline=bmean,
            delta=level - bmean,
            rate=self.trend.at(self._j),
            message=message,
        )


class Ewma(_Base):
    """EWMA control chart: the smoothed reading against baseline ± L·σ·sqrt(λ/(2−λ))."""

    name = "ewma"
    needs_settled = True

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        lam: float = 0.05,
        min_samples: int = 10,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        self.lam = lam
        self.warmup = _Warmup(min_samples)
        self.factor = math.sqrt(lam / (2.0 - lam))
        self.z = math.nan

    @property
    def ready(self) -> bool:
        """Whether it judges readings (a settled baseline, min_samples seen)."""
        return self.warmup.done

    def needs(self) -> str:
        """What it waits for, in words."""
        return f"a locked baseline and {self.warmup.min_samples} readings against it"

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading (a first-order filter)."""
        known = np.isfinite(bmean) & (bstd > 0)
        begin = _first_true(known)
        if begin >= len(t):
            return []
        self.warmup.seen = True
        lam = self.lam
        lim = CLIP_SIGMA * bstd[begin:]
        xs = np.clip(x[begin:], bmean[begin:] - lim, bmean[begin:] + lim)
        start = self.z if math.isfinite(self.z) else float(bmean[begin])
        z = ewma(xs, lam, start)
        self.z = float(z[-1])
        mean = bmean[begin:]
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = bstd[begin:] * self.factor * self.base.inflation
            score = _directed(z - mean, self.sign) / spread
        scores = np.full(len(t), np.nan)
        scores[begin:] = score
        scores[begin : begin + self.warmup.take(len(score))] = np.nan

        def event(j: int, kind: str) -> AlertEvent:
            i = j - begin
            self._j = j
            return self._make(int(ns[j]), kind, float(z[i]), float(bmean[j]), float(bstd[j]))

        try:
            return run_states(self.state, t, scores, begin, event)
        finally:
            self._j = -1

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        if not bstd > 0 or math.isnan(bmean):
            return None
        self.warmup.seen = True
        prev = self.z if math.isfinite(self.z) else bmean
        lim = CLIP_SIGMA * bstd
        z = self.lam * min(max(x, bmean - lim), bmean + lim) + (1.0 - self.lam) * prev
        self.z = z
        delta = z - bmean
        spread = bstd * self.factor * self.base.inflation
        score = (abs(delta) if self.sign == 0 else delta * self.sign) / spread
        if not self.warmup.passed() or math.isnan(score) or self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        return None if kind is None else self._make(ns, kind, z, bmean, bstd)

    def _make(self, ts_ns: int, kind: str, z: float, bmean: float, bstd: float) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        delta = z - bmean
        if kind == CLEARED:
            message = (
                f"{ch.label} is back within its control limits: smoothed {fmt(z, unit)} "
                f"against its baseline {fmt(bmean, unit)} ({self.base.describe(self._j)})."
            )
        else:
            message = (
                f"{self._head(kind)}{ch.label} is drifting {'up' if delta >= 0 else 'down'}: "
                f"smoothed value {fmt(z, unit)}, {fmt(abs(delta), unit)} "
                f"{'above' if delta >= 0 else 'below'} its baseline {fmt(bmean, unit)} "
                f"({self.base.describe(self._j)}), since {when(self._since(ts_ns))}."
            )
        return self._event(
            ts_ns,
            kind,
            value=z,
            baseline=bmean,
            delta=delta,
            rate=self.trend.at(self._j),
            message=message,
        )


class Stuck(_Base):
    """A flat line: no change at all (spread at or below ``tolerance``) over a whole window."""

    name = "stuck"
    raw = True

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        span: float,
        tolerance: float = 0.0,
        max_samples: int = 100_000,
        min_samples: int = 10,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        self.window = Window(span, max_samples)
        self.tolerance = tolerance
        self.min_samples = min_samples
        self._min_cover = WINDOW_COVER * span if math.isfinite(span) else 0.0

    def _flat(
        self, n: np.ndarray, cover: np.ndarray, var: np.ndarray, mean: np.ndarray
    ) -> np.ndarray:
        # Running sums leave rounding dust on a truly flat line: allow a relative 1e-6.
        tol = np.maximum(self.tolerance, 1e-6 * np.maximum(np.abs(mean), 1.0))
        flat = (n >= self.min_samples) & (cover >= self._min_cover) & (np.sqrt(var) <= tol)
        return np.asarray(flat, dtype=np.float64)

    def restart(self) -> None:
        """The clock went back: the window starts afresh."""
        super().restart()
        self.window.clear()

    @property
    def ready(self) -> bool:
        """Whether its window has filled enough to be judged."""
        w = self.window
        return w.n >= self.min_samples and w.covered >= self._min_cover

    def needs(self) -> str:
        """What its window waits for, in words."""
        span = span_words(self.window.span, self.window.max_samples)
        return f"{self.min_samples} readings covering {WINDOW_COVER:.0%} of its {span} window"

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading."""
        stats = self.window.extend(t, x)
        var = np.nan_to_num(stats.var, nan=np.inf)
        scores = self._flat(stats.n, t - stats.oldest, var, stats.mean)
        mean = stats.mean
        covered = t - stats.oldest

        def event(j: int, kind: str) -> AlertEvent:
            return self._make(int(ns[j]), kind, float(mean[j]), float(covered[j]))

        return run_states(self.state, t, scores, 0, event)

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        w.add(t, x)
        var = w.variance()
        var = math.inf if math.isnan(var) else var
        mean = w.mean()
        score = float(
            self._flat(
                np.array([w.n]), np.array([t - w.oldest]), np.array([var]), np.array([mean])
            )[0]
        )
        if self._fast_quiet(score):
            return None
        kind = self.state.observe(t, score)
        return None if kind is None else self._make(ns, kind, mean, t - w.oldest)

    def _make(self, ts_ns: int, kind: str, value: float, covered: float) -> AlertEvent:
        ch = self.channel
        if kind == CLEARED:
            message = f"{ch.label} is changing again after being stuck at {fmt(value, ch.unit)}."
        else:
            message = (
                f"{self._head(kind)}{ch.label} has not changed from {fmt(value, ch.unit)} for "
                f"{duration_words(covered)}: the sensor may be frozen or disconnected."
            )
        return self._event(
            ts_ns,
            kind,
            value=value,
            baseline=math.nan,
            delta=math.nan,
            rate=math.nan,
            message=message,
        )


class InvalidRate(_Base):
    """The share of out-of-range readings over a window (the pipeline marks them as NaN)."""

    name = "invalid_rate"
    sees_invalid = True
    raw = True

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        span: float,
        max_samples: int = 100_000,
        min_samples: int = 20,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        self.window = Window(span, max_samples)
        self.min_samples = min_samples

    def restart(self) -> None:
        """The clock went back: the window starts afresh."""
        super().restart()
        self.window.clear()

    @property
    def ready(self) -> bool:
        """Whether its window holds min_samples readings."""
        return self.window.n >= self.min_samples

    def needs(self) -> str:
        """What its window waits for, in words."""
        return f"{self.min_samples} readings in its window"

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch in which invalid readings are NaN; O(1) per reading."""
        stats = self.window.extend(t, np.isnan(x).astype(np.float64))
        share = np.where(stats.n >= self.min_samples, stats.mean, np.nan)

        def event(j: int, kind: str) -> AlertEvent:
            return self._make(int(ns[j]), kind, float(share[j]), int(stats.n[j]))

        return run_states(self.state, t, share, 0, event)

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading (NaN: an invalid one); the scalar twin of update_many."""
        w = self.window
        w.add(t, 1.0 if math.isnan(x) else 0.0)
        if w.n < self.min_samples:
            return None
        share = w.mean()
        if self._fast_quiet(share):
            return None
        kind = self.state.observe(t, share)
        return None if kind is None else self._make(ns, kind, share, w.n)

    def _make(self, ts_ns: int, kind: str, share: float, n: int) -> AlertEvent:
        ch = self.channel
        over = span_words(self.window.span, self.window.max_samples)
        if kind == CLEARED:
            message = f"{ch.label}: out-of-range readings are back to {share:.0%} over {over}."
        else:
            message = (
                f"{self._head(kind)}{ch.label}: {share:.0%} of the last {n} readings "
                f"({over}) were out of the sensor's physical range and were kept out of the "
                "data; check the sensor, its wiring and its calibration."
            )
        return self._event(
            ts_ns,
            kind,
            value=share,
            baseline=math.nan,
            delta=math.nan,
            rate=math.nan,
            message=message,
        )


class Stale:
    """No reading for ``max_gap``: raised at the moment the gap passed max_gap, cleared by the
    next reading. Live, ``check(now)`` raises while the gap lasts; replaying the same readings
    raises the same event afterwards (same timestamp), so replay equals live."""

    name = "stale"
    sees_invalid = True  # an out-of-range reading still shows the sensor is talking
    raw = True
    needs_settled = False
    ready = True

    def needs(self) -> str:
        """Nothing: it watches from the first reading."""
        return ""

    def __init__(self, channel: Channel, base: ChannelBaseline, max_gap: float) -> None:
        self.channel = channel
        self.base = base
        self.max_gap = max_gap
        self.last: float | None = None
        self.last_ns = 0
        self.raised = False

    def restart(self) -> None:
        """The clock went back: the next reading starts the watch again."""
        self.last = None

    def skip(self, step_ns: int) -> None:
        """The clock stepped forward: the time skipped is not silence."""
        if self.last is not None:
            self.last += step_ns / 1e9
            self.last_ns += step_ns

    def check(self, now: float) -> AlertEvent | None:
        """Called on a timer with the agent's clock: raise if the channel has gone quiet."""
        if self.raised or self.last is None or now - self.last <= self.max_gap:
            return None
        self.raised = True
        return self._raise()

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch; only gaps longer than max_gap cost anything."""
        events: list[AlertEvent] = []
        prev = np.concatenate(([self.last if self.last is not None else t[0]], t[:-1]))
        gaps = np.flatnonzero(t - prev > self.max_gap)
        for j in gaps.tolist():
            self.last = float(prev[j])
            self.last_ns = int(ns[j - 1]) if j > 0 else self.last_ns
            events += self._gap_closed(float(t[j]), int(ns[j]))
        if self.raised and not gaps.size:
            events += self._gap_closed(float(t[0]), int(ns[0]))
        self.last = float(t[-1])
        self.last_ns = int(ns[-1])
        return events

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> list[AlertEvent] | None:
        """Feed one reading; the scalar twin of update_many."""
        events = None
        if self.last is not None and (t - self.last > self.max_gap or self.raised):
            events = self._gap_closed(t, ns)
        self.last = t
        self.last_ns = ns
        return events

    def _gap_closed(self, t: float, ns: int) -> list[AlertEvent]:
        events = []
        if not self.raised:
            events.append(self._raise())
        self.raised = False
        gap = t - (self.last if self.last is not None else t)
        events.append(
            self._alert(
                ns,
                CLEARED,
                Level.OK,
                f"{self.channel.label} is reporting again after {duration_words(gap)} "
                "without readings.",
            )
        )
        return events

    def _raise(self) -> AlertEvent:
        assert self.last is not None
        ts_ns = self.last_ns + int(self.max_gap * 1e9)
        ch = self.channel
        message = (
            f"WARN: {ch.label} has sent no reading for {duration_words(self.max_gap)} "
            f"(last at {when(self.last_ns)}): the sensor or its link may be down."
        )
        if ch.affects:
            message += f" Meanwhile {ch.affects} goes unwatched."
        return self._alert(ts_ns, RAISED, Level.WARN, message)

    def _alert(self, ts_ns: int, kind: str, level: Level, message: str) -> AlertEvent:
        return AlertEvent(
            ts_ns=ts_ns,
            channel=self.channel,
            detector=self.name,
            transition=kind,
            level=level,
            value=math.nan,
            baseline=math.nan,
            delta=math.nan,
            rate_per_h=math.nan,
            since_ns=self.last_ns + int(self.max_gap * 1e9),
            baseline_note="",
            message=message,
        )


@dataclass(frozen=True, slots=True)
class Band:
    """A spec band in the channel's units (None: that limit is not set)."""

    low_alarm: float | None = None
    low_warn: float | None = None
    high_warn: float | None = None
    high_alarm: float | None = None

    def scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(above, below): < 1 inside, >= 1 past the warn limit, >= 2 past the alarm limit.

        Between the warn and alarm limits the score runs linearly from 1 to 2, so one deadband
        in units is ``deadband / (alarm - warn)`` in score units (``spans``).
        """
        nan = np.full(len(x), np.nan)
        above = nan if self.high_warn is None else _past(x - self.high_warn, self._span(True))
        below = nan if self.low_warn is None else _past(self.low_warn - x, self._span(False))
        return above, below

    def _span(self, high: bool) -> float:
        warn, alarm = (self.high_warn, self.high_alarm) if high else (self.low_warn, self.low_alarm)
        if warn is None or alarm is None:
            return 1.0
        return abs(alarm - warn)

    def spans(self) -> tuple[float, float]:
        """Units per score unit above and below."""
        return self._span(True), self._span(False)


def _past(distance: np.ndarray, span: float) -> np.ndarray:
    # Continuous through the limit (1.0 there), so a deadband inside it is a margin below 1.
    out: np.ndarray = 1.0 + distance / span
    return out


class Limit:
    """A plain spec band (45–55 %RH): warn or alarm when a reading leaves it, after ``hold``,
    and clear once it is back inside by ``deadband``. The band can depend on the production
    context (the approved sample's window for a SKU or lot): ``set_context`` picks it."""

    name = "limit"
    raw = True
    needs_settled = False
    ready = True

    def needs(self) -> str:
        """Nothing: it judges every reading."""
        return ""

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        band: Band,
        by_context: dict[str, dict[str, Band]],
        thresholds: Thresholds,
        deadband: float,
    ) -> None:
        self.channel = channel
        self.base = base
        self.default = band
        self.by_context = by_context
        self.thresholds = thresholds
        self.deadband = deadband
        self.band = band
        self.why = ""  # which context chose the band, for the message
        self.high = self._state(True)
        self.low = self._state(False)

    def _state(self, high: bool) -> AlertState:
        span = self.band.spans()[0 if high else 1]
        th = self.thresholds
        alarm = 2.0 if (self.band.high_alarm if high else self.band.low_alarm) is not None else None
        return AlertState(
            1.0, alarm, th.hold, th.clear_hold, self.deadband / span, th.repeat,
            th.flap_count, th.flap_window,
        )  # fmt: skip

    def set_context(self, context: Mapping[str, str]) -> None:
        """Use the band configured for this context (a SKU, a lot), else the channel's."""
        band, why = self.default, ""
        for key, bands in self.by_context.items():
            value = context.get(key)
            if value is not None and value in bands:
                band, why = bands[value], f"{key} {value}"
                break
        if band != self.band:
            self.band, self.why = band, why
            for high, state in ((True, self.high), (False, self.low)):
                span = band.spans()[0 if high else 1]
                state.margin = self.deadband / span
                limit = band.high_alarm if high else band.low_alarm
                state.alarm = 2.0 if limit is not None else math.inf

    def restart(self) -> None:
        """The clock went back: forget holds measured on the old time line."""
        self.high.rewind()
        self.low.rewind()

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings."""
        above, below = self.band.scores(x)
        events: list[AlertEvent] = []
        for high, state, scores in ((True, self.high, above), (False, self.low, below)):

            def event(
                j: int, kind: str, high: bool = high, state: AlertState = state
            ) -> AlertEvent:
                return self._make(int(ns[j]), kind, float(x[j]), high, state)

            events += run_states(state, t, scores, 0, event)
        if len(events) > 1:
            events.sort(key=lambda e: e.ts_ns)
        return events

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> list[AlertEvent] | None:
        """Feed one reading; the scalar twin of update_many."""
        above, below = self.band.scores(np.array([x]))
        events = []
        for high, state, score in ((True, self.high, above[0]), (False, self.low, below[0])):
            if math.isnan(score):
                continue
            kind = state.observe(t, float(score))
            if kind is not None:
                events.append(self._make(ns, kind, x, high, state))
        return events or None

    def _maker(
        self, ns: np.ndarray, x: np.ndarray, high: bool, state: AlertState
    ) -> Callable[[int, str], AlertEvent]:
        def event(j: int, kind: str) -> AlertEvent:
            return self._make(int(ns[j]), kind, float(x[j]), high, state)

        return event

    def _make(self, ts_ns: int, kind: str, x: float, high: bool, state: AlertState) -> AlertEvent:
        ch = self.channel
        unit = ch.unit
        band = self.band
        limit = band.high_warn if high else band.low_warn
        if state.level == Level.ALARM:
            limit = band.high_alarm if high else band.low_alarm
        assert limit is not None
        where = "above its upper" if high else "below its lower"
        which = f" for {self.why}" if self.why else ""
        grade = "alarm" if state.level == Level.ALARM else "warning"
        since = state.since if state.since is not None else ts_ns / 1e9
        if kind in (FLAPPING, SETTLED):
            what = "upper" if high else "lower"
            message = (
                f"{ch.label}: the {what} limit alert keeps coming and going; further changes "
                "are held back until it settles. Check the sensor and the limits."
                if kind == FLAPPING
                else f"{ch.label}: the {what} limit alert has settled, now {state.level.label}."
            )
        elif kind == CLEARED:
            message = (
                f"{ch.label} is back within its limits{which}: {fmt(x, unit)}; it was out since "
                f"{when(int(since * 1e9))}."
            )
        else:
            message = (
                f"{state.level.label.upper()}: {ch.label} has been {where} {grade} limit of "
                f"{fmt(limit, unit)}{which} since {when(int(since * 1e9))} (now {fmt(x, unit)})."
            )
            if ch.affects:
                message += f" This affects {ch.affects}."
        return AlertEvent(
            ts_ns=ts_ns,
            channel=ch,
            detector=self.name,
            transition=kind,
            level=state.level,
            value=x,
            baseline=limit,
            delta=x - limit,
            rate_per_h=math.nan,
            since_ns=int(since * 1e9),
            baseline_note=f"{'upper' if high else 'lower'} {grade} limit{which}",
            message=message,
        )
