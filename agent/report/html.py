"""The second-batch report as one self-contained HTML page (inline CSS and SVG, no assets).

Read top to bottom by a buyer or a production manager: the answer first (does lot B behave
like lot A, and where not), then the table of every channel, the distributions side by side,
colour per SKU under each light, the incidents during each lot, and how it was computed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from html import escape

from agent.drift.compare import Verdict, p_words
from agent.incidents.model import Incident
from agent.incidents.words import local_zone
from agent.report.data import ChannelResult, ReportData, fmt_value
from agent.report.svg import OTHER, THIS, distributions

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Arial, sans-serif; color: #222; margin: 0 auto;
       max-width: 60rem; padding: 1.2rem; font-size: 10.5pt; line-height: 1.4; }
h1 { font-size: 18pt; margin: 0 0 .2rem; }
h2 { font-size: 12.5pt; margin: 1.4rem 0 .5rem; border-bottom: 1px solid #ddd;
     padding-bottom: .2rem; }
h3 { font-size: 10.5pt; margin: .8rem 0 .3rem; }
.meta { color: #666; margin: 0 0 1rem; font-size: 9pt; }
.answer { border-left: 6px solid #3d8f6a; background: #f1f8f4; padding: .6rem .9rem;
          margin: 0 0 .6rem; }
.answer.differs { border-color: #b3261e; background: #fcf1f0; }
.answer p { margin: .2rem 0; }
.answer .summary { font-size: 12pt; }
table { border-collapse: collapse; width: 100%; font-size: 9pt; table-layout: fixed; }
tr { break-inside: avoid; }
small { color: #555; }
th, td { text-align: left; padding: .28rem .45rem; border-bottom: 1px solid #e4e4e4;
         vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num, th.num { text-align: right; }
tr.differs td { background: #fdf3f2; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: .6rem; font-size: 8.5pt;
         white-space: nowrap; color: #fff; }
.badge.differs { background: #b3261e; }
.badge.small { background: #8a7a3a; }
.badge.unsure { background: #9a6b1e; }
.badge.same { background: #3d8f6a; }
.badge.over { background: #b3261e; }
.badge.warn { background: #c47f17; }
.badge.within { background: #3d8f6a; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; }
.card { border: 1px solid #e0e0e0; border-radius: 4px; padding: .4rem .5rem; margin: 0;
        width: calc(50% - .3rem); break-inside: avoid; }
.card.differs { border-color: #b3261e; }
.card figcaption { font-weight: 600; font-size: 9.5pt; }
.card .stats { font-size: 8.5pt; color: #444; margin: .1rem 0 0; }
.card svg { display: block; width: 100%; height: auto; }
.key { font-size: 8.5pt; color: #555; }
.key i { display: inline-block; width: .8rem; height: .6rem; margin: 0 .2rem 0 .6rem; }
ul.incidents { margin: .2rem 0; padding-left: 1.1rem; }
ul.incidents li { margin: .2rem 0; }
footer { margin-top: 1.6rem; font-size: 8.5pt; color: #555; border-top: 1px solid #ddd;
         padding-top: .4rem; }
"""


def _when(ns: int, data: ReportData) -> str:
    zone = local_zone(data.timezone)
    return datetime.fromtimestamp(ns / 1e9, zone).strftime("%Y-%m-%d %H:%M")


def _digits(c: ChannelResult) -> int:
    """Decimals that show a difference of the size that matters (±1 %RH: 0.01)."""
    ref = c.effect if c.effect > 0 else abs(c.result.diff)
    return 2 if ref < 5 else 1


def _badge(v: Verdict) -> str:
    return f'<span class="badge {v.value}">{escape(v.words)}</span>'


def _signed(x: float, d: int) -> str:
    return f"{x:+.{d}f}".replace("-", "−")


def _diff(c: ChannelResult, *, cell: bool = False) -> str:
    d = _digits(c)
    r = c.result
    value = f"{_signed(r.diff, d)} {escape(c.unit)}"
    interval = f"{_signed(r.low, d)} to {_signed(r.high, d)}"
    if cell:
        return f"{value}<br><small>{interval}</small>"
    return f"{value} ({interval})"


def _stat_cell(c: ChannelResult, mean: float, values: tuple[float, ...]) -> str:
    import numpy as np

    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    d = _digits(c)
    return f"{mean:.{d}f} {escape(c.unit)}<br><small>sd {std:.{d}f} · n {len(values)}</small>"


def _direction(c: ChannelResult) -> str:
    word = "higher" if c.result.diff > 0 else "lower"
    return f"{fmt_value(abs(c.result.diff), c.unit, _digits(c))} {word}"


def _answer(data: ReportData) -> str:
    lot = escape(data.lot)
    n = len(data.channels) + len(data.colour)
    differing = data.differing
    against = escape(data.against)
    if differing:
        names = "; ".join(
            f'<span class="channel-name">{escape(c.label)}</span> ({escape(_direction(c))}'
            + (f" than {escape(c.other_name)}" if data.mode != "lot" else "")
            + ")"
            for c in differing
        )
        summary = (
            f"Lot {lot} <b>differs</b> from {against} in {len(differing)} of {n} "
            f"channel{'s' if n != 1 else ''}: {names}."
        )
    else:
        summary = (
            f"Lot {lot} behaves like {against}: no practical difference in "
            f"{'any of the ' + str(n) + ' channels' if n != 1 else 'the one channel'} compared."
        )
    parts = [f'<p class="summary">{summary}</p>']
    if data.colour:
        lo, hi = data.tolerance
        worst = max(data.colour, key=lambda c: c.result.mean_new)
        if worst.result.mean_new >= hi:
            text = (
                f"Colour: {escape(worst.label)} averages ΔE00 {worst.result.mean_new:.2f}, above "
                f"the tolerance of {hi:g}."
            )
        elif worst.result.mean_new >= lo:
            text = (
                f"Colour: within the tolerance of {hi:g} under every light checked, but "
                f"{escape(worst.label)} averages ΔE00 {worst.result.mean_new:.2f}, above the "
                f"warning level of {lo:g}."
            )
        else:
            text = (
                f"Colour: every SKU within the warning level of ΔE00 {lo:g} of its approved "
                "reference under every light checked."
            )
        parts.append(f"<p>{text}</p>")
    count = len(data.incidents_lot)
    others = sum(len(v) for v in data.incidents_other.values())
    parts.append(
        f"<p>Incidents: {count} while lot {lot} was in production, {others} during "
        f"{escape(', '.join('lot ' + o for o in data.other_lots))}.</p>"
    )
    if data.only_lot:
        parts.append(
            '<p class="key">Not compared (no readings of the other lot, or fewer than 10): '
            f"{escape(', '.join(data.only_lot))}.</p>"
        )
    cls = "answer differs" if differing else "answer"
    return f'<section class="{cls}">' + "".join(parts) + "</section>"


def _other_head(data: ReportData) -> str:
    if data.mode != "lot":
        return "Compared with"
    return escape(data.against[:1].upper() + data.against[1:])


def _channel_rows(data: ReportData, results: Iterable[ChannelResult]) -> str:
    conf = next(iter(data.channels + data.colour)).result.confidence
    head = (
        '<colgroup><col style="width:31%"><col style="width:16%"><col style="width:16%">'
        '<col style="width:18%"><col style="width:19%"></colgroup>'
        f'<tr><th>Channel</th><th class="num">{_other_head(data)}</th>'
        f'<th class="num">Lot {escape(data.lot)}</th>'
        f'<th class="num">Difference<br><small>{conf:.0%} confidence</small></th>'
        "<th>Verdict</th></tr>"
    )
    rows = [head]
    for c in results:
        cls = ' class="differs"' if c.verdict is Verdict.DIFFERS else ""
        other = f"<small>{escape(c.other_name)}</small><br>" if data.mode != "lot" else ""
        rows.append(
            f'<tr{cls} data-channel="{escape(c.channel)}" data-verdict="{c.verdict.value}">'
            f"<td>{escape(c.label)}<br><small>{escape(c.channel)}</small></td>"
            f'<td class="num">{other}{_stat_cell(c, c.result.mean_prev, c.other.values)}</td>'
            f'<td class="num">{_stat_cell(c, c.result.mean_new, c.lot.values)}</td>'
            f'<td class="num">{_diff(c, cell=True)}</td>'
            f"<td>{_badge(c.verdict)}<br><small>matters from ±{c.effect:g} "
            f"{escape(c.unit)}</small></td></tr>"
        )
    return '<table class="channels">' + "".join(rows) + "</table>"


def _card(data: ReportData, c: ChannelResult) -> str:
    r = c.result
    svg = distributions(
        c.lot.values,
        c.other.values,
        this_label=f"lot {data.lot} (n = {r.n_new})",
        other_label=f"{c.other_name} (n = {r.n_prev})",
        unit=c.unit,
        effect=c.effect,
    )
    cls = "card differs" if c.verdict is Verdict.DIFFERS else "card"
    stats = (
        f"Difference {_diff(c)}; Welch t = {r.t:.1f}, {p_words(r.p)}; KS D = {r.ks_d:.2f}. "
        f"{c.verdict.words.capitalize()}."
    )
    return (
        f'<figure class="{cls}" data-channel="{escape(c.channel)}">'
        f"<figcaption>{escape(c.label)}</figcaption>{svg}"
        f'<p class="stats">{escape(stats)}</p></figure>'
    )


def _tolerance_badge(de: float, tolerance: tuple[float, float]) -> str:
    warn, alarm = tolerance
    if de >= alarm:
        return f'<span class="badge over">above tolerance {alarm:g}</span>'
    if de >= warn:
        return f'<span class="badge warn">above warning {warn:g}</span>'
    return f'<span class="badge within">within {warn:g}</span>'


def _colour(data: ReportData) -> str:
    if not data.colour:
        return ""
    from agent.color.colorimetry import illuminant_slug, illuminant_words
    from agent.config.models import COLOR_ILLUMINANT_ALIASES

    names = {illuminant_slug(n): n for n in set(COLOR_ILLUMINANT_ALIASES.values())}
    rows = [
        '<colgroup><col style="width:15%"><col style="width:21%"><col style="width:13%">'
        '<col style="width:13%"><col style="width:18%"><col style="width:20%"></colgroup>'
        f'<tr><th>SKU, part</th><th>Light</th><th class="num">{_other_head(data)}</th>'
        f'<th class="num">Lot {escape(data.lot)}</th><th>Lot {escape(data.lot)} against the '
        'reference</th><th class="num">Change</th></tr>'
    ]
    for c in sorted(data.colour, key=lambda c: (c.sku, c.part, c.illuminant)):
        light = names.get(c.illuminant)
        words = illuminant_words(light) if light else c.illuminant.upper()
        r = c.result
        rows.append(
            f'<tr data-channel="{escape(c.channel)}" data-verdict="{c.verdict.value}">'
            f"<td>{escape(c.sku)} {escape(c.part)}</td><td>{escape(words)}</td>"
            f'<td class="num">ΔE00 {r.mean_prev:.2f}<br><small>n {r.n_prev}</small></td>'
            f'<td class="num">ΔE00 {r.mean_new:.2f}<br><small>n {r.n_new}</small></td>'
            f"<td>{_tolerance_badge(r.mean_new, data.tolerance)}</td>"
            f'<td class="num">{_diff(c, cell=True)}<br>{_badge(c.verdict)}</td></tr>'
        )
    return (
        "<h2>Colour against the approved references</h2>"
        '<p class="key">ΔE00 of each measurement against the SKU\'s approved reference, under '
        "each light; the tolerance is the configured <code>color.tolerance</code>.</p>"
        "<table>" + "".join(rows) + "</table>"
    )


def _incident_items(incidents: list[Incident], data: ReportData) -> str:
    if not incidents:
        return '<p class="key">None.</p>'
    items = []
    for inc in incidents:
        member = inc.worst_member()
        what = (member.message if member else inc.label).split(". ")[0].rstrip(".")
        for prefix in ("WARN: ", "ALARM: "):
            what = what.removeprefix(prefix)
        state = inc.state if inc.state != "cleared" else f"cleared {_when(inc.cleared_ns, data)}"
        items.append(
            f"<li><b>{escape(_when(inc.opened_ns, data))}</b> {escape(what)}. "
            f"<small>{escape(inc.peak)}, {escape(state)}, incident {escape(inc.id)}</small></li>"
        )
    return '<ul class="incidents">' + "".join(items) + "</ul>"


def _incidents(data: ReportData) -> str:
    parts = ["<h2>Incidents</h2>", f"<h3>While lot {escape(data.lot)} was in production</h3>"]
    parts.append(_incident_items(data.incidents_lot, data))
    for other, incidents in data.incidents_other.items():
        parts.append(f"<h3>While lot {escape(other)} was in production</h3>")
        parts.append(_incident_items(incidents, data))
    return "".join(parts)


def _span(data: ReportData) -> str:
    results = data.channels + data.colour
    first = min(c.lot.first_ns for c in results)
    last = max(c.lot.last_ns for c in results)
    text = f"Lot {escape(data.lot)}: readings from {_when(first, data)} to {_when(last, data)}"
    if data.mode == "lot":
        o_first = min(c.other.first_ns for c in results)
        o_last = max(c.other.last_ns for c in results)
        text += f"; {escape(data.against)}: {_when(o_first, data)} to {_when(o_last, data)}"
    return text + "."


def render(data: ReportData, generated_ns: int | None = None) -> str:
    """The whole page."""
    generated = _when(generated_ns if generated_ns is not None else time.time_ns(), data)
    where = " · ".join(x for x in (data.site, data.gateway) if x)
    title = f"Lot {data.lot} against {data.against}"
    results = data.channels
    ordered = sorted(results, key=lambda c: c.verdict is not Verdict.DIFFERS)
    alpha = next(iter(data.channels + data.colour)).alpha
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(where + " · " if where else "")}generated {generated}'
        f"{' (' + escape(data.timezone) + ')' if data.timezone else ''} from the gateway's local "
        f"history. {_span(data)}</p>",
        _answer(data),
    ]
    if results:
        body += [
            "<h2>Channels</h2>",
            _channel_rows(data, ordered),
            "<h2>Distributions</h2>",
            f'<p class="key"><i style="background:{OTHER}"></i>{escape(data.against)} (above)'
            f'<i style="background:{THIS}"></i>lot {escape(data.lot)} (below); lines: the '
            "means; grey band: the other lot's mean ± the effect that matters.</p>",
            '<div class="cards">' + "".join(_card(data, c) for c in ordered) + "</div>",
        ]
    body.append(_colour(data))
    body.append(_incidents(data))
    body.append(
        "<footer>How this was computed: each lot's sample on each channel is its first "
        "readings there (<code>lots.readings</code>, or the channel's <code>lot_readings</code>),"
        " the sample the agent's own lot comparison judged. The difference is lot "
        f"{escape(data.lot)}'s mean minus the other's, with its {1 - alpha:.0%} confidence "
        f"interval (Welch); it differs when Welch's t-test gives p &lt; {alpha:g} and the "
        "difference is at least the effect that matters (<code>lots.effect</code> for the kind,"
        " or the channel's <code>lot_effect</code>); a <i>small difference</i> is significant "
        "but below that effect; <i>unclear</i>: as large as the effect, but too few or too "
        "scattered readings to be sure. KS D is the largest gap between the two "
        "distributions (Kolmogorov–Smirnov). Made by <code>driftgate report</code> from "
        "history.sqlite, lots.json, approved_lots.json and incidents.sqlite.</footer>"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · driftgate</title><style>{CSS}</style></head>"
        "<body>" + "".join(body) + "</body></html>\n"
    )
