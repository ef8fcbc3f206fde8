"""Drift detectors: O(1) per sample over a Window, driven by the readings' own timestamps.

A detector turns each reading into a score in the channel's units (how far the rolling mean is
from the baseline, or how steep the trend is), and its AlertState turns scores into events.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.alerts import (
    CLEARED,
    ESCALATED,
    AlertEvent,
    AlertState,
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

    def update(self, t: float, x: float) -> AlertEvent | None:
        """Feed one reading (time in seconds); return an alert event when the state changes."""
        ...


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

    def update(self, t: float, x: float) -> AlertEvent | None:
        """Feed one reading; O(1)."""
        w = self.window
        w.add(t, x)
        if self.baseline is None:
            self._learn(t, x)
            return None
        if not self._ready:
            if w.n < self.min_samples or w.covered < self._min_cover:
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
        return self._event(t, kind, mean, delta)

    def _learn(self, t: float, x: float) -> None:
        if self._ln == 0:
            self._lstart = t
        self._ln += 1
        d = x - self._lmean
        self._lmean += d / self._ln
        self._lm2 += d * (x - self._lmean)
        if t - self._lstart >= self.learn and self._ln >= self.min_samples:
            std = math.sqrt(self._lm2 / (self._ln - 1))
            self.set_baseline(
                Baseline(
                    mean=self._lmean,
                    std=std,
                    n=self._ln,
                    start_ns=int(self._lstart * 1e9),
                    end_ns=int(t * 1e9),
                    source="learned",
                )
            )
            if self.on_learned is not None and self.baseline is not None:
                self.on_learned(self.baseline)

    def set_baseline(self, baseline: Baseline) -> None:
        """Compare against this baseline from now on."""
        self.baseline = baseline
        self.base = baseline.mean

    def _event(self, t: float, kind: str, mean: float, delta: float) -> AlertEvent:
        ch = self.channel
        state = self.state
        assert self.baseline is not None
        unit = ch.unit
        ts_ns = int(t * 1e9)
        since_ns = int((state.since if state.since is not None else t) * 1e9)
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
            rate = ch.rate_per_h
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
            rate_per_h=ch.rate_per_h,
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

    def update(self, t: float, x: float) -> AlertEvent | None:
        """Feed one reading; O(1)."""
        w = self.window
        w.add(t, x)
        if not self._ready:
            if w.n < self.min_samples or w.covered < self._min_cover:
                return None
            self._ready = True
        n = w.n
        st = w.st
        denom = n * w.stt - st * st
        if denom <= 0.0:
            return None
        per_h = 3600.0 * (n * w.stx - st * w.sx) / denom
        self.channel.rate_per_h = per_h
        sign = self.sign
        score = abs(per_h) if sign == 0 else per_h * sign
        state = self.state
        if state.level == 0 and score < state.warn and state.pending_since is None:
            return None
        kind = state.observe(t, score)
        if kind is None:
            return None
        return self._event(t, kind, per_h)

    def _event(self, t: float, kind: str, per_h: float) -> AlertEvent:
        ch = self.channel
        state = self.state
        unit = ch.unit
        w = self.window
        now = w.mean()
        since_ns = int((state.since if state.since is not None else t) * 1e9)
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
            ts_ns=int(t * 1e9),
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
