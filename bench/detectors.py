"""Cost per reading of the ring buffer and the two drift detectors, across window sizes.

One channel gets ``baseline_shift`` + ``slope`` through ``agent.drift.engine.DriftEngine.attach``
with count-bounded windows (``window`` a year, the longest the config allows, far more than
the readings at one a second; ``max_samples`` = 100, 10,000, 1,000,000) and a
fixed baseline, so both detectors evaluate from the first readings. Each window is fed far
more readings than it holds, so the measurement includes the steady state (one sample in,
one evicted) and the periodic exact recompute (every ``max(n, 1024)`` samples).

Detection runs in micro-batches (``Pipeline.process`` hands each channel's pending readings to
``detect_batch``; ``BATCH_MAX`` = 4096 under load, about one reading per channel per call at
real-time rates). Measured per window size, in µs per reading (loop included, CPU time of
this thread):

* ``Window.extend`` alone at batch 4096 (``trend=False``: baseline_shift; ``trend=True``: slope);
* ``Slope.update_many`` + ``BaselineShift.update_many`` called directly on NumPy arrays;
* ``detect_batch`` (what the pipeline calls, on Python lists) at batch 4096, its steady state
  once the windows are full, its slowest chunk, and its own overhead (detect_batch − updates);
* the same with thresholds crossed: both detectors sit in an active alert, so the state
  machine runs on every reading, and ``repeat`` makes each one emit an event per simulated hour;
* the scalar ``Window.add``, ``detect_batch`` at batch 256 and 16, and ``detect()`` (batch 1);
* ``recompute()`` of a full window, and the RSS of one channel with 1,000,000-sample windows.

Target (the issue): flat across window sizes and ≤ 2 µs per reading.

    .venv/bin/python bench/detectors.py            # full run, ~50 s
    .venv/bin/python bench/detectors.py --quick    # ~12 s, fewer readings
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common
import numpy as np

from agent.config.detectors import BaselineSpecConfig, parse_detectors
from agent.config.models import AlertsConfig
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DetectResult, DriftEngine
from agent.drift.ring import Window
from agent.reading import Channel

TARGET_US = 2.0
SIZES = (100, 10_000, 1_000_000)
READINGS_FULL = {100: 1_000_000, 10_000: 1_000_000, 1_000_000: 3_000_000}
READINGS_QUICK = {100: 100_000, 10_000: 100_000, 1_000_000: 1_100_000}
CHUNK = 1 << 16  # readings per timed chunk (for the steady-state and worst-chunk figures)
BATCH = 4096  # agent.pipeline.BATCH_MAX: the batch detection gets under load
SMALL_READINGS = 40_000  # readings timed for batches of 16 and (a quarter) of 1
# Distinct values, reused cyclically (a multiple of every batch size; a list of 3 M floats
# would skew the RSS figure).
BLOCK = 1 << 16
MASK = BLOCK - 1
T0_NS = 1_700_000_000_000_000_000
STEP_NS = 1_000_000_000  # one reading per second
REPEAT_S = 3600.0  # crossed variant: each active alert repeats once per simulated hour


def make_values(seed: int = 1) -> list[float]:
    """A block of humidity-like values (mean 50, sd 1), as Python floats."""
    return np.random.default_rng(seed).normal(50.0, 1.0, BLOCK).round(2).tolist()


def specs(max_samples: int, crossed: bool) -> list[dict[str, Any]]:
    """baseline_shift + slope on count-bounded windows; crossed: both always over warn."""
    if crossed:
        # Baseline 0 against values near 50: the shift score (50) is past alarm at once;
        # a slope warn of 1e-9/h is crossed by any non-zero trend of the noise.
        shift = {"warn": 1.0, "alarm": 2.0}
        slope = {"warn": 1e-9}
    else:
        shift = {"warn": 1e9}
        slope = {"warn": 1e9}
    # A year (the config's longest window) holds more than any run's readings at 1/s: the
    # windows are bounded by max_samples.
    common = {"window": 365 * 86400.0, "max_samples": max_samples, "min_samples": 10}
    return [
        {"type": "baseline_shift", **common, **shift},
        {"type": "slope", **common, **slope},
    ]


@dataclass
class Watched:
    """A channel and the drift engine that watches it."""

    engine: DriftEngine
    ch: Channel

    @property
    def detectors(self) -> list[object]:
        drift = self.engine.drift(self.ch)
        assert drift is not None
        return list(drift.detectors)


def detect_batch(w: Watched, ns: list[int], values: list[float]) -> DetectResult:
    """What Pipeline._detect calls with a channel's pending readings."""
    return w.engine.detect(w.ch, ns, values)


def detect(w: Watched, ts: int, value: float) -> object:
    """One reading (a slow sensor between two detection passes)."""
    return w.engine.detect(w.ch, [ts], [value]).events or None


def channel(max_samples: int, crossed: bool = False) -> Watched:
    ch = Channel(
        name="bench.humidity",
        measurement="climate",
        field="humidity_rh",
        unit="%RH",
        label="Bench room humidity",
    )
    # The channel's baseline is fixed (0 for crossed: values near 50 are past alarm at once).
    engine = DriftEngine(BaselineStore(None), AlertsConfig(repeat=REPEAT_S if crossed else None))
    engine.attach(
        ch,
        detectors=parse_detectors(specs(max_samples, crossed)),
        baseline=BaselineSpecConfig(value=0.0 if crossed else 50.0, std=1.0),
    )
    return Watched(engine, ch)


# Every measurement uses the same loop shape: chunks of CHUNK readings, timed one by one.


def loop_add(f: Callable[[float, float], object], n: int, vals: list[float]) -> list[float]:
    """f(t_seconds, value) per reading (Window.add); CPU seconds per chunk."""
    chunks = []
    t = T0_NS * 1e-9
    clock = time.thread_time
    for start in range(0, n, CHUNK):
        c0 = clock()
        for i in range(start, min(start + CHUNK, n)):
            f(t, vals[i & MASK])
            t += 1.0
        chunks.append(clock() - c0)
    return chunks


def loop_arrays(
    f: Callable[..., object], n: int, batch: int, vals: np.ndarray, with_ns: bool
) -> list[float]:
    """f(t, x[, ns]) on NumPy batches (Window.extend, the detectors' update_many)."""
    chunks = []
    ts = T0_NS
    offsets = np.arange(batch, dtype=np.int64) * STEP_NS
    clock = time.thread_time
    for start in range(0, n, CHUNK):
        c0 = clock()
        for i in range(start, min(start + CHUNK, n), batch):
            ns = ts + offsets
            j = i & MASK
            if with_ns:
                f(ns * 1e-9, vals[j : j + batch], ns)
            else:
                f(ns * 1e-9, vals[j : j + batch])
            ts += batch * STEP_NS
        chunks.append(clock() - c0)
    return chunks


def loop_detect(ch: Watched, n: int, batch: int, vals: list[float]) -> tuple[list[float], int]:
    """detect_batch(channel, ns, values) on lists, as Pipeline hands over each channel's
    pending readings (batch 1 goes through detect()); (CPU seconds per chunk, events)."""
    chunks = []
    events = 0
    ts = T0_NS
    step = batch * STEP_NS
    clock = time.thread_time
    for start in range(0, n, CHUNK):
        c0 = clock()
        for i in range(start, min(start + CHUNK, n), batch):
            if batch == 1:
                ev = detect(ch, ts, vals[i & MASK])
                events += len(ev) if ev else 0
            else:
                j = i & MASK
                result = detect_batch(ch, list(range(ts, ts + step, STEP_NS)), vals[j : j + batch])
                events += len(result.events)
            ts += step
        chunks.append(clock() - c0)
    return chunks, events


def _noop(t: float, x: float) -> None:
    return None


def us(chunks: list[float], n: int) -> float:
    return sum(chunks) / n * 1e6


def steady_us(chunks: list[float], n: int, max_samples: int) -> float:
    """Median µs per reading of the full chunks that start once the window is full.

    Those readings all evict one sample; the median keeps a burst of load from another
    process (or the one recompute of a big window) from setting the figure.
    """
    first = -(-max_samples // CHUNK)  # first chunk starting at or after max_samples
    tail = chunks[first : n // CHUNK]
    if not tail:
        return math.nan
    return statistics.median(tail) / CHUNK * 1e6


def worst_chunk_us(chunks: list[float], n: int) -> float:
    """µs per reading of the slowest full chunk (shows a recompute or growth spike)."""
    full = chunks[: n // CHUNK] or chunks
    return max(full) / CHUNK * 1e6


def prefilled(max_samples: int, vals: list[float]) -> tuple[Watched, int]:
    """A channel whose detector windows are full (fed untimed in big batches); next ts_ns."""
    ch = channel(max_samples)
    ts = T0_NS
    fill = -(-max_samples // BATCH) * BATCH
    for i in range(0, fill, BATCH):
        j = i & MASK
        detect_batch(ch, list(range(ts, ts + BATCH * STEP_NS, STEP_NS)), vals[j : j + BATCH])
        ts += BATCH * STEP_NS
    return ch, ts


def small_batches(max_samples: int, batch: int, n: int, vals: list[float]) -> float:
    """µs per reading of detect_batch with small batches, on windows already full."""
    ch, ts = prefilled(max_samples, vals)
    clock = time.thread_time
    step = batch * STEP_NS
    c0 = clock()
    for i in range(0, n, batch):
        if batch == 1:
            detect(ch, ts, vals[i & MASK])
        else:
            j = i & MASK
            detect_batch(ch, list(range(ts, ts + step, STEP_NS)), vals[j : j + batch])
        ts += step
    return (clock() - c0) / n * 1e6


def measure(max_samples: int, n: int, vals: list[float], arr: np.ndarray) -> dict[str, Any]:
    """Every figure for one window size."""
    gc.collect()
    n = -(-n // CHUNK) * CHUNK
    out: dict[str, Any] = {"max_samples": max_samples, "readings": n}
    out["wraps"] = round(n / max_samples, 1)

    w = Window(math.inf, max_samples)
    out["add_us"] = us(loop_add(w.add, n, vals), n)
    w2 = Window(math.inf, max_samples, trend=True)
    out["add_trend_us"] = us(loop_add(w2.add, n, vals), n)
    del w, w2
    w = Window(math.inf, max_samples)
    out["extend_us"] = us(loop_arrays(w.extend, n, BATCH, arr, False), n)
    w2 = Window(math.inf, max_samples, trend=True)
    out["extend_trend_us"] = us(loop_arrays(w2.extend, n, BATCH, arr, False), n)
    t0 = time.perf_counter()
    w2.recompute()
    out["recompute_ms"] = (time.perf_counter() - t0) * 1e3
    if w2.n != max_samples or w2.head != n:
        raise RuntimeError("the window did not fill")
    del w, w2

    ch = channel(max_samples)
    first, second = (d.update_many for d in ch.detectors)  # type: ignore[attr-defined]

    def both(t: np.ndarray, x: np.ndarray, ns: np.ndarray) -> None:
        bmean = np.full(len(t), 50.0)
        bstd = np.ones(len(t))
        first(t, x, ns, bmean, bstd)
        second(t, x, ns, bmean, bstd)

    out["updates_us"] = us(loop_arrays(both, n, BATCH, arr, True), n)
    del ch

    ch = channel(max_samples)
    chunks, events = loop_detect(ch, n, BATCH, vals)
    if events:
        raise RuntimeError(f"{events} alert events with thresholds that should never be crossed")
    out["detect_us"] = us(chunks, n)
    out["detect_steady_us"] = steady_us(chunks, n, max_samples)
    out["detect_worst_chunk_us"] = worst_chunk_us(chunks, n)
    out["detect_overhead_us"] = out["detect_us"] - out["updates_us"]
    if any(d.window.n != max_samples for d in ch.detectors):  # type: ignore[attr-defined]
        raise RuntimeError("a detector window did not fill")
    del ch

    ch = channel(max_samples, crossed=True)
    chunks, events = loop_detect(ch, n, BATCH, vals)
    out["crossed_us"] = us(chunks, n)
    out["crossed_events"] = events
    out["crossed_levels"] = [d.state.level.label for d in ch.detectors]  # type: ignore[attr-defined]
    del ch

    ch = channel(max_samples)
    chunks, _ = loop_detect(ch, n, 256, vals)
    out["detect_256_us"] = us(chunks, n)
    del ch
    out["detect_16_us"] = small_batches(max_samples, 16, SMALL_READINGS, vals)
    out["detect_1_us"] = small_batches(max_samples, 1, SMALL_READINGS // 4, vals)
    return out


def rss_probe(max_samples: int, n: int) -> None:
    """In a fresh process: RSS of one channel with both detectors on max_samples windows, fed
    n readings in batches (so it filled, wrapped and recomputed); prints one JSON object."""
    vals = make_values()
    base = _common.rss_now_mib()
    ch = channel(max_samples)
    built = _common.rss_now_mib()
    loop_detect(ch, n, BATCH, vals)
    print(
        json.dumps(
            {
                "rss_before_mib": round(base, 1),
                "rss_built_mib": round(built, 1),
                "rss_after_mib": round(_common.rss_now_mib(), 1),
                "peak_rss_mib": round(_common.peak_rss_mib(), 1),
            }
        )
    )


def run_rss_probe(max_samples: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", str(max_samples), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer readings (~12 s)")
    parser.add_argument("--rss-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(*args.rss_probe)
        return
    readings = READINGS_QUICK if args.quick else READINGS_FULL

    info = _common.print_header("bench/detectors.py: ring buffer + baseline_shift + slope")
    vals = make_values()
    arr = np.array(vals)
    loop_us = us(loop_add(_noop, 1 << 20, vals), 1 << 20)
    print(f"empty loop + one call (no-op), for reference: {loop_us:.3f} µs per reading")
    print()

    big_size = max(SIZES)
    probe = run_rss_probe(big_size, -(-readings[big_size] // CHUNK) * CHUNK)
    results = []
    rss_before = peak_before = 0.0
    for size in SIZES:
        if size == max(SIZES):
            rss_before = _common.rss_now_mib()
            peak_before = _common.peak_rss_mib()
        started = time.perf_counter()
        r = measure(size, readings[size], vals, arr)
        r["seconds"] = round(time.perf_counter() - started, 1)
        results.append(r)
    peak = _common.peak_rss_mib()

    def f3(x: float) -> str:
        return f"{x:.3f}"

    print("µs per reading, CPU time of this thread (time.thread_time), loop included.")
    print(f"Batch path, batches of {BATCH:,} (Pipeline.BATCH_MAX), from empty windows:")
    _common.table(
        ["max_samples", "readings", "wraps", "extend", "extend(trend)", "2 update_many",
         "detect_batch", "steady", "worst chunk", "overhead", "crossed", "events"],
        [
            [f"{r['max_samples']:,}", f"{r['readings']:,}", r["wraps"], f3(r["extend_us"]),
             f3(r["extend_trend_us"]), f3(r["updates_us"]), f3(r["detect_us"]),
             f3(r["detect_steady_us"]), f3(r["detect_worst_chunk_us"]),
             f3(r["detect_overhead_us"]), f3(r["crossed_us"]), r["crossed_events"]]
            for r in results
        ],
    )  # fmt: skip
    print()
    print("Per-reading paths and smaller batches:")
    _common.table(
        ["max_samples", "Window.add", "add(trend)", "batch 256", "batch 16", "detect() = batch 1"],
        [
            [f"{r['max_samples']:,}", f3(r["add_us"]), f3(r["add_trend_us"]),
             f3(r["detect_256_us"]), f3(r["detect_16_us"]), f3(r["detect_1_us"])]
            for r in results
        ],
    )  # fmt: skip
    print()
    print("extend / extend(trend): Window.extend alone (baseline_shift's / slope's window)")
    print("2 update_many: Slope.update_many + BaselineShift.update_many on NumPy arrays")
    print("detect_batch: engine entry point on Python lists, as Pipeline._detect calls it")
    print("steady: median chunk of detect_batch once the windows are full (all adds evict)")
    print(f"worst chunk: slowest {CHUNK:,}-reading chunk of detect_batch (recompute spikes)")
    print("overhead: detect_batch - 2 update_many (list→array, late-reading check, sort)")
    print(f"crossed: detect_batch with both detectors in an active alert (repeat {REPEAT_S:g} s)")
    print("Window.add: the scalar path (still used by Window.extend for batches ≤ 12)")
    print(f"batch 256 from empty windows; batch 16 ({SMALL_READINGS:,} readings) and batch 1")
    print(f"({SMALL_READINGS // 4:,}) on windows pre-filled untimed")
    print()
    for r in results:
        print(
            f"recompute() of a full {r['max_samples']:,}-sample trend window: "
            f"{r['recompute_ms']:.2f} ms (runs once every max(n, 1024) readings)"
        )
    big = results[-1]
    print(
        f"RSS, one channel with both detectors on {big_size:,}-sample windows, fed "
        f"{big['readings']:,} readings in a fresh process: {probe['rss_before_mib']:.1f} MiB "
        f"before, {probe['rss_built_mib']:.1f} built, {probe['rss_after_mib']:.1f} after, "
        f"peak {probe['peak_rss_mib']:.1f} MiB (getrusage ru_maxrss)"
    )
    print(
        f"RSS of this process: {rss_before:.1f} MiB before the {big_size:,}-sample runs, peak "
        f"{peak:.1f} MiB after (several windows + recompute temporaries; before: "
        f"{peak_before:.1f} MiB)"
    )

    detect_all = [r["detect_us"] for r in results]
    worst = max(detect_all)
    spread = worst / min(detect_all)
    meets = worst <= TARGET_US
    print()
    print(
        f"target: ≤ {TARGET_US:g} µs per reading, flat across sizes; at batch {BATCH:,}: "
        f"worst {worst:.2f} µs, max/min across sizes {spread:.2f}x → "
        f"{'MET' if meets else 'NOT MET'}"
    )
    for key, label in (("detect_256_us", "256"), ("detect_16_us", "16"), ("detect_1_us", "1")):
        w = max(r[key] for r in results)
        print(f"  at batch {label}: worst {w:.2f} µs → {'met' if w <= TARGET_US else 'not met'}")
    print(f"total {sum(r['seconds'] for r in results):.0f} s")
    _common.emit_json(
        "detectors",
        info,
        quick=args.quick,
        target_us=TARGET_US,
        batch=BATCH,
        loop_us=round(loop_us, 4),
        results=[
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results
        ],
        rss_1m_channel=probe,
        rss_before_1m_mib=round(rss_before, 1),
        peak_rss_mib=round(peak, 1),
        worst_detect_us=round(worst, 3),
        worst_detect_1_us=round(max(r["detect_1_us"] for r in results), 3),
        worst_detect_16_us=round(max(r["detect_16_us"] for r in results), 3),
        size_spread=round(spread, 3),
        meets_target=meets,
    )


if __name__ == "__main__":
    main()
