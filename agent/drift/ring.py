"""A sliding window over (time, value) samples with O(1) running statistics.

The window lives in a growable ring of two ``array('d')`` buffers (16 bytes per sample) and keeps
shifted running sums, so mean, variance and the least-squares slope cost O(1) per sample
whatever the window size.

Floating-point guard: running sums that add and subtract for ever accumulate rounding error,
and sums of raw timestamps (1.7e9 s) lose everything to cancellation. So the sums are kept
relative to an origin (``k`` for values, ``t0`` for times) near the window's centre, and every
``max(n, 1024)`` samples the sums are recomputed exactly from the buffer with NumPy and the
origin is moved. That is O(n) work every n samples: amortised O(1), flat across sizes.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

_MIN_CAPACITY = 64
_MIN_RECOMPUTE = 1024


class Window:
    """Samples of the last ``span`` seconds (at most ``max_samples`` of them), with running sums.

    ``trend=True`` also keeps the time sums the least-squares slope needs.
    """

    __slots__ = (
        "_cap",
        "_since_recompute",
        "_times",
        "_values",
        "head",
        "k",
        "max_samples",
        "n",
        "span",
        "st",
        "stt",
        "stx",
        "sx",
        "sxx",
        "t0",
        "tail",
        "trend",
        "truncated",
    )

    def __init__(self, span: float = math.inf, max_samples: int = 100_000, trend: bool = False):
        if max_samples < 2:
            raise ValueError("a window needs room for at least two samples")
        self.span = span
        self.max_samples = max_samples
        self.trend = trend
        self._cap = min(max_samples, _MIN_CAPACITY) if math.isfinite(span) else max_samples
        self._times = array("d", bytes(8 * self._cap))
        self._values = array("d", bytes(8 * self._cap))
        self.head = 0  # absolute index of the next sample
        self.tail = 0  # absolute index of the oldest sample in the window
        self.n = 0
        self.k = 0.0
        self.t0 = 0.0
        self.sx = self.sxx = self.st = self.stt = self.stx = 0.0
        self._since_recompute = 0
        self.truncated = False  # set when max_samples, not span, bounded the window

    def add(self, t: float, x: float) -> None:
        """Add a sample at time ``t`` (seconds), evicting what fell out of the window."""
        # The agent's innermost loop: locals instead of attribute lookups, and in the steady
        # state (one sample in, one out) eviction and insertion update the sums in one step.
        n = self.n
        if n == 0:
            self.k = x
            self.t0 = t
        elif n >= self._cap or self._times[self.tail % self._cap] < t - self.span:
            if n >= self._cap and self._cap < self.max_samples:
                self._grow()
            else:
                self._replace_oldest(t, x)
                return
        cap = self._cap
        i = self.head % cap
        self._times[i] = t
        self._values[i] = x
        self.head += 1
        self.n = n = n + 1
        dx = x - self.k
        self.sx += dx
        self.sxx += dx * dx
        if self.trend:
            dt = t - self.t0
            self.st += dt
            self.stt += dt * dt
            self.stx += dt * dx
        since = self._since_recompute + 1
        self._since_recompute = since
        if since >= n and since >= _MIN_RECOMPUTE:
            self.recompute()

    def _replace_oldest(self, t: float, x: float) -> None:
        cap = self._cap
        times = self._times
        values = self._values
        j = self.tail % cap
        if self.n >= cap and math.isfinite(self.span) and times[j] >= t - self.span:
            self.truncated = True
        k = self.k
        ox = values[j] - k
        dx = x - k
        t0 = self.t0
        ot = times[j] - t0
        i = self.head % cap
        times[i] = t
        values[i] = x
        self.head += 1
        self.tail += 1
        self.sx += dx - ox
        self.sxx += dx * dx - ox * ox
        if self.trend:
            dt = t - t0
            self.st += dt - ot
            self.stt += dt * dt - ot * ot
            self.stx += dt * dx - ot * ox
        horizon = t - self.span
        while self.n > 1 and times[self.tail % cap] < horizon:
            self._evict()
        since = self._since_recompute + 1
        self._since_recompute = since
        if since >= self.n and since >= _MIN_RECOMPUTE:
            self.recompute()

    def _evict(self) -> None:
        i = self.tail % self._cap
        dx = self._values[i] - self.k
        self.sx -= dx
        self.sxx -= dx * dx
        if self.trend:
            dt = self._times[i] - self.t0
            self.st -= dt
            self.stt -= dt * dt
            self.stx -= dt * dx
        self.tail += 1
        self.n -= 1

    def _grow(self) -> None:
        cap = self._cap
        new_cap = min(cap * 2, self.max_samples)
        times, values = self.arrays()
        self._times = array("d", bytes(8 * new_cap))
        self._values = array("d", bytes(8 * new_cap))
        new_t = np.frombuffer(self._times, dtype=np.float64)
        new_v = np.frombuffer(self._values, dtype=np.float64)
        idx = np.arange(self.tail, self.head) % new_cap
        new_t[idx] = times
        new_v[idx] = values
        self._cap = new_cap

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the window's times and values, oldest first."""
        cap = self._cap
        t = np.frombuffer(self._times, dtype=np.float64)
        v = np.frombuffer(self._values, dtype=np.float64)
        start = self.tail % cap
        end = start + self.n
        if end <= cap:
            return t[start:end].copy(), v[start:end].copy()
        wrap = end - cap
        return np.concatenate((t[start:], t[:wrap])), np.concatenate((v[start:], v[:wrap]))

    def recompute(self) -> None:
        """Recompute the running sums exactly and re-centre their origins (the drift guard)."""
        self._since_recompute = 0
        if self.n == 0:
            self.sx = self.sxx = self.st = self.stt = self.stx = 0.0
            return
        times, values = self.arrays()
        self.k = float(values.mean())
        dv = values - self.k
        self.sx = float(dv.sum())
        self.sxx = float(dv @ dv)
        if self.trend:
            self.t0 = float(times.mean())
            dt = times - self.t0
            self.st = float(dt.sum())
            self.stt = float(dt @ dt)
            self.stx = float(dt @ dv)

    @property
    def oldest(self) -> float:
        """Time of the oldest sample in the window (NaN when empty)."""
        return self._times[self.tail % self._cap] if self.n else math.nan

    @property
    def newest(self) -> float:
        """Time of the newest sample in the window (NaN when empty)."""
        return self._times[(self.head - 1) % self._cap] if self.n else math.nan

    @property
    def covered(self) -> float:
        """Seconds between the oldest and newest sample."""
        return self.newest - self.oldest if self.n else 0.0

    def mean(self) -> float:
        """Mean of the values in the window (NaN when empty)."""
        return self.k + self.sx / self.n if self.n else math.nan

    def variance(self) -> float:
        """Sample variance of the values (NaN with fewer than two)."""
        n = self.n
        if n < 2:
            return math.nan
        return max((self.sxx - self.sx * self.sx / n) / (n - 1), 0.0)

    def std(self) -> float:
        """Sample standard deviation of the values."""
        return math.sqrt(self.variance())

    def slope(self) -> float:
        """Least-squares slope of value against time, in units per second (NaN if undefined)."""
        if not self.trend:
            raise ValueError("this window does not keep time sums; create it with trend=True")
        n = self.n
        denom = n * self.stt - self.st * self.st
        if n < 2 or denom <= 0.0:
            return math.nan
        return (n * self.stx - self.st * self.sx) / denom
