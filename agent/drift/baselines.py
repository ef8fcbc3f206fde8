"""What a channel's detectors compare against, kept in state_dir so a restart compares like
with like: a locked baseline (the approved sample's conditions), else a long rolling window.

A baseline learned from the first ``learn`` of readings is learned robustly: the median and
the MAD (a few outliers do not move them), from the *stable part* of the span when the level
changed within it (``stable_part``: the longest stretch without a change, and the description
says so), with the lag-1 autocorrelation measured on the readings with their linear trend
removed (a slow trend is not noise that wanders). With ``season``, the daily (weekly) profile
is learned first (``agent/drift/seasonal.py``) and all of this on what it leaves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.config.detectors import BaselineSpecConfig
from agent.drift.ring import Window
from agent.drift.seasonal import Profile, fit_profile
from agent.words import duration_words

PHI_CAP = 0.9
"""The largest lag-1 autocorrelation CUSUM and EWMA allow for (σ widened at most 4.4×)."""
MAX_KEEP = 1 << 16
"""Learning readings kept at most (every other one dropped, and then every fourth, beyond)."""
STABLE_BLOCKS = 16
"""The learning span is cut into this many blocks to look for a change within it."""
STABLE_T = 5.0
"""A difference of block means this many standard errors apart is a change (16 blocks: a
false split is rare, a shift of 1 σ over days of readings is found)."""
STABLE_SIZE = 0.5
"""...and only when it is at least this many σ of the readings (material, not just certain)."""


def day(ts_ns: int) -> str:
    """A date as an alert quotes it."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class Baseline:
    """Mean and spread of a channel over a span, and where they came from."""

    mean: float
    std: float
    n: int
    start_ns: int
    end_ns: int
    source: str  # "configured", "learned" or "captured"
    note: str = ""
    phi: float = 0.0  # lag-1 autocorrelation of the readings (0: unknown or independent)
    daily: tuple[float, ...] = ()  # the learned profile (seasonal.Profile), empty: none
    weekly: tuple[float, ...] = ()

    @property
    def inflation(self) -> float:
        """How much wider the spread of sums is than for independent readings: √((1+φ)/(1−φ)).

        CUSUM and EWMA assume independent readings; real sensors drift slowly between readings
        (AR(1)), which would make them alarm on noise. Scaling σ by this keeps their false-alarm
        rate where the benchmark puts it (bench/detector_quality.py, AR(1) control). φ is
        capped (PHI_CAP), so a channel is never made deaf by it.
        """
        phi = min(max(self.phi, 0.0), PHI_CAP)
        return math.sqrt((1.0 + phi) / (1.0 - phi))

    @property
    def profile(self) -> Profile | None:
        """The daily (weekly) profile learned with it, if any."""
        return Profile(self.daily, self.weekly) if self.daily else None

    def describe(self) -> str:
        """Where the baseline comes from, in words an alert can quote."""
        if self.source == "configured":
            return "configured"
        what = "learned" if self.source == "learned" else "captured"
        extra = f", {self.note}" if self.note else ""
        cycle = ""
        if self.daily:
            cycle = (
                ", weekly and daily cycle taken out" if self.weekly else ", daily cycle taken out"
            )
        return f"{what} {day(self.start_ns)} to {day(self.end_ns)}{extra}{cycle}"


def span(seconds: float) -> str:
    """A span as a report says it: '3 d', '13 h', '2 h 30 min', '45 min'."""
    return duration_words(seconds).removesuffix(" 0 h").removesuffix(" 0 min")


def _from_json(value: dict[str, Any]) -> Baseline:
    fields = dict(value)
    for key in ("daily", "weekly"):
        fields[key] = tuple(fields.get(key, ()))
    return Baseline(**fields)


class BaselineStore:
    """A small JSON file of locked baselines keyed by channel name; written atomically.

    The running agent re-reads it when it changes (``reload``), so a baseline captured with the
    CLI applies within a second.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Baseline] = {}
        self._mtime: float | None = None
        self._unsaved: set[str] = set()  # learned in memory, written by the next save()
        self.reload()

    def reload(self) -> bool:
        """Read the file if it changed since the last read; True if it did."""
        if self.path is None or not self.path.exists():
            changed = bool(self._data) and self._mtime is not None
            if changed:
                self._data = {}
                self._mtime = None
            return changed
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return False
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        data = {key: _from_json(value) for key, value in raw.items()}
        for key in self._unsaved - set(data):  # learned here, not on disk yet: keep it
            data[key] = self._data[key]
        self._data = data
        self._mtime = mtime
        return True

    def remove(self, key: str) -> bool:
        """Forget a locked baseline; True if there was one."""
        if key not in self._data:
            return False
        del self._data[key]
        self._write()
        return True

    def get(self, key: str) -> Baseline | None:
        """The stored baseline for a key, if any."""
        return self._data.get(key)

    def put(self, key: str, baseline: Baseline, *, write: bool = True) -> None:
        """Store a baseline and write the file (rare: once per learned or captured baseline).

        ``write=False`` keeps it in memory until ``save()``: detection runs on the event loop
        and must not wait on the disk, so the agent saves from a thread soon after.
        """
        self._data[key] = baseline
        if write:
            self._write()
        else:
            self._unsaved.add(key)

    @property
    def unsaved(self) -> bool:
        """Whether baselines learned in memory wait for ``save()``."""
        return bool(self._unsaved)

    def save(self) -> None:
        """Write baselines learned in memory (from a thread: it touches the disk)."""
        if self._unsaved:
            self._write()

    def _write(self) -> None:
        unsaved = set(self._unsaved)
        self._unsaved.clear()
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            payload = {k: asdict(v) for k, v in sorted(self._data.items())}
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            self._unsaved |= unsaved  # a full disk: saved at a later tick instead
            raise
        self._mtime = self.path.stat().st_mtime

    def items(self) -> list[tuple[str, Baseline]]:
        """All stored baselines, sorted by key."""
        return sorted(self._data.items())


class ChannelBaseline:
    """A channel's baseline for every reading: locked if there is one, else rolling.

    Locked means configured (``value``), captured with the CLI, or learned automatically over
    the first ``learn`` seconds of readings and then frozen. Rolling means the mean and std of
    the last ``window``, judged ready once it covers half that span. With ``season``, the
    detectors that judge the level see the readings with the learned profile taken out
    (``adjust_many``) once it is learned, and nothing before.
    """

    def __init__(
        self,
        channel_name: str,
        spec: BaselineSpecConfig,
        store: BaselineStore,
        on_learned: Callable[[Baseline], None] | None = None,
    ) -> None:
        self.name = channel_name
        self.store = store
        self.on_learned = on_learned
        self.locked: Baseline | None = None
        self.judging = False  # update_one's stats came from a settled baseline
        self.settled_from = 0  # update_many: the first reading judged against a settled one
        self.view_from = 0  # ...as an index into the arrays a detector was given (describe)
        self.just_locked = False  # update_one locked it at this reading (judged before it)
        self.resize(spec)
        if spec.value is not None:
            self.locked = Baseline(spec.value, spec.std or math.nan, 0, 0, 0, "configured")
        else:
            self.lock(store.get(channel_name))

    def resize(self, spec: BaselineSpecConfig) -> None:
        """Use these settings (the kind's, sized to the channel's interval) from now on."""
        self.spec = spec
        self.rolling = Window(spec.window, max_samples=1_000_000)
        self._min_cover = 0.5 * spec.window
        self._forget()

    def _forget(self) -> None:
        """Drop what was gathered towards a learned baseline."""
        self._seen = 0  # readings of the span so far
        self._every = 1  # keep every n-th of them
        self._lstart = math.nan
        self._lt = np.empty(256)
        self._lx = np.empty(256)
        self._kept = 0

    @property
    def settled(self) -> bool:
        """Whether per-reading charts (CUSUM, EWMA) may run: a baseline is locked, or none will
        ever be (no `learn`). A rolling baseline still learning would let them chase noise."""
        return self.locked is not None or self.spec.learn is None

    @property
    def seasonal(self) -> bool:
        """Whether the level is judged with a learned profile taken out."""
        return self.spec.season != "none"

    @property
    def inflation(self) -> float:
        """σ inflation for per-reading charts (CUSUM, EWMA) from the locked baseline's φ."""
        return self.locked.inflation if self.locked is not None else 1.0

    @property
    def mean(self) -> float:
        """The locked mean, or NaN."""
        return self.locked.mean if self.locked is not None else math.nan

    @property
    def gathered(self) -> tuple[float, int]:
        """Towards a learned baseline: seconds covered and readings seen so far."""
        if not self._seen:
            return 0.0, 0
        return float(self._lt[self._kept - 1] - self._lstart), self._seen

    def describe(self, j: int = -1) -> str:
        """Where the numbers come from, as an alert quotes them; for reading j of the batch a
        detector was given (-1: the reading update_one just took), which may predate a lock."""
        before = self.just_locked if j < 0 else j < self.view_from
        if self.locked is not None and not before:
            return self.locked.describe()
        span = self.spec.window
        days = span / 86400.0
        return f"rolling {days:g} d mean" if days >= 1 else f"rolling {span / 3600:g} h mean"

    def needs(self) -> str:
        """What a learned baseline still waits for, in words ('3 d of readings')."""
        learn = self.spec.learn
        what = (
            f"{duration_words(learn).removesuffix(' 0 h').removesuffix(' 0 min')}" if learn else ""
        )
        return f"{what} of readings (at least {self.spec.min_samples})"

    def lock(self, baseline: Baseline | None) -> None:
        """Compare against this baseline from now on (None: back to the rolling window)."""
        if self.spec.value is not None:
            return  # a configured value wins over captures
        if baseline is None and self.locked is not None:
            self._forget()  # cleared: a kind that learns learns anew from here, not at once
        elif baseline is not None and self.seasonal and not baseline.daily:
            baseline = self._keep_profile(baseline)
            if not baseline.daily and baseline.source == "learned":
                # Learned without the profile this channel is judged against (by a version
                # before profiles): its σ holds the daily swing and its level a time of day.
                # Learned anew, with the profile, as if there were none (a capture stays).
                return
        self.locked = baseline

    def _keep_profile(self, captured: Baseline) -> Baseline:
        """A capture on a seasonal channel keeps the profile learned before: its level is the
        captured mean less the profile's average over the captured span."""
        old = self.locked
        if old is None or old.profile is None:
            return captured
        profile = old.profile
        times = np.linspace(captured.start_ns / 1e9, captured.end_ns / 1e9, 257)
        offset = float(profile.many(times).mean())
        return dataclasses.replace(
            captured, mean=captured.mean - offset, daily=old.daily, weekly=old.weekly,
            phi=old.phi,
        )  # fmt: skip

    def restart(self) -> None:
        """The wall clock stepped back: the rolling window, and a baseline still being learned,
        start afresh (a locked one stays)."""
        self.rolling.clear()
        if self.locked is None:
            self._forget()

    def reload(self) -> None:
        """Pick up a capture or clear from the store."""
        self.lock(self.store.get(self.name))

    # -- the detectors' view -------------------------------------------------------------------

    def adjust_one(self, t: float, x: float) -> float:
        """The reading as the level detectors judge it (profile taken out); NaN while a
        seasonal channel's profile is not learned yet."""
        if not self.seasonal:
            return x
        if not self.judging or self.locked is None:
            return math.nan
        profile = self.locked.profile
        return x - profile.at(t) if profile is not None else x

    def adjust_many(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The batch as the level detectors judge it, and the first index they judge (after
        ``update_many``: a seasonal channel's readings count from its lock on)."""
        if not self.seasonal:
            return x, 0
        begin = self.settled_from
        if self.locked is None or begin >= len(x):
            return x, len(x)
        profile = self.locked.profile
        if profile is None:
            return x, begin
        out = x.copy()
        out[begin:] -= profile.many(t[begin:])
        return out, begin

    def update_one(self, t: float, x: float) -> tuple[float, float]:
        """Feed one reading; the (mean, std) to compare it with (NaN, NaN) until known."""
        locked = self.locked
        self.just_locked = False
        if locked is None:
            self.judging = self.spec.learn is None
            if self.spec.learn is not None:
                self.just_locked = self._gather(np.array([t]), np.array([x])) is not None
            w = self.rolling
            w.add(t, x)
            if w.n >= self.spec.min_samples and t - w.oldest >= self._min_cover:
                return w.mean(), w.std()
            return math.nan, math.nan
        self.judging = True
        return locked.mean, locked.std

    def update_many(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed a batch; per-reading (mean, std) arrays (NaN where not known yet)."""
        m = len(t)
        locked = self.locked
        if locked is not None:
            self.settled_from = 0
            return np.full(m, locked.mean), np.full(m, locked.std)
        self.settled_from = 0 if self.spec.learn is None else m
        stats = self.rolling.extend(t, x)
        ready = (stats.n >= self.spec.min_samples) & (t - stats.oldest >= self._min_cover)
        mean = np.where(ready, stats.mean, np.nan)
        std = np.where(ready, np.sqrt(stats.var), np.nan)
        if self.spec.learn is not None:
            done = self._gather(t, x)
            if done is not None and done + 1 < m:
                base = self.locked
                assert base is not None
                mean[done + 1 :] = base.mean
                std[done + 1 :] = base.std
            if done is not None:
                self.settled_from = done + 1
        return mean, std

    # -- learning ------------------------------------------------------------------------------

    def _gather(self, t: np.ndarray, x: np.ndarray) -> int | None:
        """Keep readings of the learning span; the index of the one that completed it, if any."""
        learn = self.spec.learn
        assert learn is not None
        m = len(t)
        if self._seen == 0:
            self._lstart = float(t[0])
        counts = self._seen + np.arange(1, m + 1)
        hits = np.flatnonzero((t - self._lstart >= learn) & (counts >= self.spec.min_samples))
        upto = int(hits[0]) + 1 if hits.size else m
        index = self._seen + np.arange(upto)
        keep = index % self._every == 0
        self._append(t[:upto][keep], x[:upto][keep])
        self._seen += upto
        if not hits.size:
            return None
        self._freeze(float(t[upto - 1]))
        return upto - 1

    def _append(self, t: np.ndarray, x: np.ndarray) -> None:
        need = self._kept + len(t)
        if need > len(self._lt):
            size = max(need, 2 * len(self._lt))
            self._lt = np.resize(self._lt, size)
            self._lx = np.resize(self._lx, size)
        self._lt[self._kept : need] = t
        self._lx[self._kept : need] = x
        self._kept = need
        if self._kept > MAX_KEEP:  # keep every other one (those at multiples of 2 × every)
            self._lt = self._lt[: self._kept : 2].copy()
            self._lx = self._lx[: self._kept : 2].copy()
            self._kept = len(self._lt)
            self._every *= 2

    def _freeze(self, t_end: float) -> None:
        t = self._lt[: self._kept].copy()
        x = self._lx[: self._kept].copy()
        profile = fit_profile(t, x, weekly=self.spec.season == "weekly") if self.seasonal else None
        r = x - profile.many(t) if profile is not None else x
        a, b, note = stable_part(t, r)
        part_t, part = t[a:b], r[a:b]
        level, std = robust(part)
        learned = Baseline(
            mean=level,
            std=std,
            phi=round(lag1(part_t, part, self._every), 4),
            n=len(part) * self._every,
            start_ns=int(part_t[0] * 1e9),
            end_ns=int((part_t[-1] if b < len(t) else t_end) * 1e9),
            source="learned",
            note=note,
            daily=profile.daily if profile is not None else (),
            weekly=profile.weekly if profile is not None else (),
        )
        self._forget()
        self.locked = learned
        self.store.put(self.name, learned, write=False)
        if self.on_learned is not None:
            self.on_learned(learned)


def robust(x: np.ndarray) -> tuple[float, float]:
    """A robust level and σ: Huber's M-estimate of location (readings beyond 1.345 σ from it
    count as if at that distance) and the MAD (as σ for normal noise); a handful of outliers
    moves neither. The standard deviation stands in when more than half the readings are equal."""
    med = float(np.median(x))
    scale = 1.4826 * float(np.median(np.abs(x - med)))
    if not scale > 0:
        scale = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    level = med
    if scale > 0:
        for _ in range(20):
            step = float(np.clip(x - level, -1.345 * scale, 1.345 * scale).mean())
            level += step
            if abs(step) < 1e-9 * scale:
                break
    return level, scale


def lag1(t: np.ndarray, x: np.ndarray, every: int = 1) -> float:
    """Lag-1 autocorrelation of readings with their linear trend removed (from readings kept
    ``every`` apart: φ_every, taken back to one reading apart as AR(1) would)."""
    n = len(x)
    if n < 3:
        return 0.0
    tt = t - t.mean()
    denom = float(tt @ tt)
    resid = x - x.mean() - (tt * (float(tt @ (x - x.mean())) / denom) if denom > 0 else 0.0)
    var = float(resid @ resid)
    if not var > 0:
        return 0.0
    phi = float(resid[1:] @ resid[:-1]) / var
    if every > 1:
        phi = phi ** (1.0 / every) if phi > 0 else 0.0
    return min(max(phi, -1.0), 1.0)


def stable_part(t: np.ndarray, r: np.ndarray) -> tuple[int, int, str]:
    """The longest stretch of the learning span without a change of level: (start, end) indices
    into r and a note for the baseline's description ('' when the whole span is stable).

    Binary segmentation on STABLE_BLOCKS block means: a split counts when the means either side
    differ by STABLE_T standard errors (the block means' noise measured from their successive
    differences, so a step between two blocks does not hide itself) and by STABLE_SIZE σ.
    """
    n = len(r)
    blocks = min(STABLE_BLOCKS, n // 8)
    if blocks < 4:
        return 0, n, ""
    edges = np.linspace(0, n, blocks + 1).astype(np.int64)
    means = np.array([r[edges[i] : edges[i + 1]].mean() for i in range(blocks)])
    noise = 1.4826 * float(np.median(np.abs(np.diff(means)))) / math.sqrt(2.0)
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    if not noise > 0:
        return 0, n, ""
    cuts: list[int] = []

    def split(lo: int, hi: int, depth: int) -> None:
        if hi - lo < 4 or depth > 3:
            return
        best, where = 0.0, -1
        for p in range(lo + 2, hi - 1):
            left, right = means[lo:p], means[p:hi]
            gap = abs(float(left.mean() - right.mean()))
            score = gap / (noise * math.sqrt(1 / len(left) + 1 / len(right)))
            if score > best and gap >= STABLE_SIZE * sigma:
                best, where = score, p
        if where < 0 or best < STABLE_T:
            return
        cuts.append(where)
        split(lo, where, depth + 1)
        split(where, hi, depth + 1)

    split(0, blocks, 0)
    if not cuts:
        return 0, n, ""
    bounds = [0, *sorted(cuts), blocks]
    longest = max(range(len(bounds) - 1), key=lambda i: bounds[i + 1] - bounds[i])
    a, b = int(edges[bounds[longest]]), int(edges[bounds[longest + 1]])
    changes = ", ".join(
        datetime.fromtimestamp(float(t[edges[c]]), UTC).strftime("%Y-%m-%d %H:%M") for c in cuts
    )
    left = "a change" if len(cuts) == 1 else "changes"
    note = (
        f"from its stable part {when_short(t[a])} to {when_short(t[b - 1])} "
        f"({left} at {changes} UTC left out)"
    )
    return a, b, note


def when_short(t: float) -> str:
    """A time as a baseline's note gives it: 2026-11-02 06:00."""
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M")
