"""What people read: notices as a mail (subject, plain text, HTML) and as a short chat message.

The sentence comes first, as the manager wrote it (plain words, the site's local time); then
what to do, what it affects, the production context, the detectors' statistics for engineers,
the incident id and how to acknowledge it. Everything is taken from the notice's standard body
(``Notice.body``) as stored in the outbox, so a mail sent after a restart reads the same.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HEADS = {"alarm": "ALARM", "warn": "WARNING", "ok": "OK"}
RANK = {"ok": 0, "warn": 1, "alarm": 2}
TRANSITIONS = {"escalated_to": "not acknowledged", "reminder": "reminder"}
LABELS_IN_SUBJECT = 2


@dataclass(frozen=True, slots=True)
class Origin:
    """Where notices come from, and how an incident is acknowledged there."""

    site: str
    gateway: str
    state_dir: str = ""  # for the CLI's --state-dir ("" when it is the CLI's default)
    mqtt: bool = False  # the agent takes acknowledgements over MQTT

    @property
    def where(self) -> str:
        """'atelier-nord/gw1'."""
        return f"{self.site}/{self.gateway}" if self.gateway else self.site

    def ack_command(self, incident: str) -> str:
        """The command that acknowledges an incident, to run on the gateway."""
        state = f" --state-dir {shlex.quote(self.state_dir)}" if self.state_dir else ""
        return f'driftgate alerts ack {incident} --by "your name"{state}'

    def ack_topic(self, incident: str) -> str:
        """The MQTT topic that takes an acknowledgement (JSON {"by": …})."""
        return f"driftgate/{self.site}/{self.gateway}/incidents/{incident}/ack"


def head(body: dict[str, Any]) -> str:
    """'ALARM: Edge paint room humidity (opened)', on one line (a subject, a title)."""
    severity = HEADS.get(str(body.get("severity", "")), str(body.get("severity", "")).upper())
    return one_line(f"{severity}: {body.get('label', '')} ({transition(body)})")


def one_line(text: str) -> str:
    """Whitespace, line breaks included, as single spaces: a header may not break a line."""
    return " ".join(text.split())


def transition(body: dict[str, Any]) -> str:
    """The transition as people read it."""
    name = str(body.get("transition", ""))
    return TRANSITIONS.get(name, name)


def unique(bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each notice once: two routes that give one notice to the same mailbox make one section."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for body in bodies:
        key = str(body.get("idempotency_key", id(body)))
        if key not in seen:
            seen.add(key)
            out.append(body)
    return out


def _worst(bodies: Sequence[dict[str, Any]]) -> str:
    worst = max((str(b.get("severity", "")) for b in bodies), key=lambda s: RANK.get(s, -1))
    return HEADS.get(worst, worst.upper())


def subject(bodies: Sequence[dict[str, Any]], origin: Origin) -> str:
    """'ALARM: Edge paint room humidity (opened) — atelier-nord/gw1'; for several incidents
    the worst severity, how many, and the first labels."""
    notices = unique(bodies)
    if len(notices) == 1:
        return f"{head(notices[0])} — {origin.where}"
    by_incident: dict[str, tuple[str, list[str]]] = {}
    for body in notices:
        _, changes = by_incident.setdefault(str(body.get("id")), (str(body.get("label")), []))
        if transition(body) not in changes:
            changes.append(transition(body))
    parts = [one_line(f"{label} ({', '.join(changes)})") for label, changes in by_incident.values()]
    if len(parts) == 1:
        return f"{_worst(notices)}: {parts[0]} — {origin.where}"
    shown = ", ".join(parts[:LABELS_IN_SUBJECT])
    more = len(parts) - LABELS_IN_SUBJECT
    rest = f" and {more} more" if more > 0 else ""
    return f"{_worst(notices)}: {len(parts)} incidents: {shown}{rest} — {origin.where}"


def context_words(context: dict[str, Any]) -> str:
    """'lot LOT-2411-A, LOT-2411-B; operator op17'."""
    parts = []
    for key, values in context.items():
        seen = values if isinstance(values, list) else [values]
        if seen:
            parts.append(f"{key} {', '.join(str(v) for v in seen)}")
    return "; ".join(parts)


def facts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines after the sentence: (heading, text), empty ones left out."""
    incident = str(body.get("id", ""))
    where = ", ".join(f"{name} {body[name]}" for name in ("channel", "zone") if body.get(name))
    sentence = str(body.get("sentence", ""))
    action = str(body.get("action", "")).strip().rstrip(".")
    affects = str(body.get("affects", "")).strip()
    if body.get("state") == "cleared" or action in sentence:
        action = ""  # said once: most sentences carry the action already
    rows = [
        ("What to do", action),
        ("Affects", "" if affects in sentence else affects),
        ("Production meanwhile", context_words(body.get("context") or {})),
        ("For engineers", str(body.get("details", "")).strip()),
        ("Incident", f"{incident} ({transition(body)}; {where})" if where else incident),
        ("Acknowledged by", str(body.get("acknowledged_by") or "")),
    ]
    return [(k, v) for k, v in rows if v]


ACK_HEAD = "To acknowledge (reminders stop until it gets worse or clears):"


def ack_ways(body: dict[str, Any], origin: Origin) -> list[tuple[str, str]]:
    """(where, what to run or publish) for an open incident; none once acknowledged."""
    if body.get("state") != "open":
        return []
    incident = str(body.get("id", ""))
    ways = [("on the gateway", origin.ack_command(incident))]
    if origin.mqtt:
        publish = f'publish {{"by": "your name"}} to {origin.ack_topic(incident)}'
        ways.append(("or over MQTT", publish))
    return ways


def plain(deliveries: Sequence[tuple[str, dict[str, Any]]], origin: Origin) -> str:
    """The mail's plain text: (delivery key, body) of each notice, in order."""
    notices = unique([body for _, body in deliveries])
    out: list[str] = []
    several = len(notices) > 1
    if several:
        out += [f"{len(notices)} notices from driftgate on {origin.where}:", ""]
    for n, body in enumerate(notices, start=1):
        if several:
            title = f"{n}. {head(body)}"
            out += [title, "=" * len(title)]
        out += [str(body.get("sentence", "")), ""]
        out += [f"{name}: {value}" for name, value in facts(body)]
        ways = ack_ways(body, origin)
        if ways:
            out += ["", ACK_HEAD] + [f"  {where}: {what}" for where, what in ways]
        out.append("")
    keys = ", ".join(key for key, _ in deliveries)
    out += ["-- ", f"Sent by driftgate on {origin.where}. Notice references: {keys}"]
    return "\n".join(out) + "\n"


def rich(deliveries: Sequence[tuple[str, dict[str, Any]]], origin: Origin) -> str:
    """The mail's HTML alternative: the same text, with headings and a table."""
    esc = html.escape
    notices = unique([body for _, body in deliveries])
    parts = ['<html><body style="font-family: sans-serif">']
    for body in notices:
        parts.append(f"<h3>{esc(head(body))}</h3>")
        parts.append(f"<p><strong>{esc(str(body.get('sentence', '')))}</strong></p>")
        parts.append('<table cellpadding="4" style="border-collapse: collapse">')
        for name, value in facts(body):
            th = f'<th align="left" valign="top">{esc(name)}</th>'
            parts.append(f"<tr>{th}<td>{esc(value)}</td></tr>")
        parts.append("</table>")
        ways = ack_ways(body, origin)
        if ways:
            parts.append(f"<p>{esc(ACK_HEAD)}</p><ul>")
            parts += [f"<li>{esc(where)}: <code>{esc(what)}</code></li>" for where, what in ways]
            parts.append("</ul>")
    keys = ", ".join(key for key, _ in deliveries)
    parts.append(
        f'<p style="color: #666; font-size: small">Sent by driftgate on {esc(origin.where)}. '
        f"Notice references: {esc(keys)}</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def chat(body: dict[str, Any], origin: Origin) -> tuple[str, str]:
    """A chat message's (title, body): the sentence, the incident, how to acknowledge."""
    title = f"{head(body)} — {origin.where}"
    incident = str(body.get("id", ""))
    lines = [str(body.get("sentence", "")), f"Incident {incident}."]
    if body.get("state") == "open":
        lines[-1] += f" To acknowledge: {origin.ack_command(incident)}"
    return title, "\n".join(lines)
