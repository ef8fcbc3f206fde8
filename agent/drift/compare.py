"""Two samples of one channel side by side: the statistics of every context comparison.

One place for the numbers the agent's ``lot_change`` alerts, the ``context_summary`` points and
``driftgate report`` all quote, so the report can never disagree with the alert it explains:
Welch's t-test, the two-sample Kolmogorov–Smirnov statistic, the difference of the means with
its confidence interval, and the verdict against the configured effect size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

MIN_COMPARE = 30
"""Fewest readings in each of two samples before they are compared (a sample that ended early);
a channel whose samples are smaller (``channels[].lot_readings``) compares at its own size."""


class Verdict(Enum):
    """What a comparison means in practice, given the effect size that matters."""

    DIFFERS = "differs"  # significant (p < alpha) and at least the effect size
    SMALL = "small"  # significant, but smaller than the effect size: no practical difference
    UNSURE = "unsure"  # at least the effect size, but too few or too scattered readings to tell
    SAME = "same"  # no difference found

    @property
    def words(self) -> str:
        """The verdict as the report's reader says it."""
        return _VERDICT_WORDS[self]


_VERDICT_WORDS = {
    Verdict.DIFFERS: "differs",
    Verdict.SMALL: "small difference",  # real, but below the effect that matters
    Verdict.UNSURE: "unclear: few readings",  # as large as matters, but not significant
    Verdict.SAME: "no difference",
}


@dataclass(frozen=True, slots=True)
class Comparison:
    """A new sample against an earlier one: Welch's t, KS, the difference and its interval."""

    n_new: int
    n_prev: int
    mean_new: float
    mean_prev: float
    diff: float  # mean_new - mean_prev, in the channel's units
    t: float
    p: float
    ks_d: float
    ks_p: float  # asymptotic (Kolmogorov's distribution); logged, never decides
    low: float  # the (1 - alpha) confidence interval of ``diff`` (Welch–Satterthwaite)
    high: float
    confidence: float

    def verdict(self, effect: float, alpha: float) -> Verdict:
        """DIFFERS when p < alpha and |diff| reaches ``effect`` (the rule of the alert)."""
        big = abs(self.diff) >= effect
        if self.p < alpha:
            return Verdict.DIFFERS if big else Verdict.SMALL
        return Verdict.UNSURE if big else Verdict.SAME


# The name the agent's first version used; kept for callers of agent.drift.lots.
LotComparison = Comparison


def compare(new: Sequence[float], prev: Sequence[float], alpha: float = 0.05) -> Comparison:
    """Compare a new sample with an earlier one; the interval has confidence 1 - alpha.

    Welch's t and the KS statistic are computed here with NumPy and only the distributions'
    tails come from scipy: scipy's ``ttest_ind`` and ``ks_2samp`` cost ~1.6 ms a pair in
    argument handling, and a context change completes every channel's sample at once, on the
    event loop (the figures: bench/report.py). Same numbers as scipy's (tests/test_lots.py).
    """
    from scipy import stats  # ~80 MB and a second to import: only when something is compared

    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(prev, dtype=np.float64)
    na, nb = len(a), len(b)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    diff = mean_a - mean_b
    var_a = float(a.var(ddof=1)) / na if na > 1 else 0.0
    var_b = float(b.var(ddof=1)) / nb if nb > 1 else 0.0
    se = math.sqrt(var_a + var_b)
    if se > 0:
        df = (var_a + var_b) ** 2 / (
            (var_a**2 / (na - 1) if na > 1 else 0.0) + (var_b**2 / (nb - 1) if nb > 1 else 0.0)
        )
        t = diff / se
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    else:  # both samples constant: the difference is exact
        t = math.copysign(math.inf, diff) if diff else 0.0
        p = 0.0 if diff else 1.0
        half = 0.0
    sa, sb = np.sort(a), np.sort(b)
    both = np.concatenate((sa, sb))
    gap = (
        np.searchsorted(sa, both, side="right") / na - np.searchsorted(sb, both, side="right") / nb
    )
    ks_d = float(np.max(np.abs(gap)))
    ks_p = float(stats.kstwobign.sf(ks_d * math.sqrt(na * nb / (na + nb))))  # asymptotic
    return Comparison(
        n_new=na,
        n_prev=nb,
        mean_new=mean_a,
        mean_prev=mean_b,
        diff=diff,
        t=t,
        p=p,
        ks_d=ks_d,
        ks_p=ks_p,
        low=diff - half,
        high=diff + half,
        confidence=1 - alpha,
    )


def summary_fields(values: Sequence[float]) -> dict[str, float | int | bool | str]:
    """The summary of a sample (``lot_summary``, ``context_summary``): n, mean, std (n-1), p5,
    p95."""
    x = np.asarray(values, dtype=np.float64)
    p5, p95 = np.percentile(x, [5.0, 95.0])
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "p5": float(p5),
        "p95": float(p95),
    }


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One context value's sample on one channel (a lot's first readings), as the local
    history keeps it for ``driftgate report`` and ``driftgate lot approve``."""

    channel: str
    key: str  # lot, operator, shift, ...
    value: str  # LOT-2411-B, op17, B, ...
    values: tuple[float, ...]
    first_ns: int
    last_ns: int
    meta: dict[str, Any] = field(default_factory=dict)  # label, unit, kind, effect, tags, ...

    @property
    def n(self) -> int:
        """How many readings."""
        return len(self.values)


def p_words(p: float) -> str:
    """'p < 0.001' or 'p = 0.012'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
