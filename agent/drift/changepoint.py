"""Change points: "did something just change?", answered again after every change.

A ``ChangePoint`` detector watches a channel in *segments*. A segment begins by learning its
level and spread from its first ``learn`` values (median and MAD, so an outlier among them
does not count); from then on every value is standardised against everything the segment has
seen so far (a self-starting chart: the running mean and standard deviation of the segment's
values, each clipped to the learned level ± 5 robust σ) and fed to two CUSUMs:

* a two-sided CUSUM of the level (allowance ``k`` and decision interval ``h`` in σ);
* a two-sided CUSUM of the spread (the log-likelihood ratio of a spread 1.5× wider or
  narrower), so a machine that turns erratic is a change too.

When either signals, the detector emits one ``changed`` event that carries the old segment's
level (or spread), the new one (the mean of the values since the CUSUM last stood at zero) and
the estimated onset (where that run began), and *re-arms*: the values of that run seed a new
segment, which learns its own level, and the CUSUMs start from zero. Each successive change is
its own event.

Readings that wander slowly between samples (AR(1) noise) would read as shifts to a chart made
for independent readings; the segment's lag-1 autocorrelation φ is estimated from its values
with the linear trend removed (a drifting segment does not read as strongly autocorrelated)
and the level chart's σ widened by √((1+φ)/(1−φ)), φ capped at ``PHI_CAP``. Slow channels with
strongly correlated noise (a room's humidity) are better judged on block means: ``block``
values are averaged into one before they reach the charts.

Live equals replay: ``update_many`` (NumPy over a batch, one pass per change found in it) and
``update_one`` (plain floats) compute the same statistics and give the same events for any
split of the readings into batches (``tests/test_changepoint.py``).
"""

from __future__ import annotations

import math

import numpy as np

from agent.drift.alerts import CHANGED, AlertEvent, Level
from agent.drift.baselines import ChannelBaseline
from agent.drift.detectors import Thresholds, Trend, _Base
from agent.reading import Channel
from agent.words import fmt, when

PHI_CAP = 0.9
"""The largest lag-1 autocorrelation the level chart allows for (σ widened at most 4.4×)."""
Z_CLIP = 3.0
"""A standardised value moves the level CUSUM by at most this: one outlier (or two close
together) cannot trip it; a shift of 3 σ or less is barely slowed. A block mean of b readings
dilutes an outlier b times: its clip is √b times wider, so a block's big shift counts."""
VALUE_CLIP = 5.0
"""Values enter the segment's running sums clipped to the learned level ± this many robust σ."""
U_CLIP = 9.0
"""A squared successive difference moves the spread CUSUM as if it were at most 3× typical."""
DIFF_CLIP = 3.0
"""Successive differences count at most this many robust σ of the learned ones (an outlier
makes two large differences; they must not make the reference spread look wider)."""
SPREAD_RATIO = 1.5
"""The spread CUSUM weighs the evidence for a spread this many times wider (or narrower)."""
RECENT = 256
"""Values kept to place a change's onset (and to seed the next segment from)."""

_B = math.log(SPREAD_RATIO)
_A_UP = (1.0 - 1.0 / SPREAD_RATIO**2) / 2.0
_A_DOWN = (SPREAD_RATIO**2 - 1.0) / 2.0
_LEVEL, _SPREAD = "level", "spread"


class ChangePoint(_Base):
    """Segment by segment: one ``changed`` event per change of level or spread, then re-armed."""

    name = "changepoint"

    def __init__(
        self,
        channel: Channel,
        base: ChannelBaseline,
        thresholds: Thresholds,
        trend: Trend,
        *,
        k: float = 0.5,
        h: float = 12.0,
        spread_h: float = 12.0,
        learn: int = 30,
        lag: int | None = None,
        block: int = 1,
        spread: bool = True,
        alarm_size: float | None = None,
    ) -> None:
        super().__init__(channel, base, thresholds, trend)
        if learn < 5:
            raise ValueError("a segment learns from at least 5 values")
        self.k = k
        self.h = h
        self.spread_h = spread_h if spread else math.inf
        self.learn = learn
        self.lag = learn if lag is None else lag
        self.block = max(int(block), 1)
        self.z_clip = Z_CLIP * math.sqrt(self.block)
        self.alarm_size = alarm_size
        self.changes = 0  # changed events so far (readiness reports, tests)
        # The previous segment's autocorrelation: a new segment's first values say little about
        # it, and a level shift rarely changes how the sensor's noise wanders.
        self.phi_prior = 0.0
        self.judged = 0  # values judged against a learned segment
        # The current block (block > 1): sum and count of its readings, its first reading.
        self._bsum = 0.0
        self._bn = 0
        self._bns = 0
        # Values waiting to learn the next segment (raw values and their onset times, ns).
        self._lx: list[float] = []
        self._lns: list[int] = []
        # The latest values and onsets (at least RECENT of them; trimmed now and then).
        self._rx: list[float] = []
        self._rns: list[int] = []
        self._reset_segment()

    # -- state ---------------------------------------------------------------------------------

    def _reset_segment(self) -> None:
        self.learning = True
        self.o = 0.0  # the segment's learned level (origin of the sums)
        self.scale = 1.0  # its learned robust σ
        self.lo_clip = -math.inf
        self.hi_clip = math.inf
        self.floor = 0.0  # the smallest σ the charts divide by
        self.dclip = math.inf  # successive differences count at most this much
        self.steadier = True  # watch for a narrower spread (not on a flat segment)
        self.seg_ns = 0  # onset of the segment
        self.n = 0
        self.s1 = self.s2 = self.sd2 = self.sjx = 0.0
        self.prev = 0.0
        self.last_y = 0.0  # the latest value judged or learned (relative to the origin)
        self._pending: list[float] = []  # judged values on their way into the reference
        self.hi = self.lo = self.vu = self.vd = 0.0
        self.hi_n = self.lo_n = self.vu_n = self.vd_n = 0  # values since each was last zero

    def restart(self) -> None:
        """The clock went back: learn a segment afresh from the next readings."""
        super().restart()
        self.phi_prior = 0.0
        self._bsum, self._bn = 0.0, 0
        self._lx, self._lns = [], []
        self._rx, self._rns = [], []
        self._reset_segment()

    @property
    def ready(self) -> bool:
        """Whether the current segment is learned (values are being judged)."""
        return not self.learning

    def needs(self) -> str:
        """What it waits for, in words (for readiness reports)."""
        per = f" (blocks of {self.block} readings)" if self.block > 1 else ""
        return f"{self.learn} values to learn a segment's level{per}"

    # -- blocks --------------------------------------------------------------------------------

    def _blocks(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(value, index of its last reading, ns, onset ns) per completed block of the batch
        (block = 1: the readings as they are)."""
        if self.block == 1:
            return x, np.arange(len(x)), ns, ns
        b = self.block
        m = len(x)
        first = b - self._bn  # readings the current block still needs
        if m < first:
            self._bsum += float(x.sum())
            if self._bn == 0:
                self._bns = int(ns[0])
            self._bn += m
            none = np.empty(0, dtype=np.int64)
            return np.empty(0), none, none, none
        heads = [self._bsum + float(x[:first].sum())]
        onsets = [self._bns if self._bn else int(ns[0])]
        ends = [first - 1]
        full = (m - first) // b
        if full:
            body = x[first : first + full * b].reshape(full, b).sum(axis=1)
            heads += body.tolist()
            onsets += ns[first : first + full * b : b].tolist()
            ends += list(range(first + b - 1, first + full * b, b))
        rest = first + full * b
        self._bsum = float(x[rest:].sum())
        self._bn = m - rest
        if self._bn:
            self._bns = int(ns[rest])
        idx = np.asarray(ends)
        return np.asarray(heads) / b, idx, ns[idx], np.asarray(onsets, dtype=np.int64)

    def _block_one(self, t: float, x: float, ns: int) -> tuple[float, int] | None:
        if self.block == 1:
            return x, ns
        if self._bn == 0:
            self._bns = ns
        self._bsum += x
        self._bn += 1
        if self._bn < self.block:
            return None
        value, onset = self._bsum / self.block, self._bns
        self._bsum, self._bn = 0.0, 0
        return value, onset

    # -- learning ------------------------------------------------------------------------------

    def _learn(self, values: list[float], onsets: list[int]) -> None:
        """Start judging: the segment's level and robust σ from its first values."""
        v = np.asarray(values)
        med = float(np.median(v))
        scale = 1.4826 * float(np.median(np.abs(v - med)))
        if not scale > 0:
            scale = float(v.std())
        floor = 1e-9 * max(1.0, abs(med))
        self.steadier = scale > floor  # a flat segment cannot get any steadier
        scale = max(scale, floor)
        self.learning = False
        self.o = med
        self.scale = scale
        self.floor = max(floor, 1e-3 * scale)
        wide = math.sqrt(self.block)  # a block mean dilutes a single outlier
        self.lo_clip = med - VALUE_CLIP * wide * scale
        self.hi_clip = med + VALUE_CLIP * wide * scale
        self.seg_ns = onsets[0]
        yc = np.clip(v, self.lo_clip, self.hi_clip) - med
        n = len(yc)
        self.n = n
        self.s1 = float(yc.sum())
        self.s2 = float(yc @ yc)
        d = np.diff(yc)
        dscale = 1.4826 * float(np.median(np.abs(d)))
        self.dclip = DIFF_CLIP * dscale if dscale > 0 else math.inf
        d = np.clip(d, -self.dclip, self.dclip)
        self.sd2 = float(d @ d)
        self.sjx = float(np.arange(n) @ yc)
        self.prev = self.last_y = float(yc[-1])
        self._lx, self._lns = [], []

    # -- the charts ----------------------------------------------------------------------------

    def _standardise(
        self, n: float, s1: float, s2: float, sd2: float, sjx: float, y: float, dy: float
    ) -> tuple[float, float, float, float, float, float]:
        """Value y (relative to the origin; dy since the value before it) against the
        segment's reference (its n oldest values): (mean, σ, z for the level chart, its
        allowance, u for the spread chart, the spread chart's weight); the scalar twin of
        ``_standardise_many``.

        The spread chart judges squared successive differences against their reference mean:
        slow wander (AR noise) and a level shift (one big difference) barely move them, a wider
        or narrower scatter moves every one."""
        mean = s1 / n
        sxx = s2 - s1 * mean
        n1 = n - 1.0
        sj = 0.5 * n * n1
        sjj = n1 * n * (2.0 * n - 1.0) / 6.0 - sj * sj / n
        cjx = sjx - sj * mean
        floor2 = self.floor * self.floor
        vd = max((sxx - cjx * cjx / sjj) / (n - 2.0), floor2)
        phi = max(1.0 - sd2 / (2.0 * n1 * vd) + 1.0 / math.sqrt(n), self.phi_prior)
        phi = min(max(phi, 0.0), PHI_CAP)
        sigma = math.sqrt(max(sxx / n1, floor2))
        e = (y - mean) / sigma * math.sqrt((n - 3.0) / (n1 * (1.0 + 1.0 / n)))
        zc = self.z_clip
        z = min(max(e * math.sqrt((1.0 - phi) / (1.0 + phi)), -zc), zc)
        k = self.k + 1.0 / math.sqrt(n)
        u = min(dy * dy * n1 / max(sd2, floor2), U_CLIP)
        q = 1.0 - phi
        return mean, sigma, z, k, u, 1.0 / math.sqrt(1.0 + 0.5 * q * q * (1.0 + phi * phi))

    def _standardise_many(
        self, n: np.ndarray, s1: np.ndarray, s2: np.ndarray, sd2: np.ndarray, sjx: np.ndarray,
        y: np.ndarray, dy: np.ndarray,
    ) -> tuple[np.ndarray, ...]:  # fmt: skip
        """``_standardise`` for arrays (each value against its own reference)."""
        mean = s1 / n
        sxx = s2 - s1 * mean
        n1 = n - 1.0
        sj = 0.5 * n * n1
        sjj = n1 * n * (2.0 * n - 1.0) / 6.0 - sj * sj / n
        cjx = sjx - sj * mean
        floor2 = self.floor * self.floor
        vd = np.maximum((sxx - cjx * cjx / sjj) / (n - 2.0), floor2)
        phi = np.maximum(1.0 - sd2 / (2.0 * n1 * vd) + 1.0 / np.sqrt(n), self.phi_prior)
        np.clip(phi, 0.0, PHI_CAP, out=phi)
        sigma = np.sqrt(np.maximum(sxx / n1, floor2))
        e = (y - mean) / sigma * np.sqrt((n - 3.0) / (n1 * (1.0 + 1.0 / n)))
        z = e * np.sqrt((1.0 - phi) / (1.0 + phi))
        np.clip(z, -self.z_clip, self.z_clip, out=z)
        k = self.k + 1.0 / np.sqrt(n)
        u = np.minimum(dy * dy * n1 / np.maximum(sd2, floor2), U_CLIP)
        q = 1.0 - phi
        return mean, sigma, z, k, u, 1.0 / np.sqrt(1.0 + 0.5 * q * q * (1.0 + phi * phi))

    def _phi(self) -> float:
        """The reference's lag-1 autocorrelation (trend removed), as measured."""
        n = float(self.n)
        mean = self.s1 / n
        sxx = self.s2 - self.s1 * mean
        sj = 0.5 * n * (n - 1.0)
        sjj = (n - 1.0) * n * (2.0 * n - 1.0) / 6.0 - sj * sj / n
        cjx = self.sjx - sj * mean
        vd = max((sxx - cjx * cjx / sjj) / (n - 2.0), self.floor * self.floor)
        return min(max(1.0 - self.sd2 / (2.0 * (n - 1.0) * vd), 0.0), PHI_CAP)

    def _commit(self, y: float) -> None:
        """A value enters the segment's reference (LAG values after it was judged)."""
        n = self.n
        self.n = n + 1
        self.s1 += y
        self.s2 += y * y
        d = min(max(y - self.prev, -self.dclip), self.dclip)
        self.sd2 += d * d
        self.sjx += n * y
        self.prev = y

    # -- the scalar path -----------------------------------------------------------------------

    def update_one(
        self, t: float, x: float, ns: int, bmean: float, bstd: float
    ) -> AlertEvent | None:
        """Feed one reading; the scalar twin of update_many."""
        got = self._block_one(t, x, ns)
        if got is None:
            return None
        value, onset = got
        rx = self._rx
        rx.append(value)
        self._rns.append(onset)
        if len(rx) > 2 * RECENT:
            del rx[:-RECENT]
            del self._rns[:-RECENT]
        if self.learning:
            self._lx.append(value)
            self._lns.append(onset)
            if len(self._lx) >= self.learn:
                self._learn(self._lx, self._lns)
            return None
        return self._judge_one(value, ns)

    def _judge_one(self, value: float, ns: int) -> AlertEvent | None:
        y = min(max(value, self.lo_clip), self.hi_clip) - self.o
        mean, sigma, z, k, u, w = self._standardise(
            self.n, self.s1, self.s2, self.sd2, self.sjx, y,
            min(max(y - self.last_y, -self.dclip), self.dclip),
        )  # fmt: skip
        ks = k - self.k  # the reference's own uncertainty, as the spread chart's allowance
        self.last_y = y
        self.judged += 1
        self.hi = hi = max(0.0, self.hi + z - k)
        self.lo = lo = max(0.0, self.lo - z - k)
        self.vu = vu = max(0.0, self.vu + (_A_UP * u - _B) * w - ks)
        self.vd = vd = max(0.0, self.vd + (_B - _A_DOWN * u) * w - ks) if self.steadier else 0.0
        self.hi_n = self.hi_n + 1 if hi > 0.0 else 0
        self.lo_n = self.lo_n + 1 if lo > 0.0 else 0
        self.vu_n = self.vu_n + 1 if vu > 0.0 else 0
        self.vd_n = self.vd_n + 1 if vd > 0.0 else 0
        if max(hi, lo) >= self.h or max(vu, vd) >= self.spread_h:
            md2 = self.sd2 / (self.n - 1.0)
            return self._signal(ns, mean + self.o, sigma, md2, self._rx, self._rns)
        pending = self._pending
        pending.append(y)
        if len(pending) > self.lag:
            self._commit(pending.pop(0))
        return None

    # -- the batch path ------------------------------------------------------------------------

    def update_many(
        self, t: np.ndarray, x: np.ndarray, ns: np.ndarray, bmean: np.ndarray, bstd: np.ndarray
    ) -> list[AlertEvent]:
        """Feed a batch of readings: NumPy over the batch, one pass per change found in it."""
        values, last, vns, onsets = self._blocks(t, x, ns)
        events: list[AlertEvent] = []
        i, m = 0, len(values)
        while i < m:
            if self.learning:
                take = min(self.learn - len(self._lx), m - i)
                self._lx += values[i : i + take].tolist()
                self._lns += onsets[i : i + take].tolist()
                self._remember(values[i : i + take], onsets[i : i + take])
                i += take
                if len(self._lx) >= self.learn:
                    self._learn(self._lx, self._lns)
                continue
            got = self._judge_many(values[i:])
            if got is None:
                self._remember(values[i:], onsets[i:])
                break
            j, old, sigma, md2 = got
            self._remember(values[i : i + j + 1], onsets[i : i + j + 1])
            self._j = int(last[i + j])
            events.append(self._signal(int(vns[i + j]), old, sigma, md2, self._rx, self._rns))
            self._j = -1
            i += j + 1
        return events

    def _remember(self, values: np.ndarray, onsets: np.ndarray) -> None:
        """Keep the latest RECENT values (a change's onset is placed among them)."""
        tail = max(len(values) - RECENT, 0)
        rx = self._rx
        rx += values[tail:].tolist()
        self._rns += onsets[tail:].tolist()
        if len(rx) > 2 * RECENT:
            del rx[:-RECENT]
            del self._rns[:-RECENT]

    def _judge_many(self, values: np.ndarray) -> tuple[int, float, float, float] | None:
        """Judge values until the first signal: (its index, the old level, σ, the reference's
        mean squared successive difference), or None.

        Value q of the batch is judged against the reference of everything but the LAG values
        before it: the pending ones (judged, not yet in the reference) and the batch's own."""
        m = len(values)
        y = np.clip(values, self.lo_clip, self.hi_clip) - self.o
        pend = self._pending
        p = len(pend)
        lag = self.lag
        # Every value from the oldest pending on; value c of it is in the reference of the
        # batch's value q (combined index p + q) when c < p + q - lag.
        allv = np.concatenate((np.asarray(pend, dtype=np.float64), y)) if p else y
        total = p + m
        enter = max(total - lag, 0)  # combined values that enter the reference in this batch
        ev = allv[:enter]
        d = np.empty(enter)
        if enter:
            d[0] = ev[0] - self.prev
            np.subtract(ev[1:], ev[:-1], out=d[1:])
            np.clip(d, -self.dclip, self.dclip, out=d)
        nn = self.n + np.arange(enter, dtype=np.float64)
        c1 = _inclusive(ev)
        c2 = _inclusive(ev * ev)
        cd = _inclusive(d * d)
        cj = _inclusive(nn * ev)
        # References for the batch's values: entered = min(max(p + q - lag, 0), enter).
        entered = np.clip(p + np.arange(m) - lag, 0, enter)
        n = self.n + entered.astype(np.float64)
        s1 = self.s1 + c1[entered]
        s2 = self.s2 + c2[entered]
        sd2 = self.sd2 + cd[entered]
        sjx = self.sjx + cj[entered]
        dy = np.empty(m)
        dy[0] = y[0] - self.last_y
        np.subtract(y[1:], y[:-1], out=dy[1:])
        np.clip(dy, -self.dclip, self.dclip, out=dy)
        mean, sigma, z, k, u, w = self._standardise_many(n, s1, s2, sd2, sjx, y, dy)
        hi = _lindley(z - k, self.hi)
        lo = _lindley(-z - k, self.lo)
        ks = k - self.k  # the reference's own uncertainty, as the spread chart's allowance
        vu = _lindley((_A_UP * u - _B) * w - ks, self.vu)
        vd = _lindley((_B - _A_DOWN * u) * w - ks, self.vd) if self.steadier else np.zeros(m)
        fired = (np.maximum(hi, lo) >= self.h) | (np.maximum(vu, vd) >= self.spread_h)
        hits = np.flatnonzero(fired)
        end = int(hits[0]) + 1 if hits.size else m
        self.judged += end
        self.hi_n = _run(hi[:end], self.hi_n)
        self.lo_n = _run(lo[:end], self.lo_n)
        self.vu_n = _run(vu[:end], self.vu_n)
        self.vd_n = _run(vd[:end], self.vd_n)
        last = end - 1
        self.hi, self.lo = float(hi[last]), float(lo[last])
        self.vu, self.vd = float(vu[last]), float(vd[last])
        if hits.size:  # the reference as it stood at the signal (the new segment's prior)
            enter = int(entered[last])
        if enter:
            self.n += enter
            self.s1 += float(c1[enter])
            self.s2 += float(c2[enter])
            self.sd2 += float(cd[enter])
            self.sjx += float(cj[enter])
            self.prev = float(ev[enter - 1])
        self.last_y = float(y[last])
        if hits.size:
            md2 = float(sd2[last]) / (float(n[last]) - 1.0)
            return last, float(mean[last]) + self.o, float(sigma[last]), md2
        self._pending = allv[enter:].tolist()
        return None

    # -- a change ------------------------------------------------------------------------------

    def _signal(
        self, ts_ns: int, old: float, sigma: float, md2: float, rx: list[float], rns: list[int]
    ) -> AlertEvent:
        """A chart signalled: the event, and a new segment seeded with the values since the
        change (``rx``, ``rns``: the latest values and their onsets, the signalling one last)."""
        if self.n >= 2 * self.learn:  # long enough to tell how its noise wanders
            self.phi_prior = self._phi()
        runs = (self.hi_n if self.hi >= self.lo else self.lo_n,
                self.vu_n if self.vu >= self.vd else self.vd_n)  # fmt: skip
        size = min(len(rx), 2 * max(runs) + 10)
        v = np.asarray(rx[-size:])
        wns = rns[-size:]
        # Both charts react to either change: which one it is, the likelihood says (a ramp
        # leaves the successive differences as they were: a change of level, not of spread).
        at_level, level_score = _onset_level(v, old, sigma)
        at_spread, spread_score, ratio = _onset_spread(v, md2)
        level = level_score >= spread_score
        at = at_level if level else at_spread
        after = v[at:]
        onset = wns[at]
        if level:
            event = self._make(ts_ns, _LEVEL, old, float(after.mean()), onset, sigma, old)
        else:
            new = sigma * math.sqrt(ratio)
            event = self._make(ts_ns, _SPREAD, sigma, new, onset, sigma, old)
        self.changes += 1
        seed_x = after[-self.learn :].tolist()
        seed_ns = wns[at:][-self.learn :]
        self._rx, self._rns = list(seed_x), list(seed_ns)
        self._reset_segment()
        self._lx, self._lns = seed_x, seed_ns
        if len(self._lx) >= self.learn:
            self._learn(self._lx, self._lns)
        return event

    def _make(
        self, ts_ns: int, what: str, before: float, after: float, onset: int, sigma: float,
        old_level: float,
    ) -> AlertEvent:  # fmt: skip
        ch = self.channel
        unit = ch.unit
        seg = f"{what} since {when(self.seg_ns)}" if self.seg_ns else what
        if what == _LEVEL:
            size = abs(after - before) / sigma if sigma > 0 else math.inf
            up = after >= before
            message = (
                f"{ch.label} has changed: {'up' if up else 'down'} from {fmt(before, unit)} to "
                f"about {fmt(after, unit)}, since {when(onset)} (a change of {size:.1f} σ of its "
                f"scatter ±{fmt(sigma, unit)}); now watching the new level."
            )
        else:
            size = 0.0  # a change of spread is a warning; its size is in the words
            word = "more erratic" if after >= before else "steadier"
            message = (
                f"{ch.label} has become {word}: it scatters by ±{fmt(after, unit)} where it "
                f"scattered by ±{fmt(before, unit)}, since {when(onset)} (around "
                f"{fmt(old_level, unit)}); now watching the new spread."
            )
        level = Level.WARN
        if self.alarm_size is not None and size >= self.alarm_size:
            level = Level.ALARM
        head = "ALARM: " if level == Level.ALARM else "WARN: "
        if ch.affects:
            message += f" This affects {ch.affects}."
        return AlertEvent(
            ts_ns=ts_ns,
            channel=ch,
            detector=self.name,
            transition=CHANGED,
            level=level,
            value=after,
            baseline=before,
            delta=after - before,
            rate_per_h=self.trend.at(self._j),
            since_ns=onset,
            baseline_note=f"previous {seg}",
            message=head + message,
        )


def _onset_level(v: np.ndarray, mean: float, sigma: float) -> tuple[int, float]:
    """Where in v a change of level most likely began, the old mean and σ known: the split that
    maximises the likelihood ratio of a new level after it, and twice its logarithm."""
    m = len(v)
    d = (v - mean) / sigma if sigma > 0 else v - mean
    d = np.clip(d, -VALUE_CLIP, VALUE_CLIP)
    count = m - np.arange(m)  # values from each split to the end
    tail = np.cumsum(d[::-1])[::-1]
    score = tail * tail / count
    best = int(np.argmax(score))
    return best, float(score[best])


def _onset_spread(v: np.ndarray, md2: float) -> tuple[int, float, float]:
    """Where in v a change of spread most likely began (the old mean squared successive
    difference known), twice the log-likelihood ratio, and the new spread's ratio (squared)."""
    if len(v) < 2 or not md2 > 0:
        return 0, 0.0, 1.0
    d = np.diff(v)
    u = np.minimum(d * d / md2, 4.0 * U_CLIP)  # an outlier makes two large differences
    m = len(u)
    count = m - np.arange(m)
    ratio = np.maximum(np.cumsum(u[::-1])[::-1] / count, 1e-12)
    score = count * (ratio - 1.0 - np.log(ratio))
    best = int(np.argmax(score))
    return best + 1, float(score[best]), float(ratio[best])


def _inclusive(a: np.ndarray) -> np.ndarray:
    """Sums of the first i elements for i = 0..len(a): [0, a0, a0 + a1, ...]."""
    out = np.empty(len(a) + 1)
    out[0] = 0.0
    np.cumsum(a, out=out[1:])
    return out


def _lindley(a: np.ndarray, start: float) -> np.ndarray:
    """S_j = max(0, S_{j-1} + a_j) for all j at once."""
    c = np.cumsum(a)
    out: np.ndarray = np.maximum(c - np.minimum(np.minimum.accumulate(c), -start), 0.0)
    return out


def _run(s: np.ndarray, n0: int) -> int:
    """How many values a CUSUM has been above zero at the end of s (n0 before s began)."""
    zeros = np.flatnonzero(s <= 0.0)
    if not zeros.size:
        return n0 + len(s)
    return len(s) - 1 - int(zeros[-1])
