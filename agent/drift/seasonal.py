"""A channel's daily (and weekly) profile, learned with its baseline, taken out before judging.

A room's humidity swings by several %RH every day; averaged away over 24 h the cycle hides a
shift for a day, and a per-reading chart would take every afternoon for a change. Modelled,
it can be subtracted: the detectors then judge what is left, the level and noise around the
profile, and see a shift of the noise's size within hours.

The profile is a sum of harmonics of the day (24 h, 12 h, 8 h, 6 h: a smooth curve of any
shape a room's cycle takes) and, for ``season: weekly``, of the week (a weekend is colder),
each with mean zero, fitted by least squares to the learning span's readings with one level
per day (per week for weekly): a level that moved during the learning span (a change, a slow
trend) is absorbed by those levels instead of bending the profile. One robust pass then fits
again with readings clipped to ±3 robust σ around the first fit, so outliers do not shape it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DAY = 86400.0
WEEK = 7 * DAY
DAILY_HARMONICS = 4
WEEKLY_HARMONICS = 3
MAX_FIT = 50_000
"""Readings a profile is fitted to at most (evenly thinned beyond): milliseconds of work."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Coefficients (cos, sin per harmonic) of the daily and weekly profile; zero mean."""

    daily: tuple[float, ...]
    weekly: tuple[float, ...] = ()

    def many(self, t: np.ndarray) -> np.ndarray:
        """The profile at times t (seconds since the epoch)."""
        out = np.zeros(len(t))
        for period, coef in ((DAY, self.daily), (WEEK, self.weekly)):
            phase = (2.0 * math.pi / period) * np.mod(t, period)
            for h in range(len(coef) // 2):
                out += coef[2 * h] * np.cos((h + 1) * phase) + coef[2 * h + 1] * np.sin(
                    (h + 1) * phase
                )
        return out

    def at(self, t: float) -> float:
        """The profile at one time (the scalar twin of ``many``)."""
        out = 0.0
        for period, coef in ((DAY, self.daily), (WEEK, self.weekly)):
            phase = (2.0 * math.pi / period) * math.fmod(t, period)
            for h in range(len(coef) // 2):
                out += coef[2 * h] * math.cos((h + 1) * phase) + coef[2 * h + 1] * math.sin(
                    (h + 1) * phase
                )
        return out

    def swing(self) -> float:
        """Peak to peak over a week (or a day), in the channel's units."""
        period = WEEK if self.weekly else DAY
        values = self.many(np.linspace(0.0, period, 2016, endpoint=False))
        return float(values.max() - values.min())


def _design(t: np.ndarray, weekly: bool) -> np.ndarray:
    cols = []
    for period, harmonics in ((DAY, DAILY_HARMONICS), (WEEK, WEEKLY_HARMONICS if weekly else 0)):
        phase = (2.0 * math.pi / period) * np.mod(t, period)
        for h in range(1, harmonics + 1):
            cols += [np.cos(h * phase), np.sin(h * phase)]
    return np.column_stack(cols)


def fit_profile(t: np.ndarray, x: np.ndarray, *, weekly: bool = False) -> Profile:
    """The profile of readings x at times t (a learning span of whole days, or weeks)."""
    if len(t) > MAX_FIT:
        keep = np.linspace(0, len(t) - 1, MAX_FIT).astype(np.int64)
        t, x = t[keep], x[keep]
    group = np.floor(t / (WEEK if weekly else DAY))
    _, index = np.unique(group, return_inverse=True)
    levels = np.zeros((len(t), int(index.max()) + 1))
    levels[np.arange(len(t)), index] = 1.0
    harmonics = _design(t, weekly)
    a = np.hstack((levels, harmonics))
    coef = np.linalg.lstsq(a, x, rcond=None)[0]
    resid = x - a @ coef
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    if scale > 0:
        fitted = a @ coef
        coef = np.linalg.lstsq(a, fitted + np.clip(resid, -3 * scale, 3 * scale), rcond=None)[0]
    shape = coef[levels.shape[1] :]
    daily = tuple(round(float(c), 9) for c in shape[: 2 * DAILY_HARMONICS])
    week = tuple(round(float(c), 9) for c in shape[2 * DAILY_HARMONICS :])
    return Profile(daily, week)
