"""Detector settings that can never fire (or fire at every reading), with the arithmetic.

A channel's ``interval`` says how often it reads; with it, ``check-config`` refuses settings
that the readings cannot satisfy: a window that never holds ``min_samples`` readings, a
``stale`` gap no longer than the time between two readings. Some limits hold at any rate:
readings enter CUSUM and EWMA clipped to ±4 σ, so an EWMA's score has a ceiling, and a CUSUM
whose allowance is as large never accumulates.
"""

from __future__ import annotations

import math

from agent.config.base import Loc
from agent.config.bounds import seconds_words
from agent.config.detectors import (
    CLIP_SIGMA,
    BaselineShiftConfig,
    ChangePointConfig,
    CusumConfig,
    DetectorConfig,
    EwmaConfig,
    InvalidRateConfig,
    SlopeConfig,
    StaleConfig,
    StuckConfig,
    VarianceChangeConfig,
)

Windowed = (
    BaselineShiftConfig | SlopeConfig | VarianceChangeConfig | StuckConfig | InvalidRateConfig
)


def _every(interval: float) -> str:
    return f"one reading every {seconds_words(interval)}"


def window_readings(window: float, interval: float) -> int:
    """The most readings a window of that span holds at that interval (both ends included)."""
    return math.floor(window / interval + 1e-9) + 1


def window_problems(spec: Windowed, interval: float) -> list[tuple[Loc, str]]:
    """A window that never holds min_samples readings, at the channel's interval."""
    most = window_readings(spec.window, interval)
    if spec.min_samples <= most:
        return []
    need = seconds_words(math.ceil((spec.min_samples - 1) * interval))
    return [
        (
            ("min_samples",),
            f"{spec.min_samples} readings never fit in a {seconds_words(spec.window)} window at "
            f"{_every(interval)}: it holds at most {seconds_words(spec.window)} / "
            f"{seconds_words(interval)} + 1 = {most}; lower min_samples to {most} or widen "
            f"window to {need}",
        )
    ]


def detector_problems(spec: DetectorConfig, interval: float | None) -> list[tuple[Loc, str]]:
    """Why a detector's settings cannot work (at the channel's interval, when known)."""
    problems: list[tuple[Loc, str]] = []
    if isinstance(spec, EwmaConfig):
        ceiling = CLIP_SIGMA / math.sqrt(spec.lam / (2.0 - spec.lam))
        if spec.warn >= ceiling:
            problems.append(
                (
                    ("warn",),
                    f"an EWMA with lam {spec.lam:g} never reaches warn {spec.warn:g}: readings "
                    f"count at most {CLIP_SIGMA:g} σ, so its score is at most {CLIP_SIGMA:g} / "
                    f"√({spec.lam:g} / (2 − {spec.lam:g})) = {ceiling:.2f}; lower warn or lam",
                )
            )
    if isinstance(spec, CusumConfig | ChangePointConfig) and spec.k >= CLIP_SIGMA:
        problems.append(
            (
                ("k",),
                f"a CUSUM with allowance k {spec.k:g} never accumulates: readings count at most "
                f"{CLIP_SIGMA:g} σ, and each adds at most {CLIP_SIGMA:g} − k ≤ 0; lower k",
            )
        )
    if interval is None:
        return problems
    if isinstance(spec, Windowed):
        problems += window_problems(spec, interval)
    if isinstance(spec, StaleConfig) and spec.max_gap <= interval:
        problems.append(
            (
                ("max_gap",),
                f"max_gap {seconds_words(spec.max_gap)} is not longer than the "
                f"{seconds_words(interval)} between two readings: every reading would come "
                f"after a stale alert; set max_gap to more than {seconds_words(interval)} "
                f"(e.g. {seconds_words(10 * interval)}, ten readings)",
            )
        )
    return problems
