"""Plain words for numbers, times and spans, as supervisors and the CLI read them."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def iso(ts_ns: int) -> str:
    """Reading time as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(ts_ns: int) -> str:
    """Reading time as a supervisor reads it: 2026-11-12 14:05 UTC."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt(x: float, unit: str) -> str:
    """A number with sensible precision and its unit."""
    if not math.isfinite(x):
        return "n/a"
    mag = abs(x)
    text = f"{x:.0f}" if mag >= 100 else f"{x:.1f}" if mag >= 1 else f"{x:.2f}"
    return f"{text} {unit}".strip()


def fmt_rate(per_h: float, unit: str) -> str:
    """A rate of change in the unit that reads best: per hour, or per day when slow."""
    if not math.isfinite(per_h):
        return ""
    if abs(per_h) < 0.5:
        return f"{fmt(per_h * 24, unit)}/day"
    return f"{fmt(per_h, unit)}/h"


def duration_words(seconds: float) -> str:
    """A span in words: 3 d 4 h, 5 h 20 min, 12 min."""
    seconds = max(seconds, 0.0)
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"
