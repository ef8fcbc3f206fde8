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
_MIN_CHUNK = 1024
_SMALL_BATCH = 12  # below this many samples a Python loop is cheaper than NumPy calls
_DEGENERATE = 1e-9  # relative size of the time variance below which a slope is undefined


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

    def extend(self, times: np.ndarray, values: np.ndarray) -> BatchStats:
        """Add a batch of samples (times non-decreasing, not older than the window's newest).

        Returns each sample's window statistics, exactly as ``add`` one by one would have left
        them, computed with NumPy: the cost per sample falls with the batch size.
        """
        # Window sums come from differences of prefix sums over the batch; chunks no longer
        # than the window keep those prefix sums near the window's own magnitude (precision).
        m = len(times)
        if m <= _SMALL_BATCH:
            return _one_by_one(self, times, values)
        step = max(_MIN_CHUNK, self.n)
        if m <= step:
            return _window_extend(self, times, values)
        parts = []
        i = 0
        while i < m:
            step = max(_MIN_CHUNK, self.n)
            parts.append(_window_extend(self, times[i : i + step], values[i : i + step]))
            i += step
        return BatchStats.join(parts)

    def clear(self) -> None:
        """Forget every sample (the window starts afresh; its buffers are kept)."""
        self.head = self.tail = self.n = 0
        self.k = self.t0 = 0.0
        self.sx = self.sxx = self.st = self.stt = self.stx = 0.0
        self._since_recompute = 0
        self.truncated = False

    def _grow(self) -> None:
        self._grow_to(min(self._cap * 2, self.max_samples))

    def _grow_to(self, new_cap: int) -> None:
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
        if n < 2 or denom <= _DEGENERATE * n * self.stt:
            return math.nan
        return (n * self.stx - self.st * self.sx) / denom


class BatchStats:
    """Per-sample window statistics for a batch: element j describes the window after sample j."""

    __slots__ = ("mean", "n", "oldest", "slope", "var")

    def __init__(
        self,
        n: np.ndarray,
        oldest: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        slope: np.ndarray | None,
    ) -> None:
        self.n = n
        self.oldest = oldest
        self.mean = mean
        self.var = var  # sample variance (NaN below two samples)
        self.slope = slope  # units per second, NaN where undefined; None without trend sums

    @staticmethod
    def from_sums(
        k: float,
        n: np.ndarray,
        oldest: np.ndarray,
        sx: np.ndarray,
        sxx: np.ndarray,
        trend: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> BatchStats:
        """Statistics from running sums relative to the value origin ``k``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = k + sx / n
            var = np.maximum((sxx - sx * sx / n) / (n - 1), 0.0)
            var[n < 2] = np.nan
            slope = None
            if trend is not None:
                st, stt, stx = trend
                denom = n * stt - st * st
                slope = (n * stx - st * sx) / denom
                # All samples at (nearly) one instant: no slope, not amplified rounding noise.
                slope[(denom <= _DEGENERATE * n * stt) | (n < 2)] = np.nan
        return BatchStats(n, oldest, mean, var, slope)

    @staticmethod
    def join(parts: list[BatchStats]) -> BatchStats:
        """One BatchStats from consecutive ones."""
        slopes = [p.slope for p in parts]
        return BatchStats(
            np.concatenate([p.n for p in parts]),
            np.concatenate([p.oldest for p in parts]),
            np.concatenate([p.mean for p in parts]),
            np.concatenate([p.var for p in parts]),
            None if slopes[0] is None else np.concatenate(slopes),  # type: ignore[arg-type]
        )


def _one_by_one(w: Window, times: np.ndarray, values: np.ndarray) -> BatchStats:
    """The small-batch path: plain ``add`` per sample beats NumPy's per-call overhead."""
    m = len(times)
    n = np.empty(m)
    oldest = np.empty(m)
    mean = np.empty(m)
    var = np.empty(m)
    slope = np.empty(m) if w.trend else None
    for j, (t, x) in enumerate(zip(times.tolist(), values.tolist(), strict=True)):
        w.add(t, x)
        n[j] = w.n
        oldest[j] = w.oldest
        mean[j] = w.mean()
        var[j] = w.variance()
        if slope is not None:
            slope[j] = w.slope()
    return BatchStats(n, oldest, mean, var, slope)


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values) + 1)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def _window_extend(w: Window, times: np.ndarray, values: np.ndarray) -> BatchStats:
    """Vectorised equivalent of calling ``w.add`` for each sample (times non-decreasing)."""
    m = len(times)
    n = w.n
    if n + m > w._cap and w._cap < w.max_samples:
        w._grow_to(min(w.max_samples, 1 << (n + m - 1).bit_length()))
    cap = w._cap
    max_n = min(w.max_samples, cap)
    if n == 0:
        w.k = float(values[0])
        w.t0 = float(times[0])
    k = w.k
    t0 = w.t0
    ring_t = np.frombuffer(w._times, dtype=np.float64)
    ring_v = np.frombuffer(w._values, dtype=np.float64)
    start = w.tail % cap
    first_len = min(n, cap - start)
    seg_a_t = ring_t[start : start + first_len]
    seg_b_t = ring_t[: n - first_len]
    span = w.span
    finite_span = math.isfinite(span)
    # How many old samples the whole batch evicts: by time, and by count.
    e_time = 0
    if finite_span and n:
        horizon = float(times[-1]) - span
        e_time = int(np.searchsorted(seg_a_t, horizon, side="left"))
        if e_time == first_len:
            e_time += int(np.searchsorted(seg_b_t, horizon, side="left"))
    e = min(n, max(e_time, n + m - max_n))
    if e <= first_len:
        old_t = seg_a_t[:e].copy()
        old_v = ring_v[start : start + e].copy()
    else:
        rest = e - first_len
        old_t = np.concatenate((seg_a_t, seg_b_t[:rest]))
        old_v = np.concatenate((ring_v[start : start + first_len], ring_v[:rest]))
    j = np.arange(m)
    left = np.maximum(n + j + 1 - max_n, 0)
    if finite_span:
        seg_t = np.concatenate((old_t, times)) if e else times
        idx = np.searchsorted(seg_t, times - span, side="left")
        left_time = np.where(idx <= e, idx, n + (idx - e))
        if not w.truncated and bool(np.any(left > left_time)):
            w.truncated = True  # max_samples, not the span, bounded the window
        left = np.maximum(left, left_time)
    count = n + j + 1 - left
    left_old = np.minimum(left, e)
    left_new = np.clip(left - n, 0, m)
    dx_old = old_v - k
    dx_new = values - k

    def window_sums(current: float, f_old: np.ndarray, f_new: np.ndarray) -> np.ndarray:
        p_old = _prefix(f_old)
        p_new = _prefix(f_new)
        sums: np.ndarray = current - p_old[left_old] + p_new[1:] - p_new[left_new]
        return sums

    sx = window_sums(w.sx, dx_old, dx_new)
    sxx = window_sums(w.sxx, dx_old * dx_old, dx_new * dx_new)
    trend = None
    if w.trend:
        dt_old = old_t - t0
        dt_new = times - t0
        st = window_sums(w.st, dt_old, dt_new)
        stt = window_sums(w.stt, dt_old * dt_old, dt_new * dt_new)
        stx = window_sums(w.stx, dt_old * dx_old, dt_new * dx_new)
        trend = (st, stt, stx)
        w.st, w.stt, w.stx = float(st[-1]), float(stt[-1]), float(stx[-1])
    # Oldest sample time after each step: in the evicted old part, the kept old part, or new.
    kept_old_time = ring_t[(w.tail + e) % cap] if e < n else math.nan
    oldest = np.where(
        left < e,
        old_t[np.minimum(left, max(e - 1, 0))] if e else math.nan,
        np.where(left < n, kept_old_time, times[np.minimum(left_new, m - 1)]),
    )
    final_left = int(left[-1])
    # Write the batch into the ring (only the last `cap` samples can survive anyway).
    keep = min(m, cap)
    pos = (w.head + m - keep + np.arange(keep)) % cap
    ring_t[pos] = times[m - keep :]
    ring_v[pos] = values[m - keep :]
    w.head += m
    w.tail += final_left
    w.n = n + m - final_left
    w.sx = float(sx[-1])
    w.sxx = float(sxx[-1])
    w._since_recompute += m
    if w._since_recompute >= w.n and w._since_recompute >= _MIN_RECOMPUTE:
        w.recompute()
    return BatchStats.from_sums(k, count.astype(np.float64), oldest, sx, sxx, trend)
