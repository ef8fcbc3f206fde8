"""Drift detectors: O(1) per sample over a Window, driven by the readings' own timestamps.

A detector turns each reading into a score in the channel's units (how far the rolling mean is
from the baseline, or how steep the trend is), and its AlertState turns scores into events.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.alerts import (
    CLEARED,
    ESCALATED,
    AlertEvent,
    AlertState,
    Level,
    duration_words,
    fmt,
    fmt_rate,
    when,
)
from agent.drift.baselines import Baseline
from agent.drift.ring import Window
from agent.reading import Channel

_DIRECTIONS = {"up": 1, "down": -1, "both": 0}


class Detector(Protocol):
    """What the engine needs of a detector."""

    name: str

    def update_many(self, t: np.ndarray, x: np.ndarray, ns: np.ndarray) -> list[AlertEvent]:
        """Feed a batch of readings (times in seconds and in ns, non-decreasing).

        Returns the alert events the batch caused, in order. The result is the same however
        the readings are split into batches.
        """
        ...

    def update_one(self, t: float, x: float, ns: int) -> AlertEvent | None:
        """Feed one reading: the scalar path for small batches (same result, no NumPy calls)."""
        ...


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
            # falls due), so jump to the next such sample in one vectorised step.
            ahead = np.flatnonzero(_interesting(state, t[j:], scores[j:]))
            if ahead.size == 0:
                break
            j += int(ahead[0])
        score = float(scores[j])
        if not math.isnan(score):  # NaN: not evaluable (too few samples, no time spread)
            kind = state.observe(float(t[j]), score)
            if kind is not None:
                events.append(make_event(j, kind))
        j += 1
    return events


def _interesting(state: AlertState, t: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Where a steady state machine could change: a score crossing a boundary, a repeat due."""
    level = state.level
    if level == Level.OK:
        return np.asarray(scores >= state.warn)
    up = state.alarm if level == Level.WARN else math.inf
    down = (state.warn if level == Level.WARN else state.alarm) - state.margin
    hit = (scores >= up) | (scores <= down)
    if state.repeat is not None:
        hit |= t - state.last_emit >= state.repeat
    return np.asarray(hit)


def first_ready(n: np.ndarray, t: np.ndarray, oldest: np.ndarray, begin: int, min_samples: int,
                min_cover: float) -> int:  # fmt: skip
    """Index of the first sample from ``begin`` whose window is full enough to judge."""
    ok = (n[begin:] >= min_samples) & (t[begin:] - oldest[begin:] >= min_cover)
    hits = np.flatnonzero(ok)
    return begin + int(hits[0]) if hits.size else len(n)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Alert thresholds and timing shared by the detectors (scores in the channel's units)."""

    warn: float
    alarm: float | None = None
    direction: str = "both"
    hold: float = 0.0
    clear_hold: float | None = None
    hysteresis: float | None = None
    repeat: float | None = None

    def state(self) -> AlertState:
        """A fresh state machine with these thresholds."""
        return AlertState(
            self.warn, self.alarm, self.hold, self.clear_hold, self.hysteresis, self.repeat
        )


def span_words(span: float, samples: int) -> str:
    """How a window reads in an alert: '24 h', '3 d 0 h', or 'last 500 readings'."""
    if math.isfinite(span):
        if span <= 2 * 86400 and span % 3600 == 0:
            return f"{span / 3600:.0f} h"
        words = duration_words(span)
        return words.removesuffix(" 0 h").removesuffix(" 0 min")
    return f"last {samples} readings"


class BaselineShift:
    """Rolling-window mean against a baseline (configured, learned once, or captured)."""

    name = "baseline_shift"

    def __init__(
        self,
        channel: Channel,
        thresholds: Thresholds,
        *,
        span: float,
        max_samples: int = 100_000,
        min_samples: int = 10,
        baseline: Baseline | None = None,
        learn: float = 86400.0,
        on_learned: Callable[[Baseline], None] | None = None,
    ) -> None:
        self.channel = channel
        self.thresholds = thresholds
        self.window = Window(span, max_samples)
        self.min_samples = min_samples
        self.state = thresholds.state()
        self.sign = _DIRECTIONS[thresholds.direction]
        self.baseline = baseline
        self.base = baseline.mean if baseline is not None else math.nan
        self.learn = learn
        self.on_learned = on_learned
        self._ready = False
        self._min_cover = 0.8 * span if math.isfinite(span) else 0.0
        # Welford accumulator for learning the baseline from the first `learn` seconds.
        self._ln = 0
        self._lmean = 0.0
        self._lm2 = 0.0
        self._lstart = math.nan

    def update_many(self, t: np.ndarray, x: np.ndarray, ns: np.ndarray) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading."""
        stats = self.window.extend(t, x)
        begin = 0
        if self.baseline is None:
            begin = self._learn_many(t, x)
            if begin >= len(t):
                return []
        if not self._ready:
            begin = first_ready(stats.n, t, stats.oldest, begin, self.min_samples, self._min_cover)
            if begin >= len(t):
                return []
            self._ready = True
        mean = stats.mean
        delta = mean - self.base
        sign = self.sign
        scores = np.abs(delta) if sign == 0 else delta * sign

        def event(j: int, kind: str) -> AlertEvent:
            return self._event(int(ns[j]), j, kind, float(mean[j]), float(delta[j]))

        return run_states(self.state, t, scores, begin, event)

    def update_one(self, t: float, x: float, ns: int) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        w.add(t, x)
        if self.baseline is None:
            self._learn_one(t, x)
            return None
        if not self._ready:
            if w.n < self.min_samples or t - w.oldest < self._min_cover:
                return None
            self._ready = True
        mean = w.k + w.sx / w.n
        delta = mean - self.base
        sign = self.sign
        score = abs(delta) if sign == 0 else delta * sign
        state = self.state
        if state.level == 0 and score < state.warn and state.pending_since is None:
            return None
        kind = state.observe(t, score)
        if kind is None:
            return None
        return self._event(ns, -1, kind, mean, delta)

    def _learn_one(self, t: float, x: float) -> None:
        if self._ln == 0:
            self._lstart = t
        self._ln += 1
        d = x - self._lmean
        self._lmean += d / self._ln
        self._lm2 += d * (x - self._lmean)
        if t - self._lstart >= self.learn and self._ln >= self.min_samples:
            self._freeze(t)

    def _freeze(self, t_end: float) -> None:
        n = self._ln
        std = math.sqrt(self._lm2 / (n - 1)) if n > 1 else 0.0
        learned = Baseline(
            mean=self._lmean,
            std=std,
            n=n,
            start_ns=int(self._lstart * 1e9),
            end_ns=int(t_end * 1e9),
            source="learned",
        )
        self.set_baseline(learned)
        if self.on_learned is not None:
            self.on_learned(learned)

    def _learn_many(self, t: np.ndarray, x: np.ndarray) -> int:
        """Learn from the batch until the baseline is complete; the index evaluation starts at."""
        m = len(t)
        if self._ln == 0:
            self._lstart = float(t[0])
        counts = self._ln + np.arange(1, m + 1)
        done = np.flatnonzero((t - self._lstart >= self.learn) & (counts >= self.min_samples))
        upto = int(done[0]) + 1 if done.size else m
        part = x[:upto]
        nb = len(part)
        mb = float(part.mean())
        m2b = float(((part - mb) ** 2).sum())
        n = self._ln + nb
        d = mb - self._lmean
        self._lm2 += m2b + d * d * self._ln * nb / n
        self._lmean += d * nb / n
        self._ln = n
        if not done.size:
            return m
        self._freeze(float(t[upto - 1]))
        return upto

    def set_baseline(self, baseline: Baseline) -> None:
        """Compare against this baseline from now on."""
        self.baseline = baseline
        self.base = baseline.mean

    def _event(self, ts_ns: int, j: int, kind: str, mean: float, delta: float) -> AlertEvent:
        ch = self.channel
        state = self.state
        assert self.baseline is not None
        unit = ch.unit
        t = ts_ns / 1e9
        since_ns = int(state.since * 1e9) if state.since is not None else ts_ns
        rate = ch.rate_at(j)
        avg = f"{span_words(self.window.span, self.window.max_samples)} average"
        where = "above" if delta >= 0 else "below"
        base = f"{fmt(self.base, unit)} ({self.baseline.describe()})"
        if self.baseline.source == "configured":
            base = fmt(self.base, unit)
        if kind == CLEARED:
            message = (
                f"{ch.label} is back to normal: {fmt(mean, unit)} ({avg}), "
                f"{fmt(abs(delta), unit)} from its baseline {base}; the alert that began "
                f"{when(since_ns)} lasted {duration_words(t - since_ns / 1e9)}."
            )
        else:
            verb = "has risen to" if delta >= 0 else "has fallen to"
            if kind == ESCALATED:
                verb = "is now at" if delta >= 0 else "is now down at"
            trend = ""
            if math.isfinite(rate) and rate != 0.0:
                direction = "rising" if rate > 0 else "falling"
                trend = f", still {direction} {fmt_rate(abs(rate), unit)}"
            message = (
                f"{state.level.label.upper()}: {ch.label} {verb} {fmt(mean, unit)} ({avg}), "
                f"{fmt(abs(delta), unit)} {where} its baseline {base}, "
                f"since {when(since_ns)}{trend}."
            )
            if ch.affects:
                message += f" This affects {ch.affects}."
        return AlertEvent(
            ts_ns=ts_ns,
            channel=ch,
            detector=self.name,
            kind=kind,
            level=state.level,
            value=mean,
            baseline=self.base,
            delta=delta,
            rate_per_h=rate,
            since_ns=since_ns,
            baseline_note=self.baseline.describe(),
            message=message,
        )


class Slope:
    """Least-squares slope over a window, scored in the channel's units per hour."""

    name = "slope"

    def __init__(
        self,
        channel: Channel,
        thresholds: Thresholds,
        *,
        span: float,
        max_samples: int = 100_000,
        min_samples: int = 10,
    ) -> None:
        self.channel = channel
        self.thresholds = thresholds
        self.window = Window(span, max_samples, trend=True)
        self.min_samples = min_samples
        self.state = thresholds.state()
        self.sign = _DIRECTIONS[thresholds.direction]
        self._ready = False
        self._min_cover = 0.8 * span if math.isfinite(span) else 0.0

    def update_many(self, t: np.ndarray, x: np.ndarray, ns: np.ndarray) -> list[AlertEvent]:
        """Feed a batch of readings; O(1) per reading. Publishes the trend on the channel."""
        stats = self.window.extend(t, x)
        begin = 0
        if not self._ready:
            begin = first_ready(stats.n, t, stats.oldest, 0, self.min_samples, self._min_cover)
            if begin >= len(t):
                return []
            self._ready = True
        assert stats.slope is not None
        per_h = 3600.0 * stats.slope
        per_h[:begin] = np.nan
        self.channel.publish_rate(per_h)
        sign = self.sign
        scores = np.abs(per_h) if sign == 0 else per_h * sign
        mean = stats.mean

        def event(j: int, kind: str) -> AlertEvent:
            return self._event(int(ns[j]), kind, float(per_h[j]), float(mean[j]))

        return run_states(self.state, t, scores, begin, event)

    def update_one(self, t: float, x: float, ns: int) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        w = self.window
        w.add(t, x)
        if not self._ready:
            if w.n < self.min_samples or t - w.oldest < self._min_cover:
                return None
            self._ready = True
        per_h = 3600.0 * w.slope()
        if math.isnan(per_h):
            return None
        self.channel.rate_per_h = per_h
        sign = self.sign
        score = abs(per_h) if sign == 0 else per_h * sign
        state = self.state
        if state.level == 0 and score < state.warn and state.pending_since is None:
            return None
        kind = state.observe(t, score)
        if kind is None:
            return None
        return self._event(ns, kind, per_h, w.mean())

    def _event(self, ts_ns: int, kind: str, per_h: float, now: float) -> AlertEvent:
        ch = self.channel
        state = self.state
        unit = ch.unit
        w = self.window
        t = ts_ns / 1e9
        since_ns = int(state.since * 1e9) if state.since is not None else ts_ns
        over = span_words(w.span, w.max_samples)
        direction = "rising" if per_h > 0 else "falling"
        if kind == CLEARED:
            message = (
                f"{ch.label} has levelled off: trend {fmt_rate(per_h, unit)} over {over}, "
                f"now {fmt(now, unit)}; the trend alert that began {when(since_ns)} lasted "
                f"{duration_words(t - since_ns / 1e9)}."
            )
        else:
            message = (
                f"{state.level.label.upper()}: {ch.label} is {direction} "
                f"{fmt_rate(abs(per_h), unit)} (trend over {over}), now {fmt(now, unit)}, "
                f"since {when(since_ns)}."
            )
            if ch.affects:
                message += f" This affects {ch.affects}."
        return AlertEvent(
            ts_ns=ts_ns,
            channel=ch,
            detector=self.name,
            kind=kind,
            level=state.level,
            value=now,
            baseline=math.nan,
            delta=math.nan,
            rate_per_h=per_h,
            since_ns=since_ns,
            baseline_note="",
            message=message,
        )
