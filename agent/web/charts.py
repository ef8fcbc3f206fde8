"""Sparklines and charts as inline SVG, drawn on the server from the local history's buckets:
no chart library and nothing fetched by the browser. Colours come from the stylesheet
(classes only), so the page's Content-Security-Policy can forbid inline styles."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime, timedelta, tzinfo

from agent.store.history import Bucket


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def _range(values: Sequence[float], pad: float = 0.08) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def _segments(points: list[tuple[float, float] | None]) -> str:
    """An SVG path through the points; None breaks the line (a gap in the data)."""
    out: list[str] = []
    pen_down = False
    for point in points:
        if point is None:
            pen_down = False
            continue
        x, y = point
        out.append(f"{'L' if pen_down else 'M'}{x:.1f} {y:.1f}")
        pen_down = True
    return " ".join(out)


def _with_gaps(buckets: Sequence[Bucket], step_ns: int) -> list[Bucket | None]:
    """The buckets in order, with None where one or more are missing."""
    out: list[Bucket | None] = []
    prev: Bucket | None = None
    for b in buckets:
        if prev is not None and b.start_ns - prev.start_ns > step_ns * 1.5:
            out.append(None)
        out.append(b)
        prev = b
    return out


def sparkline(
    buckets: Sequence[Bucket],
    start_ns: int,
    end_ns: int,
    step_ns: int,
    *,
    band: tuple[float | None, float | None] = (None, None),
    label: str = "",
) -> str:
    """A small line of the means over [start_ns, end_ns), the band shaded behind it."""
    w, h = 240.0, 48.0
    if not buckets:
        return (
            f'<svg class="spark" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
            f'aria-label="{html.escape(label)}: no history yet"></svg>'
        )
    lows, highs = [b.mean for b in buckets], [b.mean for b in buckets]
    lo, hi = _range([*lows, *highs, *(v for v in band if v is not None)])
    span = max(end_ns - start_ns, 1)

    def x(ns: int) -> float:
        return (ns - start_ns) / span * w

    def y(v: float) -> float:
        return h - (v - lo) / (hi - lo) * h

    parts = [
        f'<svg class="spark" viewBox="0 0 {w:.0f} {h:.0f}" preserveAspectRatio="none" '
        f'role="img" aria-label="{html.escape(label)}">'
    ]
    low, high = band
    if low is not None or high is not None:
        top = y(high) if high is not None else 0.0
        bottom = y(low) if low is not None else h
        top, bottom = max(min(top, h), 0.0), max(min(bottom, h), 0.0)
        parts.append(
            f'<rect class="spark-band" x="0" y="{top:.1f}" width="{w:.0f}" '
            f'height="{max(bottom - top, 0):.1f}"/>'
        )
    points = [
        None if b is None else (x(b.start_ns + step_ns // 2), y(b.mean))
        for b in _with_gaps(buckets, step_ns)
    ]
    parts.append(f'<path class="spark-line" d="{_segments(points)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    step = _nice_step(hi - lo, count)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _tick_text(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def chart(
    buckets: Sequence[Bucket],
    start_ns: int,
    end_ns: int,
    step_ns: int,
    zone: tzinfo,
    *,
    baseline: float | None = None,
    limits: Sequence[tuple[str, float]] = (),
    spans: Sequence[tuple[str, int, int]] = (),
    unit: str = "",
    label: str = "",
) -> str:
    """The channel page's chart: per bucket the mean, and the lowest to highest reading shaded;
    the baseline, the limits (``("warn"|"alarm", value)``) and incidents
    (``(level, start_ns, end_ns)``) on top. Times on the axis in the site's time zone."""
    w, h = 960.0, 320.0
    left, right, top, bottom = 56.0, 12.0, 12.0, 28.0
    pw, ph = w - left - right, h - top - bottom
    head = (
        f'<svg class="chart" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
        f'aria-label="{html.escape(label)}">'
    )
    if not buckets:
        return (
            head + f'<text class="axis" x="{w / 2:.0f}" y="{h / 2:.0f}" '
            'text-anchor="middle">No history for this span yet</text></svg>'
        )
    values = [b.low for b in buckets] + [b.high for b in buckets]
    values += [v for _, v in limits]
    if baseline is not None:
        values.append(baseline)
    lo, hi = _range(values, pad=0.05)
    span = max(end_ns - start_ns, 1)

    def x(ns: int) -> float:
        return left + (min(max(ns, start_ns), end_ns) - start_ns) / span * pw

    def y(v: float) -> float:
        return top + ph - (v - lo) / (hi - lo) * ph

    parts = [head]
    for level, opened, closed in spans:
        x0, x1 = x(opened), x(closed)
        parts.append(
            f'<rect class="chart-inc-{level}" x="{x0:.1f}" y="{top:.0f}" '
            f'width="{max(x1 - x0, 1.5):.1f}" height="{ph:.0f}"/>'
        )
    for v in _ticks(lo, hi):
        parts.append(
            f'<line class="grid" x1="{left:.0f}" x2="{w - right:.0f}" '
            f'y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{left - 6:.0f}" y="{y(v) + 4:.1f}" '
            f'text-anchor="end">{_tick_text(v)}</text>'
        )
    days = (end_ns - start_ns) / 86400e9
    first = datetime.fromtimestamp(start_ns / 1e9, zone)
    if days <= 1.5:
        tick = first.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        every, form = timedelta(hours=3 if days > 0.5 else 1), "%H:%M"
        tick = tick.replace(hour=tick.hour - tick.hour % (3 if days > 0.5 else 1))
    else:
        tick = first.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        every, form = timedelta(days=max(1, round(days / 8))), "%a %d %b"
    while tick.timestamp() * 1e9 < end_ns:
        tx = x(int(tick.timestamp() * 1e9))
        if tx >= left:
            parts.append(
                f'<line class="grid" x1="{tx:.1f}" x2="{tx:.1f}" y1="{top:.0f}" '
                f'y2="{top + ph:.0f}"/>'
            )
            parts.append(
                f'<text class="axis" x="{tx:.1f}" y="{h - 8:.0f}" '
                f'text-anchor="middle">{tick.strftime(form)}</text>'
            )
        tick += every
    gapped = _with_gaps(buckets, step_ns)
    run: list[Bucket] = []
    for b in [*gapped, None]:
        if b is not None:
            run.append(b)
            continue
        if run:
            upper = " ".join(f"{x(r.start_ns + step_ns // 2):.1f},{y(r.high):.1f}" for r in run)
            lower = " ".join(
                f"{x(r.start_ns + step_ns // 2):.1f},{y(r.low):.1f}" for r in reversed(run)
            )
            parts.append(f'<polygon class="chart-range" points="{upper} {lower}"/>')
        run = []
    points = [None if b is None else (x(b.start_ns + step_ns // 2), y(b.mean)) for b in gapped]
    parts.append(f'<path class="chart-mean" d="{_segments(points)}"/>')
    for level, v in limits:
        parts.append(
            f'<line class="chart-{level}" x1="{left:.0f}" x2="{w - right:.0f}" '
            f'y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        )
    if baseline is not None:
        parts.append(
            f'<line class="chart-base" x1="{left:.0f}" x2="{w - right:.0f}" '
            f'y1="{y(baseline):.1f}" y2="{y(baseline):.1f}"/>'
        )
    if unit:
        parts.append(f'<text class="axis" x="4" y="{top + 10:.0f}">{html.escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)
