"""The drift engine: every channel's detectors, fed reading by reading."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.alerts import AlertEvent
from agent.drift.baselines import Baseline, BaselineStore
from agent.drift.detectors import BaselineShift, Detector, Slope, Thresholds
from agent.reading import Channel


@dataclass(frozen=True, slots=True)
class DetectResult:
    """What a batch of readings caused: alert events, and readings skipped as late."""

    events: list[AlertEvent]
    late: int


SMALL_BATCH = 16  # readings per channel below which detection runs sample by sample

# Detector defaults by channel kind, used where a channel's config names no detectors.
# Durations in seconds, thresholds in the channel's units (slopes in units per hour).
DEFAULT_DETECTORS: dict[str, list[dict[str, Any]]] = {
    "climate": [
        {"type": "baseline_shift", "window": 86400, "learn": 7 * 86400, "warn": 3.0,
         "alarm": 6.0, "hold": 2 * 3600},
        {"type": "slope", "window": 3 * 86400, "warn": 0.0625, "alarm": 0.125,
         "hold": 12 * 3600, "clear_hold": 12 * 3600},
    ],
    "tension": [
        {"type": "baseline_shift", "window": 4 * 3600, "learn": 2 * 86400, "warn": 6.0,
         "alarm": 10.0, "hold": 3600},
    ],
    "color": [],
}  # fmt: skip


def build_detector(
    channel: Channel, spec: dict[str, Any], store: BaselineStore, repeat: float | None = None
) -> Detector:
    """Build one detector for a channel from a plain spec (validated config or a default)."""
    kind = spec["type"]
    thresholds = Thresholds(
        warn=float(spec["warn"]),
        alarm=None if spec.get("alarm") is None else float(spec["alarm"]),
        direction=spec.get("direction", "both"),
        hold=float(spec.get("hold", 0.0)),
        clear_hold=None if spec.get("clear_hold") is None else float(spec["clear_hold"]),
        hysteresis=None if spec.get("hysteresis") is None else float(spec["hysteresis"]),
        repeat=repeat,
    )
    span = float(spec["window"])
    max_samples = int(spec.get("max_samples", 100_000))
    min_samples = int(spec.get("min_samples", 10))
    if kind == "slope":
        return Slope(
            channel, thresholds, span=span, max_samples=max_samples, min_samples=min_samples
        )
    if kind == "baseline_shift":
        key = f"{channel.name}/{kind}"
        configured = spec.get("baseline", "learn")
        baseline: Baseline | None
        if configured == "learn":
            baseline = store.get(key)
        else:
            baseline = Baseline(float(configured), 0.0, 0, 0, 0, "configured")

        def remember(learned: Baseline) -> None:
            store.put(key, learned)

        return BaselineShift(
            channel,
            thresholds,
            span=span,
            max_samples=max_samples,
            min_samples=min_samples,
            baseline=baseline,
            learn=float(spec.get("learn", 86400.0)),
            on_learned=remember,
        )
    raise ValueError(f"unknown detector type {kind!r}")


def attach_detectors(
    channel: Channel,
    specs: Sequence[dict[str, Any]] | None,
    store: BaselineStore,
    repeat: float | None = None,
) -> None:
    """Give a channel its detectors: the configured ones, or its kind's defaults."""
    if specs is None:
        specs = DEFAULT_DETECTORS.get(channel.kind, [])
    detectors = [build_detector(channel, spec, store, repeat) for spec in specs]
    # Trend detectors run first on each batch: the others quote the trend in their messages.
    channel.detectors = sorted(detectors, key=lambda d: d.name != "slope")


def detect_batch(channel: Channel, ns: Sequence[int], values: Sequence[float]) -> DetectResult:
    """Run a channel's detectors over readings in arrival order.

    Readings older than one the detectors already saw (late arrivals) are skipped by the
    detectors (they are still spooled and forwarded) and counted in ``late``.
    """
    if len(ns) <= SMALL_BATCH:
        # A few readings (a slow sensor between two process() calls): the scalar path costs
        # microseconds where NumPy's per-call overheads cost tens.
        events: list[AlertEvent] = []
        late = 0
        last = channel.last_ns
        detectors = channel.detectors
        for ns_, v in zip(ns, values, strict=True):
            if ns_ < last:
                late += 1
                continue
            last = ns_
            t_ = ns_ * 1e-9
            for detector in detectors:
                event = detector.update_one(t_, v, ns_)
                if event is not None:
                    events.append(event)
        channel.last_ns = last
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
    events = []
    t = ts * 1e-9
    channel.rates = None
    for detector in channel.detectors:
        events += detector.update_many(t, x, ts)
    channel.rates = None
    channel.last_ns = int(ts[-1])
    if len(channel.detectors) > 1:
        events.sort(key=lambda e: e.ts_ns)
    return DetectResult(events, late)


def detect(channel: Channel, ts_ns: int, value: float) -> list[AlertEvent] | None:
    """Run a channel's detectors on one reading (tests, tools); the events, or None."""
    return detect_batch(channel, [ts_ns], [value]).events or None
