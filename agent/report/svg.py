"""The report's plots as inline SVG: two lots' distributions back to back on one axis.

Drawn by hand rather than with matplotlib: the gateway's install has no matplotlib (it is the
``plot`` extra), the report must run there, and a few rectangles and lines keep the HTML
self-contained, small and sharp in print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

THIS = "#c8652b"  # the lot the report is about
OTHER = "#6b7f99"  # the lot it is compared with
INK = "#222"
BINS = 24


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    x = first
    while x <= hi + step * 1e-9:
        ticks.append(round(x, 10))
        x += step
    return ticks


def _tick_text(x: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and digits == 0 and not float(step).is_integer():
        digits = 1
    return f"{x:.{digits}f}"


def distributions(
    this: Sequence[float],
    other: Sequence[float],
    *,
    this_label: str,
    other_label: str,
    unit: str,
    effect: float = 0.0,
    width: int = 380,
    height: int = 176,
) -> str:
    """Back-to-back histograms: ``other`` above the axis, ``this`` below, on shared bins; each
    lot's mean as a line, and the other lot's mean ± ``effect`` as a grey band."""
    a = np.asarray(this, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    # The axis spans the bulk of both lots: a single outlier (a door left open) would squash
    # the rest into a few bins; it is drawn in the edge bin instead.
    both = np.concatenate((a, b))
    lo, hi = (float(x) for x in np.percentile(both, [0.5, 99.5]))
    lo, hi = min(lo, mean_a, mean_b), max(hi, mean_a, mean_b)
    if effect > 0:
        lo, hi = min(lo, mean_b - effect), max(hi, mean_b + effect)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, BINS + 1)
    ca = np.histogram(np.clip(a, lo, hi), edges)[0] / len(a)
    cb = np.histogram(np.clip(b, lo, hi), edges)[0] / len(b)
    top = float(max(ca.max(), cb.max())) or 1.0

    left, right, head, foot = 10.0, 10.0, 16.0, 30.0
    plot_w = width - left - right
    half = (height - head - foot) / 2
    mid = head + half

    def px(x: float) -> float:
        return left + (x - lo) / (hi - lo) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="DejaVu Sans, Arial, sans-serif" '
        f'aria-label="{escape(other_label)} above, {escape(this_label)} below">'
    ]
    if effect > 0:
        x0, x1 = px(mean_b - effect), px(mean_b + effect)
        out.append(
            f'<rect x="{x0:.1f}" y="{head:.1f}" width="{x1 - x0:.1f}" height="{2 * half:.1f}" '
            'fill="#000" fill-opacity="0.07"/>'
        )
    bar_w = plot_w / BINS
    for i in range(BINS):
        x = left + i * bar_w
        if cb[i] > 0:
            h = cb[i] / top * (half - 2)
            out.append(
                f'<rect x="{x + 0.5:.1f}" y="{mid - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}" fill="{OTHER}"/>'
            )
        if ca[i] > 0:
            h = ca[i] / top * (half - 2)
            out.append(
                f'<rect x="{x + 0.5:.1f}" y="{mid:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}" fill="{THIS}"/>'
            )
    for mean, y0, y1 in ((mean_b, head, mid), (mean_a, mid, mid + half)):
        x = px(mean)
        out.append(
            f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{INK}" '
            'stroke-width="1.5"/>'
        )
    out.append(
        f'<line x1="{left}" y1="{mid:.1f}" x2="{width - right}" y2="{mid:.1f}" stroke="{INK}" '
        'stroke-width="0.8"/>'
    )
    out.append(
        f'<text x="{left}" y="{head - 4:.1f}" font-size="10" fill="{OTHER}">'
        f"{escape(other_label)}</text>"
    )
    out.append(
        f'<text x="{left}" y="{mid + half + 11:.1f}" font-size="10" fill="{THIS}">'
        f"{escape(this_label)}</text>"
    )
    axis_y = mid + half
    ticks = [t for t in nice_ticks(lo, hi) if lo <= t <= hi]
    for t in ticks:
        x = px(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{head:.1f}" x2="{x:.1f}" y2="{axis_y:.1f}" stroke="#ccc" '
            'stroke-width="0.5" stroke-dasharray="2,2"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{axis_y + 24:.1f}" font-size="9.5" text-anchor="middle" '
            f'fill="#555">{_tick_text(t, ticks)}</text>'
        )
    out.append(
        f'<text x="{width - right}" y="{axis_y + 11:.1f}" font-size="9.5" text-anchor="end" '
        f'fill="#555">{escape(unit)}</text>'
    )
    out.append("</svg>")
    return "".join(out)
