"""The sentence a supervisor reads: what changed, where, by how much, since when (local time),
what it affects and what to do. The detectors' own statistics follow, for engineers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo

from agent.drift.alerts import AlertEvent
from agent.words import duration_words, fmt, fmt_rate


def local_zone(name: str | None) -> tzinfo:
    """The site's time zone: an IANA name, or the gateway's own when None."""
    if name:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


def local_time(ts_ns: int, zone: tzinfo, *, now_ns: int | None = None) -> str:
    """A moment as people on the floor say it: 'today 07:42', 'yesterday 22:10',
    'Tue 17 Nov 07:42' (with the year when it is not this year's)."""
    moment = datetime.fromtimestamp(ts_ns / 1e9, zone)
    now = datetime.fromtimestamp((now_ns if now_ns is not None else ts_ns) / 1e9, zone)
    days = (now.date() - moment.date()).days
    clock = moment.strftime("%H:%M")
    if days == 0:
        return f"today {clock}"
    if days == 1:
        return f"yesterday {clock}"
    if moment.year == now.year:
        return f"{moment:%a %d %b} {clock}"
    return f"{moment:%a %d %b %Y} {clock}"


def headline(event: AlertEvent) -> str:
    """What changed, in plain words and the channel's units, without the detector's jargon."""
    ch = event.channel
    unit = ch.unit
    value, base, delta = event.value, event.baseline, event.delta
    up = delta >= 0 if math.isfinite(delta) else True
    detector = event.detector
    if detector == "baseline_shift":
        return (
            f"{ch.label} is {fmt(abs(delta), unit)} {'above' if up else 'below'} normal: "
            f"{fmt(value, unit)} on average against {fmt(base, unit)}"
        )
    if detector in ("cusum", "ewma"):
        return (
            f"{ch.label} has shifted {'up' if up else 'down'} by about {fmt(abs(delta), unit)}, "
            f"to about {fmt(value, unit)} against {fmt(base, unit)} normally"
        )
    if detector == "slope":
        rate = event.rate_per_h
        direction = "rising" if rate >= 0 else "falling"
        return f"{ch.label} is {direction} {fmt_rate(abs(rate), unit)}, now {fmt(value, unit)}"
    if detector == "variance_change":
        steadier = math.isfinite(delta) and delta < 0
        return (
            f"{ch.label} has become {'steadier' if steadier else 'erratic'}: it scatters by "
            f"±{fmt(value, unit)} where ±{fmt(base, unit)} is normal"
        )
    if detector == "changepoint":
        if event.baseline_note.startswith("previous spread"):
            steadier = math.isfinite(delta) and delta < 0
            return (
                f"{ch.label} has become {'steadier' if steadier else 'erratic'}: it scatters by "
                f"±{fmt(value, unit)} where it scattered by ±{fmt(base, unit)}"
            )
        return (
            f"{ch.label} has changed {'up' if up else 'down'} by about {fmt(abs(delta), unit)}, "
            f"from {fmt(base, unit)} to about {fmt(value, unit)}"
        )
    if detector == "limit":
        note = event.baseline_note  # "upper warning limit for sku 4711"
        where = "above its" if note.startswith("upper") else "below its"
        return f"{ch.label} has been {where} {note} of {fmt(base, unit)} (now {fmt(value, unit)})"
    if detector == "stale":
        return f"{ch.label} has sent no reading: the sensor or its link may be down"
    if detector == "stuck":
        return f"{ch.label} has not changed from {fmt(value, unit)}: the sensor may be stuck"
    if detector == "invalid_rate":
        return f"{ch.label}: {value:.0%} of its readings are out of the sensor's range"
    # Colour, lot comparison and the agent's own alerts already speak plainly: their first
    # sentence, without the level prefix.
    first = event.message.split(". ")[0].rstrip(".")
    for prefix in ("WARN: ", "ALARM: "):
        first = first.removeprefix(prefix)
    return first


def since_words(since_ns: int, zone: tzinfo, now_ns: int) -> str:
    """', since today 07:42 (2 h 5 min)'."""
    seconds = max(now_ns - since_ns, 0) / 1e9
    at = local_time(since_ns, zone, now_ns=now_ns)
    return f"since {at} ({duration_words(seconds)})" if seconds >= 60 else f"since {at}"
