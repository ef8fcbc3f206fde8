"""Incidents: what people are told about. Every detector of a channel (or zone) that fires for
one cause joins one incident with one id; it opens, escalates, eases, is acknowledged, reminds,
and clears. The detector events stay in InfluxDB as the evidence."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Transitions of an incident, as notices name them.
OPENED = "opened"
ESCALATED = "escalated"
EASED = "eased"
ACKNOWLEDGED = "acknowledged"
REMINDER = "reminder"
CLEARED = "cleared"
ESCALATED_TO = "escalated_to"  # not acknowledged in time: the next route is told

OPEN, ACKED, CLOSED = "open", "acknowledged", "cleared"

LEVELS = {"ok": 0, "warn": 1, "alarm": 2}
ONE_SHOT = frozenset({"lot_change", "context_change"})
"""Transitions that are findings, not states: their incident stays open until acknowledged."""
FINDINGS = frozenset({"lot_change", "changed"})
"""Transitions that report something that happened, not a state that lasts. A change point
(``changed``) joins the open incident of its channel; one that opens an incident keeps it
open until someone acknowledges it, as a lot change does, and later changes join it. In an
incident that also has detectors in alert (a shift against the baseline) it does not hold the
incident open once those have cleared."""


@dataclass(slots=True)
class Member:
    """One detector's part in an incident: its level and its latest words and numbers."""

    detector: str
    level: str
    since_ns: int
    message: str
    value: float = math.nan
    baseline: float = math.nan
    delta: float = math.nan
    rate_per_h: float = math.nan
    headline: str = ""
    finding: bool = False  # a change point or lot change: it happened, it is not a state


@dataclass(slots=True)
class Incident:
    """One cause, told once: its members, its level, who acknowledged it, what was produced."""

    id: str
    key: str  # the channel name, or zone:<zone> when grouped by zone
    channel: str
    zone: str
    label: str
    kind: str
    unit: str
    affects: str
    action: str
    opened_ns: int
    level: str = "warn"
    peak: str = "warn"
    state: str = OPEN
    members: dict[str, Member] = field(default_factory=dict)
    acked_by: str = ""
    acked_note: str = ""
    acked_ns: int = 0
    cleared_ns: int = 0
    last_notice_ns: int = 0  # the agent's clock at the last notice (reminders count from it)
    escalated: list[str] = field(default_factory=list)  # routes already escalated to
    context: dict[str, list[str]] = field(default_factory=dict)  # lots, operators, shifts seen
    seq: int = 0  # notices so far: each (incident, seq, route) is delivered exactly once
    one_shot: bool = False
    seen: list[str] = field(default_factory=list)  # every detector that took part
    unconfirmed_since: int = 0  # restored after a restart, not confirmed by a detector yet
    last_transition: str = ""  # of the last notice: screens that reconnect are told it again
    sentence: str = ""  # the last notice's sentence

    @property
    def severity(self) -> str:
        """The worst level among the members still in alert (ok once cleared)."""
        return self.level

    def worst_member(self) -> Member | None:
        """The member that makes the headline: the highest level, then the earliest."""
        if not self.members:
            return None
        return max(self.members.values(), key=lambda m: (LEVELS[m.level], -m.since_ns))

    def note_context(self, context: dict[str, str]) -> None:
        """Remember the production context seen while open (which lots to hold)."""
        for key, value in context.items():
            seen = self.context.setdefault(key, [])
            if value not in seen:
                seen.append(value)

    def to_json(self) -> dict[str, Any]:
        """As stored (state_dir/incidents.sqlite) and as `driftgate alerts show` prints it."""
        out = asdict(self)
        for member in out["members"].values():
            for key in ("value", "baseline", "delta", "rate_per_h"):
                if not math.isfinite(member[key]):
                    member[key] = None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Incident:
        """Back from its stored form."""
        members: dict[str, Member] = {}
        for name, m in data.pop("members", {}).items():
            fields: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in m.items()}
            members[name] = Member(**fields)
        return cls(**data, members=members)


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell people about an incident: delivered once per route."""

    incident: dict[str, Any]  # the incident as it was at this notice (JSON-ready)
    transition: str
    seq: int
    ts_ns: int  # the agent's clock at the notice
    sentence: str  # the first sentence, plain words, local time
    details: str  # the detectors' own statistics, for engineers
    route: str = ""  # set for an escalation to one route
    recipient: str = ""
    people: bool = True  # False: screens follow it (MQTT), nobody is notified

    @property
    def key(self) -> str:
        """The idempotency key: the same notice to the same place is the same delivery."""
        return f"{self.incident['id']}:{self.seq}:{self.route}:{self.recipient}"

    @property
    def severity(self) -> str:
        """The incident's level at this notice."""
        return str(self.incident["level"])

    def body(self) -> dict[str, Any]:
        """The standard JSON body (webhooks, MQTT, the outbox)."""
        inc = self.incident
        return {
            "id": inc["id"],
            "transition": self.transition,
            "severity": inc["level"],
            "state": inc["state"],
            "channel": inc["channel"],
            "zone": inc["zone"],
            "label": inc["label"],
            "sentence": self.sentence,
            "details": self.details,
            "action": inc["action"],
            "affects": inc["affects"],
            "opened_ns": inc["opened_ns"],
            "time_ns": self.ts_ns,
            "acknowledged_by": inc["acked_by"],
            "context": inc["context"],
            "route": self.route,
            "idempotency_key": self.key,
        }
