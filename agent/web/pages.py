"""The status page's HTML, rendered on the server from the snapshot (``agent.web.floor``).

Plain f-strings with every value escaped: no template engine, nothing to fetch. Three modes:
``full`` (the supervisor's tablet: links, acknowledge buttons, the gateway's health), ``kiosk``
(the wall screen: large type, no control of any kind) and the channel page. The parts that
live updates replace (``incidents_html``, ``health_html``) are functions of their own, so the
server-sent events carry exactly what the first render showed.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Any
from urllib.parse import quote

from agent.incidents.words import local_time
from agent.web.floor import zone_words
from agent.words import duration_words, fmt

LEVEL_WORDS = {"warn": "WARNING", "alarm": "ALARM", "ok": "NORMAL"}

DONE = {
    "ack": "Acknowledged. The routes of the incident are told who took it on.",
    "captured": "Baseline captured. The detectors compare against it within a second.",
    "login": "Logged in.",
    "logout": "Logged out.",
}
"""Messages after an action (fixed texts: nothing from the request is shown back)."""


EMPTY_SPARK = '<svg class="spark" viewBox="0 0 240 48" aria-hidden="true"></svg>'
"""Where a sparkline goes until it is drawn (the event stream brings it)."""


def e(value: object) -> str:
    """Escape for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def channel_href(name: str) -> str:
    """The channel page's path."""
    return "/channels/" + quote(name, safe="")


def number(x: float | None, unit: str = "") -> str:
    """A value with its unit, or a dash."""
    return "–" if x is None or not math.isfinite(x) else fmt(x, unit)


def page(
    title: str,
    body: str,
    *,
    site: str,
    gateway: str,
    mode: str,
    who: str = "",
    csrf: str = "",
    summary: str = "",
    asset: str = "",
    channel: str = "",
    message: str = "",
) -> str:
    """A whole page around ``body``: head, the top bar, the live-update script."""
    kiosk = mode == "kiosk"
    meta = f'<meta name="csrf" content="{e(csrf)}">' if csrf else ""
    if kiosk:
        nav = ""
    else:
        account = (
            f'<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<span class="who">{e(who)}</span> <button type="submit" class="link">Log out'
            "</button></form>"
            if who
            else '<a href="/login">Log in</a>'
        )
        nav = (
            f'<nav class="nav"><a href="/">Floor</a><a href="/kiosk">Wall screen</a>{account}</nav>'
        )
    note = f'<p class="message" role="status">{e(message)}</p>' if message else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · driftgate</title>{meta}"
        f'<link rel="stylesheet" href="/static/status.css?v={e(asset)}">'
        f'<script src="/static/status.js?v={e(asset)}" defer></script></head>'
        f'<body class="mode-{e(mode)}" data-mode="{e(mode)}" data-channel="{e(channel)}">'
        f'<header class="top"><div class="brand"><span class="logo">driftgate</span> '
        f'<span class="where">{e(site)} · {e(gateway)}</span></div>'
        f'<div id="summary" class="summary">{summary}</div>{nav}'
        '<div id="live" class="live" role="status" title="live updates">live</div></header>'
        f"<main>{note}{body}</main></body></html>\n"
    )


# -- the floor ---------------------------------------------------------------------------------


def summary_html(health: Mapping[str, Any]) -> str:
    """The top bar's one-line health: OK, or the first problem (colour and words)."""
    if health["ok"]:
        return '<span class="pill st-ok">Gateway OK</span>'
    first = health["problems"][0]
    more = len(health["problems"]) - 1
    extra = f" (+{more} more)" if more else ""
    return f'<span class="pill st-alarm">Gateway problem: {e(first)}{e(extra)}</span>'


def incidents_html(incidents: Sequence[Mapping[str, Any]], *, kiosk: bool, csrf: str = "") -> str:
    """The open incidents: not acknowledged first, with their words, since when, and (full
    mode) the acknowledge form."""
    if not incidents:
        return (
            '<h2>Open incidents</h2><p class="none st-ok-text">No open incidents: every '
            "channel is normal.</p>"
        )
    cards = []
    for inc in incidents:
        level = inc["level"]
        acked = inc["acknowledged"]
        badge = LEVEL_WORDS.get(level, level.upper())
        state = f" · acknowledged by {e(inc['acked_by'])}" if acked else " · not acknowledged"
        note = f": “{e(inc['acked_note'])}”" if acked and inc["acked_note"] else ""
        todo = f'<p class="todo">What to do: {e(inc["action"])}</p>' if inc["action"] else ""
        lots = inc["context"].get("lot")
        held = f'<p class="lots">Lots made meanwhile: {e(", ".join(lots))}</p>' if lots else ""
        title = (
            e(inc["label"])
            if kiosk
            else (f'<a href="{e(channel_href(inc["channel"]))}">{e(inc["label"])}</a>')
        )
        form = ""
        if not kiosk and not acked:
            form = (
                f'<form method="post" action="/incidents/{e(quote(inc["id"], safe=""))}/ack" '
                f'class="ack"><input type="hidden" name="csrf" value="{e(csrf)}">'
                '<input type="text" name="note" maxlength="200" placeholder="note (optional)" '
                'aria-label="note"><button type="submit">Acknowledge</button></form>'
            )
        cards.append(
            f'<article class="incident lvl-{e(level)}{" acked" if acked else ""}" '
            f'data-incident="{e(inc["id"])}">'
            f'<div class="badge lvl-{e(level)}">{badge}'
            f"{'<small>acknowledged</small>' if acked else ''}</div>"
            f'<div class="body"><h3>{title}</h3><p class="what">{e(inc["what"])}</p>'
            f'<p class="since">{e(inc["since"][:1].upper() + inc["since"][1:])}{state}{note}'
            f'<span class="id"> · {e(inc["id"])}</span></p>{todo}{held}</div>{form}</article>'
        )
    count = len(incidents)
    return f'<h2>Open incidents <span class="count">{count}</span></h2>' + "".join(cards)


def card_html(ch: Mapping[str, Any], spark: str, *, kiosk: bool) -> str:
    """One channel: its value, state (colour and word), baseline, band and 24 h sparkline."""
    base = ch["baseline"]
    band = ch["band"]
    unit = ch["unit"]
    parts = []
    if base is not None and base["mean"] is not None:
        parts.append(f"baseline {number(base['mean'], unit)}")
    elif base is not None:
        parts.append("baseline: learning")
    if band is not None and (band["low"] is not None or band["high"] is not None):
        low = number(band["low"]) if band["low"] is not None else "…"
        high = number(band["high"]) if band["high"] is not None else "…"
        parts.append(f"{band['what']} {low}–{high}")
    meta = " · ".join(parts)
    tag = "div" if kiosk else "a"
    href = "" if kiosk else f' href="{e(channel_href(ch["name"]))}"'
    state = ch["state"]
    return (
        f'<{tag} class="card st-{e(state)}"{href} data-channel="{e(ch["name"])}">'
        f'<div class="card-head"><span class="label">{e(ch["label"])}</span>'
        f'<span class="state st-{e(state)}">{e(ch["word"])}</span></div>'
        f'<div class="value">{e(ch["value_text"])}</div>'
        f'<div class="meta">{e(meta)}</div>{spark}'
        f'<div class="age">{e(ch["age"])}</div></{tag}>'
    )


def _context_words(context: Mapping[str, str]) -> str:
    return " · ".join(f"{e(k)} {e(v)}" for k, v in context.items())


def floor_html(
    snap: Mapping[str, Any],
    sparks: Mapping[str, str],
    *,
    kiosk: bool,
    only: frozenset[str] = frozenset(),
) -> str:
    """Every zone with its channels (``only`` these zones, when given: one wall screen per
    room), and the production context of its lines."""
    zones: dict[str, list[Mapping[str, Any]]] = {}
    for ch in snap["channels"]:
        if not only or ch["zone"] in only:
            zones.setdefault(ch["zone"], []).append(ch)
    context = snap["context"]
    out = []
    for zone, channels in zones.items():
        lines = sorted({ch["line"] for ch in channels if ch["line"]})
        told = []
        if zone and context.get(f"zone:{zone}"):
            told.append(f"<span>{_context_words(context[f'zone:{zone}'])}</span>")
        for line in lines:
            tags = context.get(f"line:{line}")
            told.append(
                f"<span><b>Line {e(line)}</b> {_context_words(tags)}</span>"
                if tags
                else f"<span><b>Line {e(line)}</b> no lot set</span>"
            )
        ctx = f'<p class="context">{"".join(told)}</p>' if told else ""
        cards = "".join(
            card_html(ch, sparks.get(ch["name"], EMPTY_SPARK), kiosk=kiosk) for ch in channels
        )
        out.append(
            f'<section class="zone"><h2>{e(zone_words(zone))}</h2>{ctx}'
            f'<div class="cards">{cards}</div></section>'
        )
    if not out:
        out.append('<p class="none">No channels yet: the sources have not sent a reading.</p>')
    return "".join(out)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    return duration_words(seconds) + " ago"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def health_html(health: Mapping[str, Any]) -> str:
    """The gateway's own health, a table for factory IT."""
    rows = []
    for s in health["sources"]:
        if s["connected"] is None:
            text = f"{e(s['word'])} · {s['frames']:,} samples"
        else:
            age = _age(s["last_frame_age_s"]) if s["last_frame_age_s"] is not None else "none yet"
            text = (
                f"{e(s['word'])} · last frame {e(age)} · {s['frames']:,} frames · "
                f"{s['decode_errors']:,} decode errors · {s['reconnects']} reconnects"
            )
        cls = "st-ok" if s["ok"] else "st-alarm"
        rows.append((f"Source {s['name']} ({s['kind']})", text, cls))
    sp = health["spool"]
    drain = sp["drain_s"]
    if health["influx"] is None:
        drains = "kept: no InfluxDB configured"
    elif sp["backlog_lines"] == 0:
        drains = "nothing waiting"
    elif drain is None:
        drains = "not draining now"
    else:
        drains = "drains in " + (f"{drain:.0f} s" if drain < 60 else duration_words(drain))
    spool_cls = "st-ok" if sp["healthy"] else "st-alarm"
    disk = "disk full: " if sp["disk_full"] else ("cannot write: " if not sp["healthy"] else "")
    rows.append(
        (
            "Spool",
            f"{disk}{sp['backlog_lines']:,} lines waiting · {drains} · oldest "
            f"{_age(sp['oldest_age_s']) if sp['oldest_age_s'] else '–'} · "
            f"{_bytes(sp['disk_bytes'])} on disk of {_bytes(sp['max_bytes'])}",
            spool_cls,
        )
    )
    influx = health["influx"]
    if influx is None:
        rows.append(("InfluxDB", "not configured: readings stay in the spool", "st-nodata"))
    else:
        last = influx["last_write_age_s"]
        rows.append(
            (
                "InfluxDB",
                f"{e(influx['url'])} · {'answering' if influx['reachable'] else 'not answering'} · "
                f"last write {_age(last)} · {influx['forwarded']:,} lines forwarded",
                "st-ok" if influx["reachable"] else "st-warn",
            )
        )
    mqtt = health["mqtt"]
    if mqtt is not None:
        rows.append(
            (
                "MQTT broker",
                f"{e(mqtt['broker'])} · {'connected' if mqtt['connected'] else 'not connected'} · "
                f"{mqtt['messages']:,} messages",
                "st-ok" if mqtt["connected"] else "st-warn",
            )
        )
    lag = health["loop_lag"]
    rows.append(
        (
            "Event loop",
            f"lag max {lag['max_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms",
            "st-ok" if lag["max_ms"] < 100 else "st-warn",
        )
    )
    rows.append(
        (
            "Process",
            f"{_bytes(health['rss_bytes'])} resident · up {duration_words(health['uptime_s'])} · "
            f"{health['readings_in']:,} readings · {health['task_restarts']} task restarts",
            "st-ok",
        )
    )
    body = "".join(
        f'<tr><th scope="row"><span class="dot {cls}" aria-hidden="true"></span>{e(name)}</th>'
        f"<td>{text}</td></tr>"
        for name, text, cls in rows
    )
    problems = "".join(f'<li class="st-alarm-text">{e(p)}</li>' for p in health["problems"])
    listed = f'<ul class="problems">{problems}</ul>' if problems else ""
    return f'<h2>Gateway</h2>{listed}<table class="health">{body}</table>'


def floor_page(
    snap: Mapping[str, Any],
    floor: str,
    *,
    kiosk: bool,
    csrf: str,
    who: str,
    asset: str,
    message: str = "",
) -> str:
    """The floor: open incidents first, then every zone, then (full mode) the gateway."""
    body = (
        f'<section id="incidents" class="incidents" aria-live="polite">'
        f"{incidents_html(snap['incidents'], kiosk=kiosk, csrf=csrf)}</section>"
        f'<section id="floor" class="floor">{floor}</section>'
    )
    if not kiosk:
        body += f'<section id="health" class="health-box">{health_html(snap["health"])}</section>'
    return page(
        "Wall screen" if kiosk else "Floor",
        body,
        site=snap["site"],
        gateway=snap["gateway"],
        mode="kiosk" if kiosk else "full",
        who=who,
        csrf=csrf,
        summary=summary_html(snap["health"]),
        asset=asset,
        message=message,
    )


# -- a channel -----------------------------------------------------------------------------------

SPANS = (("1", "day"), ("7", "7 days"), ("30", "30 days"))
CAPTURE_SPANS = ("30m", "1h", "2h", "4h", "8h", "1d", "2d", "7d")


def channel_page(
    snap: Mapping[str, Any],
    ch: Mapping[str, Any],
    *,
    chart: str,
    days: str,
    detectors: Sequence[Mapping[str, str]],
    incidents: Sequence[Mapping[str, Any]],
    zone: tzinfo,
    csrf: str,
    who: str,
    asset: str,
    message: str = "",
    error: str = "",
    form: Mapping[str, str] | None = None,
) -> str:
    """One channel: the chart of the last days, its baseline, thresholds, incidents, and the
    form that captures a baseline (after a confirmation)."""
    now = snap["now_ns"]
    base = ch["baseline"]
    band = ch["band"]
    unit = ch["unit"]
    where = " · ".join(f"{k} {e(ch[k])}" for k in ("zone", "line", "station") if ch[k])
    spans = "".join(
        f'<a href="?days={d}" class="{"on" if d == days else ""}">{e(label)}</a>'
        for d, label in SPANS
    )
    if base is not None and base["mean"] is not None:
        std = f" ± {number(base['std'], unit)} (1σ)" if base["std"] is not None else ""
        baseline = e(f"{number(base['mean'], unit)}{std}, {base['describe']}")
    else:
        baseline = "none yet: the channel is learning its baseline"
    if band is not None and band["what"] == "spec":
        named = (
            ("low_alarm", "low alarm"),
            ("low", "low warn"),
            ("high", "high warn"),
            ("high_alarm", "high alarm"),
        )
        band_text = "spec band: " + e(
            ", ".join(
                f"{word} {number(band[k], unit)}" for k, word in named if band.get(k) is not None
            )
        )
    elif band is not None:
        band_text = (
            f"normal range {e(number(band['low']))}–{e(number(band['high'], unit))} "
            "(baseline ± 2σ; no spec band configured)"
        )
    else:
        band_text = "none yet (no spec band configured, no baseline yet)"
    det_rows = (
        "".join(
            f"<tr><td>{e(d['name'])}</td><td>{e(d['warn'])}</td><td>{e(d['alarm'])}</td>"
            f"<td>{e(d['note'])}</td></tr>"
            for d in detectors
        )
        or '<tr><td colspan="4">no detectors watch this channel</td></tr>'
    )
    inc_items = (
        "".join(
            f'<li class="lvl-{e(i["level"])}"><b>{LEVEL_WORDS.get(i["level"], "")}</b> '
            f"{e(i['id'])}: {e(i['what'])} — opened "
            f"{e(local_time(i['opened_ns'], zone, now_ns=now))}"
            + (
                f", cleared {e(local_time(i['cleared_ns'], zone, now_ns=now))}"
                if i["state"] == "cleared"
                else ", open"
            )
            + (f", acknowledged by {e(i['acked_by'])}" if i["acked_by"] else "")
            + "</li>"
            for i in incidents
        )
        or "<li>none in the last 30 days</li>"
    )
    f = dict(form or {})
    options = "".join(
        f'<option value="{s}"{" selected" if f.get("last", "2h") == s else ""}>last {s}</option>'
        for s in CAPTURE_SPANS
    )
    err = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    capture = (
        f'<form method="post" action="{e(channel_href(ch["name"]))}/capture" class="capture">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{err}'
        f'<label>Span <select name="last">{options}<option value=""'
        f"{' selected' if f.get('last') == '' else ''}>from … to …</option></select></label>"
        f'<label>from <input type="datetime-local" name="from" value="{e(f.get("from", ""))}">'
        f'</label><label>to <input type="datetime-local" name="to" value="{e(f.get("to", ""))}">'
        f'</label><label>Note <input type="text" name="note" maxlength="200" '
        f'value="{e(f.get("note", ""))}" placeholder="sample approval SKU 4711"></label>'
        '<button type="submit">Capture baseline…</button></form>'
        '<p class="hint">Pools the span of the local history (the newest readings back, times '
        "in the site's time zone) into a locked baseline; you confirm on the next screen.</p>"
    )
    body = (
        f'<p class="back"><a href="/">← Floor</a></p>'
        f'<div class="channel-head card st-{e(ch["state"])}" data-channel="{e(ch["name"])}">'
        f'<h1 class="label">{e(ch["label"])}</h1>'
        f'<span class="state st-{e(ch["state"])}">{e(ch["word"])}</span>'
        f'<div class="value">{e(ch["value_text"])}</div><div class="age">{e(ch["age"])}</div>'
        f'<p class="meta">{where} · {e(ch["name"])} · {ch["readings"]:,} readings this run</p>'
        "</div>"
        f'<nav class="spans">Show the last {spans}</nav>'
        f'<figure class="chart-box">{chart}<figcaption>Mean per interval (line), lowest to '
        "highest reading (shaded), baseline (dashed), warn and alarm limits, incidents (bands)."
        "</figcaption></figure>"
        f"<section><h2>Baseline</h2><p>{baseline}</p><p>{band_text}</p>{capture}</section>"
        '<section><h2>Detectors</h2><table class="detectors"><tr><th>detector</th>'
        f"<th>warn</th><th>alarm</th><th></th></tr>{det_rows}</table></section>"
        f'<section><h2>Incidents</h2><ul class="incident-list">{inc_items}</ul></section>'
    )
    return page(
        ch["label"],
        body,
        site=snap["site"],
        gateway=snap["gateway"],
        mode="channel",
        who=who,
        csrf=csrf,
        summary=summary_html(snap["health"]),
        asset=asset,
        channel=ch["name"],
        message=message,
    )


def confirm_page(
    snap: Mapping[str, Any],
    ch: Mapping[str, Any],
    *,
    preview: str,
    fields: Mapping[str, str],
    csrf: str,
    who: str,
    asset: str,
) -> str:
    """The confirmation of a baseline capture: what would be locked, and two buttons."""
    hidden = "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items()
    )
    body = (
        f'<p class="back"><a href="{e(channel_href(ch["name"]))}">← {e(ch["label"])}</a></p>'
        f'<section class="confirm"><h1>Capture this baseline?</h1><p>{e(preview)}</p>'
        "<p>From then on the detectors of this channel compare against it, and every alert "
        "quotes it. A baseline captured before is replaced.</p>"
        f'<form method="post" action="{e(channel_href(ch["name"]))}/capture">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{hidden}'
        '<input type="hidden" name="confirm" value="yes">'
        '<button type="submit" class="primary">Capture baseline</button> '
        f'<a class="button" href="{e(channel_href(ch["name"]))}">Cancel</a></form></section>'
    )
    return page(
        "Confirm capture",
        body,
        site=snap["site"],
        gateway=snap["gateway"],
        mode="channel",
        who=who,
        csrf=csrf,
        summary=summary_html(snap["health"]),
        asset=asset,
        channel=ch["name"],
    )


def login_page(
    snap: Mapping[str, Any],
    *,
    lines: Sequence[str],
    has_logins: bool,
    next_path: str,
    asset: str,
    error: str = "",
    status: str = "",
) -> str:
    """The login: a person's name and password, or a line's PIN with one's own name."""
    err = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    info = f'<p class="message">{e(status)}</p>' if status else ""
    if not has_logins:
        info += (
            '<p class="message">Nobody can log in here yet: factory IT adds logins on the '
            "gateway with <code>driftgate users add NAME</code> (or a line's PIN with "
            "<code>driftgate users pin LINE</code>).</p>"
        )
    nxt = f'<input type="hidden" name="next" value="{e(next_path)}">'
    pin = ""
    if lines:
        options = "".join(f'<option value="{e(x)}">{e(x)}</option>' for x in lines)
        pin = (
            '<form method="post" action="/login" class="login"><h2>With the line\'s PIN</h2>'
            f'<input type="hidden" name="kind" value="pin">{nxt}'
            f'<label>Line <select name="line">{options}</select></label>'
            '<label>PIN <input type="password" name="secret" inputmode="numeric" '
            'autocomplete="off" required></label>'
            '<label>Your name <input type="text" name="name" maxlength="64" required></label>'
            '<button type="submit">Log in</button></form>'
        )
    body = (
        f'<section class="login-box"><h1>Log in to act</h1>{err}{info}'
        "<p>Reading the floor needs no login; acknowledging an incident and capturing a "
        "baseline do, and each is written to the audit log with your name.</p>"
        '<form method="post" action="/login" class="login"><h2>With your password</h2>'
        f'<input type="hidden" name="kind" value="password">{nxt}'
        '<label>Name <input type="text" name="name" autocomplete="username" required></label>'
        '<label>Password <input type="password" name="secret" '
        'autocomplete="current-password" required></label>'
        f'<button type="submit">Log in</button></form>{pin}</section>'
    )
    return page(
        "Log in",
        body,
        site=snap["site"],
        gateway=snap["gateway"],
        mode="full",
        summary=summary_html(snap["health"]),
        asset=asset,
    )


def error_page(snap: Mapping[str, Any], title: str, text: str, *, asset: str) -> str:
    """A refusal or a missing page, in words."""
    body = (
        f'<section class="login-box"><h1>{e(title)}</h1><p>{e(text)}</p>'
        '<p><a href="/">Back to the floor</a></p></section>'
    )
    return page(
        title,
        body,
        site=snap["site"],
        gateway=snap["gateway"],
        mode="full",
        summary=summary_html(snap["health"]),
        asset=asset,
    )
