"""What a channel's detectors compare against, kept in state_dir so a restart compares like
with like: a locked baseline (the approved sample's conditions), else a long rolling window."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.config.detectors import BaselineSpecConfig
from agent.drift.ring import Window


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

    @property
    def inflation(self) -> float:
        """How much wider the spread of sums is than for independent readings: √((1+φ)/(1−φ)).

        CUSUM and EWMA assume independent readings; real sensors drift slowly between readings
        (AR(1)), which would make them alarm on noise. Scaling σ by this keeps their false-alarm
        rate where the benchmark puts it (bench/detector_quality.py, AR(1) control).
        """
        phi = min(max(self.phi, 0.0), 0.95)
        return math.sqrt((1.0 + phi) / (1.0 - phi))

    def describe(self) -> str:
        """Where the baseline comes from, in words an alert can quote."""
        if self.source == "configured":
            return "configured"
        what = "learned" if self.source == "learned" else "captured"
        extra = f", {self.note}" if self.note else ""
        return f"{what} {day(self.start_ns)} to {day(self.end_ns)}{extra}"


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
        data = {key: Baseline(**value) for key, value in raw.items()}
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
    the first ``learn`` seconds of readings. Rolling means the mean and std of the last
    ``window``, judged ready once it covers half that span.
    """

    def __init__(
        self,
        channel_name: str,
        spec: BaselineSpecConfig,
        store: BaselineStore,
        on_learned: Callable[[Baseline], None] | None = None,
    ) -> None:
        self.name = channel_name
        self.spec = spec
        self.store = store
        self.on_learned = on_learned
        self.locked: Baseline | None = None
        if spec.value is not None:
            self.locked = Baseline(spec.value, spec.std or math.nan, 0, 0, 0, "configured")
        else:
            self.locked = store.get(channel_name)
        self.rolling = Window(spec.window, max_samples=1_000_000)
        self._min_cover = 0.5 * spec.window
        self._ln = 0
        self._lmean = 0.0
        self._lm2 = 0.0
        self._lstart = math.nan
        # Lag-1 sums for the autocorrelation, on values shifted by the first one (precision).
        self._lorig = 0.0
        self._lsum = 0.0
        self._llag = 0.0
        self._lprev = 0.0

    @property
    def settled(self) -> bool:
        """Whether per-reading charts (CUSUM, EWMA) may run: a baseline is locked, or none will
        ever be (no `learn`). A rolling baseline still learning would let them chase noise."""
        return self.locked is not None or self.spec.learn is None

    @property
    def inflation(self) -> float:
        """σ inflation for per-reading charts (CUSUM, EWMA) from the locked baseline's φ."""
        return self.locked.inflation if self.locked is not None else 1.0

    @property
    def mean(self) -> float:
        """The locked mean, or NaN."""
        return self.locked.mean if self.locked is not None else math.nan

    def describe(self) -> str:
        """Where the numbers come from, as an alert quotes them."""
        if self.locked is not None:
            return self.locked.describe()
        span = self.spec.window
        days = span / 86400.0
        return f"rolling {days:g} d mean" if days >= 1 else f"rolling {span / 3600:g} h mean"

    def lock(self, baseline: Baseline | None) -> None:
        """Compare against this baseline from now on (None: back to the rolling window)."""
        if self.spec.value is not None:
            return  # a configured value wins over captures
        if baseline is None and self.locked is not None:
            self._ln = 0  # cleared: a kind that learns learns anew from here, not at once
            self._lmean = 0.0
            self._lm2 = 0.0
        self.locked = baseline

    def restart(self) -> None:
        """The wall clock stepped back: the rolling window, and a baseline still being learned,
        start afresh (a locked one stays)."""
        self.rolling.clear()
        if self.locked is None:
            self._ln = 0
            self._lmean = 0.0
            self._lm2 = 0.0
            self._lsum = 0.0
            self._llag = 0.0
            self._lprev = 0.0

    def reload(self) -> None:
        """Pick up a capture or clear from the store."""
        self.lock(self.store.get(self.name))

    def update_one(self, t: float, x: float) -> tuple[float, float]:
        """Feed one reading; the (mean, std) to compare it with (NaN, NaN) until known."""
        locked = self.locked
        if locked is None:
            if self.spec.learn is not None:
                self._learn_one(t, x)
            w = self.rolling
            w.add(t, x)
            if w.n >= self.spec.min_samples and t - w.oldest >= self._min_cover:
                return w.mean(), w.std()
            return math.nan, math.nan
        return locked.mean, locked.std

    def update_many(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed a batch; per-reading (mean, std) arrays (NaN where not known yet)."""
        m = len(t)
        locked = self.locked
        if locked is not None:
            return np.full(m, locked.mean), np.full(m, locked.std)
        stats = self.rolling.extend(t, x)
        ready = (stats.n >= self.spec.min_samples) & (t - stats.oldest >= self._min_cover)
        mean = np.where(ready, stats.mean, np.nan)
        std = np.where(ready, np.sqrt(stats.var), np.nan)
        if self.spec.learn is not None:
            done = self._learn_many(t, x)
            if done is not None and done + 1 < m:
                base = self.locked
                assert base is not None
                mean[done + 1 :] = base.mean
                std[done + 1 :] = base.std
        return mean, std

    def _learn_one(self, t: float, x: float) -> None:
        if self._ln == 0:
            self._lstart = t
            self._lorig = x
        y = x - self._lorig
        if self._ln:
            self._llag += y * self._lprev
        self._lsum += y
        self._lprev = y
        self._ln += 1
        d = x - self._lmean
        self._lmean += d / self._ln
        self._lm2 += d * (x - self._lmean)
        assert self.spec.learn is not None
        if t - self._lstart >= self.spec.learn and self._ln >= self.spec.min_samples:
            self._freeze(t)

    def _learn_many(self, t: np.ndarray, x: np.ndarray) -> int | None:
        """Learn from the batch; the index of the reading that completed the baseline, if any."""
        assert self.spec.learn is not None
        m = len(t)
        if self._ln == 0:
            self._lstart = float(t[0])
            self._lorig = float(x[0])
        counts = self._ln + np.arange(1, m + 1)
        hits = np.flatnonzero(
            (t - self._lstart >= self.spec.learn) & (counts >= self.spec.min_samples)
        )
        upto = int(hits[0]) + 1 if hits.size else m
        part = x[:upto]
        y = part - self._lorig
        self._llag += float(y[1:] @ y[:-1]) + (y[0] * self._lprev if self._ln else 0.0)
        self._lsum += float(y.sum())
        self._lprev = float(y[-1])
        nb = len(part)
        mb = float(part.mean())
        m2b = float(((part - mb) ** 2).sum())
        n = self._ln + nb
        d = mb - self._lmean
        self._lm2 += m2b + d * d * self._ln * nb / n
        self._lmean += d * nb / n
        self._ln = n
        if not hits.size:
            return None
        self._freeze(float(t[upto - 1]))
        return upto - 1

    def _freeze(self, t_end: float) -> None:
        n = self._ln
        phi = 0.0
        if n > 2 and self._lm2 > 0:
            ybar = self._lsum / n
            lag = self._llag - ybar * (2 * self._lsum - self._lprev) + (n - 1) * ybar * ybar
            phi = lag / self._lm2
        learned = Baseline(
            mean=self._lmean,
            std=math.sqrt(self._lm2 / (n - 1)) if n > 1 else 0.0,
            phi=round(phi, 4),
            n=n,
            start_ns=int(self._lstart * 1e9),
            end_ns=int(t_end * 1e9),
            source="learned",
        )
        self.locked = learned
        self.store.put(self.name, learned, write=False)
        if self.on_learned is not None:
            self.on_learned(learned)
