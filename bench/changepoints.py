"""Change points on labelled multi-change streams: driftgate beside ruptures and river.

A seeded suite of synthetic streams, each with several changes (``make_series``), in noise
sigmas, at rates from one reading a second to one an hour:

* ``shifts``: i.i.d. noise, level shifts of 0.5, 1, 2 or 3 σ (sign random);
* ``variance``: the noise's spread × or ÷ 1.5, 2 or 3;
* ``trends``: flat stretches and ramps of 2–5 σ in turn (a change where each begins);
* ``AR(1) shifts``: AR(1) noise (φ 0.5, marginal σ 1) with shifts of 1–3 σ;
* ``outliers + shifts``: shifts of 1–3 σ, single outliers of 6–10 σ in one reading of 1,000;
* ``gaps + shifts``: shifts of 1–3 σ, the readings stopping for 20–300 intervals now and then;
* ``daily cycle + shifts`` (a room's humidity, 1/min or 1/10 min): a 4 σ daily cycle, AR(1)
  noise φ 0.95 (marginal 0.8), white noise 0.3, outliers, and shifts of 1.5–3 σ after its first
  3.5 days (a climate channel learns its daily cycle over its first 3 days).

Segments are 300–1,500 readings long (daily cycle: 1,000–4,000 at 1/min, 150–600 at
1/10 min). No-change controls (40,000 readings each, the same rates): i.i.d., AR(1) φ 0.5,
outliers, gaps, and the daily cycle.

Each stream goes through ``driftgate replay`` as a CSV column would (``agent.replay.run``, the
agent's own registry and pipeline): **no config** (the column named ``value``, or ``humidity``
for the daily-cycle streams, so the kind is guessed from the name as replay does: generic,
climate), and **kind defaults** (the same stream as a tension channel, the daily-cycle ones as
climate). A prediction is an event's estimated onset (``since``), for every new event (raised,
changed, flapping) of the detectors that judge the signal (not stale, stuck or invalid_rate:
they report the sensor); *changepoint only* counts the change-point detector's events alone.

Beside them, on the same streams: ruptures PELT (``KernelCPD`` with the linear kernel: the
l2 cost, in C) and binary segmentation (``Binseg``, l2), both with the penalty ruptures'
documentation gives, log(n)·σ² (σ from the MAD of the first differences), offline methods that
see the whole stream at once: an upper anchor; and river's ADWIN, PageHinkley and KSWIN, with
their defaults and with the settings ``detector_quality.py`` found to keep ≤ 1 false alarm per
100,000 readings (river reports the reading at which it detects, not an onset). KSWIN costs
~0.3 ms a reading and runs on a subset (a few streams per family, controls cut to 15,000);
ruptures' cost grows with the square of a stream's length where it finds many changes, so it
sees the first 20,000 readings of each control (``CUT``; ``--quick``: smaller cuts).

Scores (van den Burg and Williams 2020, "An evaluation of change point detection algorithms",
as their TCPDBench computes them): **F1** with a margin of 5 readings (the start counts as a
change in both sets; each true change matched at most once), and the **covering** of the true
segmentation by the predicted one; both per stream, averaged per family and over the whole
multi-change suite. **Delay**: readings from a true change to the detection of the first
prediction placed within 5 readings before it or later (before the next change), median.
**FA/100k**: predictions per 100,000 readings of the controls.

Targets: driftgate with no config beats every river detector on F1, reaches at least the F1 of
ruptures Binseg over the multi-change suite, and makes ≤ 1 false alarm per 100,000 readings on
the controls.

    .venv/bin/python bench/changepoints.py            # full run, ~6 min on 2 cores
    .venv/bin/python bench/changepoints.py --quick    # ~1.5 min
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

MARGIN = 5
FA_TARGET = 1.0
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
RATES = (1.0, 10.0, 60.0, 600.0, 3600.0)
DAILY_RATES = (60.0, 600.0)
DAY = 86400.0
LEARN_DAYS = 3.5  # the daily-cycle streams change only after this (climate learns 3 d)
CONTROL_N = 40_000
CUT = {"KSWIN": 15_000, "ruptures": 20_000}  # readings of each control these methods see
CUT_QUICK = {"KSWIN": 5_000, "ruptures": 10_000}

FAMILIES = [
    "shifts",
    "variance",
    "trends",
    "AR(1) shifts",
    "outliers + shifts",
    "gaps + shifts",
    "daily cycle + shifts",
]
CONTROLS = ["iid", "AR(1) φ0.5", "outliers", "gaps", "daily cycle"]
DAILY = {"daily cycle + shifts", "daily cycle"}
IGNORED = ("stale", "stuck", "invalid_rate")  # they report the sensor, not the signal
NEW = ("raised", "changed", "flapping")


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled stream: readings (ns, value), true change indices, its family and rate."""

    family: str
    rep: int
    rate: float
    ns: np.ndarray
    x: np.ndarray
    cps: tuple[int, ...]

    @property
    def control(self) -> bool:
        return self.family in CONTROLS


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    from scipy.signal import lfilter

    e = rng.standard_normal(n) * sigma * math.sqrt(1 - phi**2)
    e[0] = rng.standard_normal() * sigma
    return np.asarray(lfilter([1.0], [1.0, -phi], e))


def _outliers(rng: np.random.Generator, x: np.ndarray) -> None:
    hits = rng.random(len(x)) < 1e-3
    x[hits] += rng.choice([-1.0, 1.0], int(hits.sum())) * rng.uniform(6, 10, int(hits.sum()))


def _times(rng: np.random.Generator, n: int, rate: float, gaps: bool) -> np.ndarray:
    steps = np.full(n, rate)
    steps[0] = 0.0
    if gaps:
        for at in rng.choice(np.arange(50, n - 50), int(rng.integers(2, 5)), replace=False):
            steps[at] = rate * int(rng.integers(20, 301))
    return T0_NS + (np.cumsum(steps) * 1e9).astype(np.int64)


def make_series(family: str, rep: int, seed: int = 2026) -> Series:
    """Stream ``rep`` of a family or control; deterministic for (family, rep, seed)."""
    idx = (FAMILIES + CONTROLS).index(family)
    rng = np.random.default_rng(np.random.SeedSequence([seed, idx, rep]))
    daily = family in DAILY
    rate = DAILY_RATES[rep % 2] if daily else RATES[rep % len(RATES)]
    per_day = int(DAY / rate)
    if family in CONTROLS:
        n = CONTROL_N
        if family == "AR(1) φ0.5":
            x = _ar1(rng, n, 0.5, 1.0)
        elif daily:
            x = _daily(rng, n, per_day)
        else:
            x = rng.standard_normal(n)
            if family == "outliers":
                _outliers(rng, x)
        return Series(family, rep, rate, _times(rng, n, rate, family == "gaps"), x, ())
    lo, hi = (300, 1500)
    if daily:
        lo, hi = (1000, 4000) if rate == 60.0 else (150, 600)
    lengths = rng.integers(lo, hi + 1, int(rng.integers(4, 8)))
    first = int(LEARN_DAYS * per_day) if daily else int(lengths[0])
    bounds = np.concatenate(([0, first], first + np.cumsum(lengths[1:])))
    n = int(bounds[-1])
    cps = tuple(int(b) for b in bounds[1:-1])
    level = np.zeros(n)
    spread = np.ones(n)
    for a in bounds[1:-1]:
        if family == "shifts":
            level[a:] += rng.choice([-1.0, 1.0]) * rng.choice([0.5, 1.0, 2.0, 3.0])
        elif family == "variance":
            r = float(rng.choice([1.5, 2.0, 3.0]))
            now = spread[a - 1]
            narrower = now * r > 4.0 or (now / r >= 0.3 and rng.random() < 0.5)
            spread[a:] = now / r if narrower else now * r
        elif family == "trends":
            continue
        else:
            sizes = [1.5, 2.0, 3.0] if daily else [1.0, 2.0, 3.0]
            level[a:] += rng.choice([-1.0, 1.0]) * rng.choice(sizes)
    if family == "trends":
        for i, (a, b) in enumerate(itertools.pairwise(bounds[1:])):
            if i % 2 == 0:  # a ramp from a to b, then flat
                total = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 5.0)
                level[a:b] += total * (np.arange(b - a) + 1) / (b - a)
                level[b:] += total
    if family == "AR(1) shifts":
        noise = _ar1(rng, n, 0.5, 1.0)
    elif daily:
        noise = _daily(rng, n, per_day)
    else:
        noise = rng.standard_normal(n) * spread
        if family == "outliers + shifts":
            _outliers(rng, noise)
    ns = _times(rng, n, rate, family == "gaps + shifts")
    return Series(family, rep, rate, ns, level + noise, cps)


def _daily(rng: np.random.Generator, n: int, per_day: int) -> np.ndarray:
    """A room's humidity in noise sigmas: 4 σ daily cycle, AR(1) φ 0.95, white, outliers."""
    phase = rng.uniform(0, 2 * math.pi)
    i = np.arange(n)
    phi = 0.95 ** (1440 / per_day)  # the same wander per hour at 1/min and 1/10 min
    x = 4.0 * np.sin(2 * math.pi * i / per_day + phase) + _ar1(rng, n, phi, 0.8)
    x += 0.3 * rng.standard_normal(n)
    _outliers(rng, x)
    return x


# --- Scoring (TCPDBench's definitions) --------------------------------------------------------


def true_positives(truth: set[int], pred: set[int], margin: int = MARGIN) -> set[int]:
    """True changes matched by a prediction within the margin, each prediction used once."""
    left = set(pred)
    found = set()
    for tau in sorted(truth):
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            found.add(tau)
            left.remove(close[0][1])
    return found


def f1(truth: tuple[int, ...], pred: list[int], margin: int = MARGIN) -> tuple[float, float, float]:
    """F1, precision and recall with the start (0) counted as a change in both sets."""
    t = {0, *truth}
    p = {0, *pred}
    tp = len(true_positives(t, p, margin))
    precision = tp / len(p)
    recall = tp / len(t)
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return score, precision, recall


def covering(truth: tuple[int, ...], pred: list[int], n: int) -> float:
    """How well the predicted segments cover the true ones (1: exactly)."""

    def segments(cps: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
        edges = [0, *sorted(c for c in set(cps) if 0 < c < n), n]
        return list(itertools.pairwise(edges))

    predicted = segments(pred)
    total = 0.0
    for a, b in segments(truth):
        best = 0.0
        for c, d in predicted:
            inter = min(b, d) - max(a, c)
            if inter > 0:
                best = max(best, inter / (max(b, d) - min(a, c)))
        total += (b - a) * best
    return total / n


def delays(truth: tuple[int, ...], found: list[tuple[int, int]], n: int) -> list[int]:
    """Per true change, readings until the first detection placed at it (onset within the
    margin before it or later, before the next change); missing ones are left out."""
    out = []
    ends = [*truth[1:], n]
    for cp, end in zip(truth, ends, strict=True):
        hits = [det - cp for onset, det in found if cp - MARGIN <= onset < end and det >= cp]
        if hits:
            out.append(min(hits))
    return out


@dataclass(slots=True)
class Score:
    """One method on one stream."""

    predictions: int
    f1: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    covering: float = math.nan
    delays: list[int] = field(default_factory=list)


def score(s: Series, found: list[tuple[int, int]]) -> Score:
    """Score (onset, detection) index pairs against the stream's labels."""
    onsets = sorted({o for o, _ in found})
    if s.control:
        return Score(predictions=len(found))
    f, p, r = f1(s.cps, onsets)
    return Score(len(found), f, p, r, covering(s.cps, onsets, len(s.x)),
                 delays(s.cps, found, len(s.x)))  # fmt: skip


# --- Methods ----------------------------------------------------------------------------------


class _Input:
    """One stream as a replay input: a CSV column called ``name`` of the given kind."""

    def __init__(self, s: Series, name: str, kind: str) -> None:
        from agent.replay.inputs import SeriesSpec

        self.s = s
        self.series = [SeriesSpec(name=name, measurement=kind, field=name, unit="", kind=kind)]
        self.skipped: Counter[str] = Counter()

    def readings(self) -> Iterator[tuple[int, int, float]]:
        for ts, v in zip(self.s.ns.tolist(), self.s.x.tolist(), strict=True):
            yield 0, ts, v


def run_driftgate(s: Series, how: str) -> dict[str, list[tuple[int, int]]]:
    """The stream through ``driftgate replay``: (onset, detection) indices per counting rule."""
    from agent.replay.inputs import guess_kind
    from agent.replay.run import replay

    name = "humidity" if s.family in DAILY else "value"
    kind = "climate" if s.family in DAILY else "tension"
    if how == "no config":
        kind = guess_kind(name)
    result = replay(_Input(s, name, kind))
    found: dict[str, list[tuple[int, int]]] = {"all": [], "changepoint": []}
    for e in result.events:
        if e.transition not in NEW or e.detector in IGNORED:
            continue
        pair = (
            int(np.searchsorted(s.ns, e.since_ns, side="left")),
            int(np.searchsorted(s.ns, e.ts_ns, side="left")),
        )
        found["all"].append(pair)
        if e.detector == "changepoint":
            found["changepoint"].append(pair)
    return found


def _sigma(x: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(x)))) / (0.6745 * math.sqrt(2.0))


def run_ruptures(s: Series, algo: str) -> list[tuple[int, int]]:
    """ruptures with the penalty of its documentation: log(n)·σ²."""
    import ruptures as rpt

    x = s.x.reshape(-1, 1)
    pen = math.log(len(x)) * _sigma(s.x) ** 2
    if algo == "PELT":
        bkps = rpt.KernelCPD(kernel="linear", min_size=2).fit(x).predict(pen=pen)
    else:
        bkps = rpt.Binseg(model="l2", min_size=2, jump=5).fit(x).predict(pen=pen)
    return [(b, b) for b in bkps if b < len(x)]


def run_river(s: Series, kind: str, kwargs: dict[str, Any]) -> list[tuple[int, int]]:
    """A river detector over the stream: each detection is a prediction where it fires."""
    from river import drift

    det = getattr(drift, kind)(**kwargs)
    hits = []
    for i, v in enumerate(s.x.tolist()):
        det.update(v)
        if det.drift_detected:
            hits.append((i, i))
    return hits


RIVER: list[tuple[str, str, dict[str, Any]]] = [
    ("ADWIN (defaults)", "ADWIN", {}),
    ("ADWIN δ 1e-6", "ADWIN", {"delta": 1e-6}),
    ("PageHinkley (defaults)", "PageHinkley", {}),
    ("PageHinkley 150, δ 0.5", "PageHinkley", {"threshold": 150.0, "delta": 0.5}),
    ("KSWIN (defaults)", "KSWIN", {"seed": 7}),
    ("KSWIN α 1e-6", "KSWIN", {"alpha": 1e-6, "seed": 7}),
]
OURS = ["driftgate, no config", "driftgate, kind defaults", "driftgate, kind defaults: changepoint"]
RUPTURES = ["ruptures PELT (l2, pen log n·σ²)", "ruptures Binseg (l2, pen log n·σ²)"]


def _cut(s: Series, n: int) -> Series:
    """A control's first n readings (for the slow methods)."""
    return Series(s.family, s.rep, s.rate, s.ns[:n], s.x[:n], ()) if s.control else s


def work(task: tuple[str, int, bool, bool]) -> dict[str, Any]:
    """Every method on one stream (in a worker process)."""
    family, rep, kswin, quick = task
    s = make_series(family, rep)
    cut = CUT_QUICK if quick else CUT
    res: dict[str, Score] = {}
    cpu: dict[str, float] = {}
    seen: dict[str, int] = {}

    def timed(key: str, t0: float) -> None:
        cpu[key] = cpu.get(key, 0.0) + time.process_time() - t0

    t0 = time.process_time()
    plain = run_driftgate(s, "no config")
    res[OURS[0]] = score(s, plain["all"])
    kinds = run_driftgate(s, "kind defaults")
    res[OURS[1]] = score(s, kinds["all"])
    res[OURS[2]] = score(s, kinds["changepoint"])
    timed("driftgate", t0)
    t0 = time.process_time()
    short = _cut(s, cut["ruptures"])
    for name, algo in zip(RUPTURES, ("PELT", "Binseg"), strict=True):
        res[name] = score(short, run_ruptures(short, algo))
        seen[name] = len(short.x)
    timed("ruptures", t0)
    for label, kind, kwargs in RIVER:
        if kind == "KSWIN":
            if not kswin:
                continue
            short = _cut(s, cut["KSWIN"])
            t0 = time.process_time()
            res[label] = score(short, run_river(short, kind, kwargs))
            seen[label] = len(short.x)
            timed("river KSWIN", t0)
            continue
        t0 = time.process_time()
        res[label] = score(s, run_river(s, kind, kwargs))
        timed("river ADWIN+PH", t0)
    return {"family": family, "rep": rep, "rate": s.rate, "n": len(s.x), "cps": len(s.cps),
            "seen": seen, "res": res, "cpu": cpu}  # fmt: skip


# --- Aggregation and output -------------------------------------------------------------------


def _mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else math.nan


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _round(x: float, digits: int = 3) -> float | None:
    return None if math.isnan(x) else round(x, digits)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer streams (~1.5 min)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    _common.quiet_logs()  # no "new channel" line per replayed stream
    m = _common.print_header(
        "Change points: labelled multi-change streams, driftgate beside ruptures and river"
    )
    reps, ctrl_reps, ks_reps = (5, 2, 1) if args.quick else (15, 5, 3)
    tasks = [(f, r, r < ks_reps, args.quick) for f in FAMILIES for r in range(reps)]
    tasks += [(c, r, r < 1, args.quick) for c in CONTROLS for r in range(ctrl_reps)]
    tasks.sort(key=lambda t: (not t[2], t[0] not in CONTROLS))  # slow ones first
    print(
        f"{len(FAMILIES)} multi-change families x {reps} streams, {len(CONTROLS)} controls x "
        f"{ctrl_reps} x {CONTROL_N:,} readings; rates {', '.join(f'{r:g} s' for r in RATES)} "
        f"(daily cycle: {', '.join(f'{r:g} s' for r in DAILY_RATES)}); F1 margin {MARGIN}"
    )
    cut = CUT_QUICK if args.quick else CUT
    print(
        f"river KSWIN on {ks_reps} stream(s) per family and 1 per control cut to "
        f"{cut['KSWIN']:,} readings; ruptures on controls cut to {cut['ruptures']:,}"
    )
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers) as pool:
        results = pool.map(work, tasks, chunksize=1)
    wall = time.perf_counter() - t0
    cpu: dict[str, float] = {}
    for r in results:
        for k, v in r["cpu"].items():
            cpu[k] = cpu.get(k, 0.0) + v
    samples = sum(r["n"] for r in results)
    print(
        f"{samples:,} readings ({sum(r['cps'] for r in results)} labelled changes) in "
        f"{wall:.0f} s wall ({args.workers} workers); CPU s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    )
    print()

    methods = OURS + RUPTURES + [label for label, _, _ in RIVER]
    summary: dict[str, dict[str, Any]] = {}
    rows_f1 = []
    rows_all = []
    for name in methods:
        per_family: dict[str, dict[str, Any]] = {}
        f1s_all, covs_all, dels_all = [], [], []
        fa_pred, fa_n = 0, 0
        for fam in FAMILIES:
            scores = [r["res"][name] for r in results if r["family"] == fam and name in r["res"]]
            f1s = [sc.f1 for sc in scores]
            covs = [sc.covering for sc in scores]
            dels = [d for sc in scores for d in sc.delays]
            f1s_all += f1s
            covs_all += covs
            dels_all += dels
            per_family[fam] = {"f1": _round(_mean(f1s)), "covering": _round(_mean(covs)),
                               "delay_median": statistics.median(dels) if dels else None,
                               "streams": len(scores)}  # fmt: skip
        per_control: dict[str, Any] = {}
        for c in CONTROLS:
            rs = [r for r in results if r["family"] == c and name in r["res"]]
            preds = sum(r["res"][name].predictions for r in rs)
            n = sum(r["seen"].get(name, r["n"]) for r in rs)
            fa_pred += preds
            fa_n += n
            per_control[c] = _round(1e5 * preds / n if n else math.nan)
        fa = 1e5 * fa_pred / fa_n if fa_n else math.nan
        fa_no_daily = _fa(results, name, [c for c in CONTROLS if c != "daily cycle"])
        summary[name] = {
            "f1": _round(_mean(f1s_all)),
            "covering": _round(_mean(covs_all)),
            "delay_median": statistics.median(dels_all) if dels_all else None,
            "fa_per_100k": _round(fa),
            "fa_per_100k_controls": per_control,
            "families": per_family,
            "streams": len(f1s_all),
        }
        delay = summary[name]["delay_median"]
        rows_all.append([name, _num(summary[name]["f1"]),
                         _num(summary[name]["covering"]),
                         "–" if delay is None else f"{delay:.0f}", _num(fa, 1),
                         _num(fa_no_daily, 1), len(f1s_all)])  # fmt: skip
        rows_f1.append([name, *[_num(per_family[f]["f1"]) for f in FAMILIES]])
    print("Over the multi-change suite (F1 and covering: mean per stream; delay: median, in "
          "readings; FA: per 100,000 readings of the controls)")  # fmt: skip
    _common.table(["method", "F1", "covering", "delay", "FA/100k", "FA/100k no cycle",
                   "streams"], rows_all)  # fmt: skip
    print()
    print("F1 per family")
    _common.table(["method", *FAMILIES], rows_f1)
    print()
    print("covering per family")
    _common.table(
        ["method", *FAMILIES],
        [[n, *[_num(summary[n]["families"][f]["covering"]) for f in FAMILIES]]
         for n in methods],
    )  # fmt: skip
    print()
    print("false alarms per 100,000 readings, per control")
    _common.table(
        ["method", *CONTROLS],
        [[n, *[_num(summary[n]["fa_per_100k_controls"][c], 1) for c in CONTROLS]]
         for n in methods],
    )  # fmt: skip
    print()

    ours = summary[OURS[0]]
    river_best = max((summary[label]["f1"] or 0.0) for label, _, _ in RIVER)
    binseg = summary[RUPTURES[1]]["f1"] or 0.0
    verdict = {
        "f1_no_config": ours["f1"],
        "f1_binseg": binseg,
        "f1_best_river": river_best,
        "beats_river": (ours["f1"] or 0.0) > river_best,
        "reaches_binseg": (ours["f1"] or 0.0) >= binseg,
        "fa_ok": (ours["fa_per_100k"] or 0.0) <= FA_TARGET,
    }
    verdict["all_targets"] = bool(
        verdict["beats_river"] and verdict["reaches_binseg"] and verdict["fa_ok"]
    )
    print(
        f"targets: no config F1 {ours['f1']} vs best river {river_best} "
        f"({'beats' if verdict['beats_river'] else 'does NOT beat'} it), vs Binseg {binseg} "
        f"({'reaches' if verdict['reaches_binseg'] else 'does NOT reach'} it); FA "
        f"{ours['fa_per_100k']}/100k ({'≤' if verdict['fa_ok'] else '>'} {FA_TARGET:g}) → "
        f"{'MET' if verdict['all_targets'] else 'NOT MET'}"
    )
    _common.emit_json(
        "changepoints",
        m,
        quick=args.quick,
        wall_s=round(wall, 1),
        samples=int(samples),
        margin=MARGIN,
        streams={"per_family": reps, "per_control": ctrl_reps, "control_readings": CONTROL_N},
        verdict=verdict,
        results=_plain(summary),
    )


def _plain(obj: Any) -> Any:
    """NumPy scalars (a median of delays, a count) as the Python numbers JSON takes."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def _fa(results: list[dict[str, Any]], name: str, controls: list[str]) -> float:
    rs = [r for r in results if r["family"] in controls and name in r["res"]]
    preds = sum(r["res"][name].predictions for r in rs)
    n = sum(r["seen"].get(name, r["n"]) for r in rs)
    return 1e5 * preds / n if n else math.nan


if __name__ == "__main__":
    main()
