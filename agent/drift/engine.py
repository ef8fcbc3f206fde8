"""The drift engine: every channel's baseline and detectors, fed batch by batch.

Defaults per channel kind live here as data (`KIND_DEFAULTS`): they must hold up on real floor
data (daily humidity cycles, sensor noise, single outliers: no alert; a sustained shift or ramp:
an alert), which `bench/detector_quality.py` measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.drift.alerts import FLAP_COUNT, FLAP_WINDOW, AlertEvent
from agent.drift.baselines import BaselineSpec, BaselineStore, ChannelBaseline
from agent.drift.detectors import (
    BaselineShift,
    Cusum,
    Detector,
    Ewma,
    InvalidRate,
    Slope,
    Stale,
    Stuck,
    Thresholds,
    VarianceChange,
)
from agent.reading import Channel

H = 3600.0
D = 86400.0

KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # Climate: a daily cycle of several %RH is normal, so compare a full day's mean with the
    # baseline, and judge trends over days; no per-reading CUSUM/EWMA (the cycle would trip them).
    "climate": {
        "baseline": {"window": 7 * D, "learn": 7 * D},
        "detectors": [
            # In baseline sigmas: the learned std includes the daily swing (~3 %RH for a 4 %RH
            # cycle), so 0.5 sigma of the daily mean is ~1.5 %RH, far above its noise.
            {"type": "baseline_shift", "window": 24 * H, "units": "sigma", "warn": 0.5,
             "alarm": 1.0, "hold": 2 * H},
            {"type": "slope", "window": 3 * D, "warn": 0.0625, "alarm": 0.125,
             "hold": 12 * H, "clear_hold": 12 * H},
            {"type": "stale", "max_gap": 15 * 60},
            {"type": "stuck", "window": 6 * H},
            {"type": "invalid_rate", "window": 1 * H, "warn": 0.05, "alarm": 0.2},
        ],
    },
    # Tension: per-batch means scatter around a set point without a cycle, so CUSUM and EWMA
    # in baseline sigmas catch small persistent shifts (an operator change) early.
    "tension": {
        "baseline": {"window": 2 * D, "learn": 2 * D},
        "detectors": [
            {"type": "baseline_shift", "window": 4 * H, "warn": 6.0, "alarm": 10.0, "hold": H},
            # CUSUM integrates the evidence itself: no hold; h = 14 keeps false alarms near
            # 0.1 per 100,000 readings (bench/detector_quality.py) at ~25 readings' delay on 1σ.
            {"type": "cusum", "k": 0.5, "warn": 14.0, "alarm": 22.0, "hysteresis": 2.0},
            {"type": "ewma", "lam": 0.05, "warn": 5.5, "alarm": 7.5, "hold": 60},
            # A spread needs many readings to estimate (at 1/min, 10 minutes' std scatters by
            # ±25 %), and a step in the mean inflates a window straddling it: a 2 h window,
            # at least 60 readings, and a hold of one window keep both from reading as erratic.
            {"type": "variance_change", "window": 2 * H, "warn": 1.6, "alarm": 2.2,
             "hold": 2 * H, "min_samples": 60},
            {"type": "stale", "max_gap": 10 * 60},
            {"type": "stuck", "window": H},
            {"type": "invalid_rate", "window": H, "warn": 0.05, "alarm": 0.2},
        ],
    },
    # Colour: ΔE00 against the approved reference is already a difference (baseline 0).
    "color": {
        "baseline": {"value": 0.0},
        "detectors": [],
    },
}  # fmt: skip

DEFAULT_DETECTORS: dict[str, list[dict[str, Any]]] = {
    kind: spec["detectors"] for kind, spec in KIND_DEFAULTS.items()
}


@dataclass(frozen=True, slots=True)
class DetectResult:
    """What a batch of readings caused: alert events, and readings skipped as late."""

    events: list[AlertEvent]
    late: int


def _thresholds(spec: dict[str, Any], repeat: float | None, flap: tuple[int, float]) -> Thresholds:
    def opt(key: str) -> float | None:
        value = spec.get(key)
        return None if value is None else float(value)

    return Thresholds(
        warn=float(spec["warn"]),
        alarm=opt("alarm"),
        direction=spec.get("direction", "both"),
        hold=float(spec.get("hold", 0.0)),
        clear_hold=opt("clear_hold"),
        hysteresis=opt("hysteresis"),
        repeat=repeat,
        units=spec.get("units", "abs"),
        flap_count=flap[0],
        flap_window=flap[1],
    )


def build_detector(
    channel: Channel,
    base: ChannelBaseline,
    spec: dict[str, Any],
    repeat: float | None = None,
    flap: tuple[int, float] = (FLAP_COUNT, FLAP_WINDOW),
) -> Detector:
    """Build one detector for a channel from a plain spec (validated config or a default)."""
    kind = spec["type"]
    if kind == "stale":
        return Stale(channel, base, float(spec["max_gap"]))
    if kind == "stuck":
        th = Thresholds(warn=0.5, hold=float(spec.get("hold", 0.0)), hysteresis=0.0,
                        clear_hold=spec.get("clear_hold"), repeat=repeat,
                        flap_count=flap[0], flap_window=flap[1])  # fmt: skip
        return Stuck(
            channel,
            base,
            th,
            span=float(spec["window"]),
            tolerance=float(spec.get("tolerance", 0.0)),
            max_samples=int(spec.get("max_samples", 100_000)),
            min_samples=int(spec.get("min_samples", 10)),
        )
    th = _thresholds(spec, repeat, flap)
    windowed: dict[str, type[BaselineShift | Slope | VarianceChange]] = {
        "baseline_shift": BaselineShift,
        "slope": Slope,
        "variance_change": VarianceChange,
    }
    if kind in windowed:
        return windowed[kind](
            channel,
            base,
            th,
            span=float(spec["window"]),
            max_samples=int(spec.get("max_samples", 100_000)),
            min_samples=int(spec.get("min_samples", 10)),
        )
    if kind == "cusum":
        return Cusum(channel, base, th, k=float(spec.get("k", 0.5)))
    if kind == "ewma":
        return Ewma(channel, base, th, lam=float(spec.get("lam", 0.05)))
    if kind == "invalid_rate":
        return InvalidRate(
            channel,
            base,
            th,
            span=float(spec["window"]),
            max_samples=int(spec.get("max_samples", 100_000)),
            min_samples=int(spec.get("min_samples", 20)),
        )
    raise ValueError(f"unknown detector type {kind!r}")


def baseline_spec(channel: Channel, configured: dict[str, Any] | None) -> BaselineSpec:
    """The channel's baseline settings: configured, else its kind's defaults."""
    raw = configured
    if raw is None:
        raw = KIND_DEFAULTS.get(channel.kind, {}).get("baseline", {})
    return BaselineSpec(
        value=raw.get("value"),
        std=raw.get("std"),
        window=float(raw.get("window", 7 * D)),
        learn=None if raw.get("learn") is None else float(raw["learn"]),
        min_samples=int(raw.get("min_samples", 30)),
    )


def attach_detectors(
    channel: Channel,
    specs: Sequence[dict[str, Any]] | None,
    store: BaselineStore,
    repeat: float | None = None,
    baseline: dict[str, Any] | None = None,
    flap: tuple[int, float] = (FLAP_COUNT, FLAP_WINDOW),
) -> None:
    """Give a channel its baseline and detectors: the configured ones, or its kind's defaults."""
    if specs is None:
        specs = DEFAULT_DETECTORS.get(channel.kind, [])
    base = ChannelBaseline(channel.name, baseline_spec(channel, baseline), store)
    channel.baseline = base
    detectors = [build_detector(channel, base, dict(spec), repeat, flap) for spec in specs]
    # Trend detectors run first on each batch: the others quote the trend in their messages.
    channel.detectors = sorted(detectors, key=lambda d: d.name != "slope")
    channel.wants_invalid = any(getattr(d, "sees_invalid", False) for d in detectors)


def detect_batch(channel: Channel, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
    """Run a channel's detectors over readings in arrival order (NaN marks an invalid reading).

    Readings older than one the detectors already saw (late arrivals) are skipped by the
    detectors (they are still spooled and forwarded) and counted in ``late``.
    """
    base = channel.baseline
    assert base is not None
    detectors = channel.detectors
    events: list[AlertEvent] = []
    if len(ns) <= SMALL_BATCH:
        # A few readings (a slow sensor between two process() calls): the scalar path costs
        # microseconds where NumPy's per-call overheads cost tens.
        late = 0
        last = channel.last_ns
        for ns_, v in zip(ns, values, strict=True):
            if ns_ < last:
                late += 1
                continue
            last = ns_
            t_ = ns_ * 1e-9
            if math.isnan(v):  # an invalid reading: only invalid_rate and stale see it
                for detector in detectors:
                    if getattr(detector, "sees_invalid", False):
                        _collect(events, detector.update_one(t_, v, ns_, math.nan, math.nan))
                continue
            bm, bs = base.update_one(t_, v)
            for detector in detectors:
                _collect(events, detector.update_one(t_, v, ns_, bm, bs))
        channel.last_ns = last
        if len(events) > 1:
            events.sort(key=lambda e: e.ts_ns)
        return DetectResult(events, late)
    ts = np.asarray(ns, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    late = 0
    before = np.maximum.accumulate(np.concatenate(([channel.last_ns], ts[:-1])))
    if bool(np.any(ts < before)):
        keep = ts >= before
        late = int(len(ts) - np.count_nonzero(keep))
        ts = ts[keep]
        x = x[keep]
        if not len(ts):
            return DetectResult([], late)
    channel.last_ns = int(ts[-1])
    t = ts * 1e-9
    invalid = np.isnan(x)
    any_invalid = bool(invalid.any())
    if any_invalid:
        for detector in detectors:
            if getattr(detector, "sees_invalid", False):
                events += detector.update_many(t, x, ts, t, t)
        valid = ~invalid
        ts, t, x = ts[valid], t[valid], x[valid]
        if not len(ts):
            return DetectResult(sorted(events, key=lambda e: e.ts_ns), late)
    bmean, bstd = base.update_many(t, x)
    channel.rates = None
    for detector in detectors:
        if any_invalid and getattr(detector, "sees_invalid", False):
            continue
        events += detector.update_many(t, x, ts, bmean, bstd)
    channel.rates = None
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


def check_stale(channel: Channel, now_s: float) -> AlertEvent | None:
    """Raise a channel's stale alert if it has gone quiet by ``now_s`` (the agent's clock)."""
    for detector in channel.detectors:
        if isinstance(detector, Stale):
            return detector.check(now_s)
    return None


def detect(channel: Channel, ts_ns: int, value: float) -> list[AlertEvent] | None:
    """Run a channel's detectors on one reading (tests, tools); the events, or None."""
    return detect_batch(channel, [ts_ns], [value]).events or None


SMALL_BATCH = 16  # readings per channel below which detection runs sample by sample
