"""From detector events to incidents and the notices people read.

The manager is an alert sink: every detector event of a channel (or of a zone, with
``incidents.group: zone``) joins the open incident of that key, or opens one. An incident
escalates when its worst member reaches alarm, eases when it drops back, and clears when no
member is in alert any more. Detector ``repeat`` events are evidence only; the manager sends
its own reminders of an unacknowledged incident every ``alerts.repeat``, worded as reminders.
It runs on the event loop and never waits: its store writes from a thread, and its notices go
to listeners (the outbox) that only queue them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo

from agent.config.models import AgentConfig, ChannelConfig
from agent.context import ContextStore
from agent.drift.alerts import CLEARED as EV_CLEARED
from agent.drift.alerts import FLAPPING as EV_FLAPPING
from agent.drift.alerts import REPEAT as EV_REPEAT
from agent.drift.alerts import SETTLED as EV_SETTLED
from agent.drift.alerts import AlertEvent
from agent.incidents.model import (
    ACKED,
    ACKNOWLEDGED,
    CLEARED,
    CLOSED,
    EASED,
    ESCALATED,
    ESCALATED_TO,
    FINDINGS,
    LEVELS,
    ONE_SHOT,
    OPEN,
    OPENED,
    REMINDER,
    Incident,
    Member,
    Notice,
)
from agent.incidents.words import headline, local_time, local_zone, since_words
from agent.logs import get_logger
from agent.words import duration_words

log = get_logger("driftgate.incidents")

NoticeListener = Callable[[Notice], None]
Escalations = Callable[[Incident], list[tuple[float, str]]]

RECONFIRM_S = 3600.0
"""After a restart, an open incident no detector speaks of again within this (reading time)
is cleared: the detectors start afresh, and one whose condition is gone never says so."""
"""For an incident: (seconds unacknowledged, route) pairs its routes escalate to."""


class IncidentManager:
    """Turns detector events into incidents, and incidents into notices."""

    def __init__(
        self,
        cfg: AgentConfig,
        context: ContextStore,
        clock: Callable[[], int],
        *,
        zone: tzinfo | None = None,
        escalations: Escalations | None = None,
    ) -> None:
        self.cfg = cfg
        self.context = context
        self.clock = clock  # ns: the wall clock live, reading time in an accelerated demo
        self.zone = zone if zone is not None else local_zone(cfg.timezone)
        self.remind_every = cfg.alerts.repeat
        self.escalations = escalations
        self.channels: dict[str, ChannelConfig] = {c.name: c for c in cfg.channels}
        self.open: dict[str, Incident] = {}  # by key: at most one open incident per key
        self.by_id: dict[str, Incident] = {}
        self.listeners: list[NoticeListener] = []
        self.saves: list[Callable[[Incident], None]] = []
        self._seq = itertools.count(1)

    # -- loading -------------------------------------------------------------------------------

    def restore(self, incidents: Iterable[Incident]) -> None:
        """Incidents saved before a restart. Open ones stay open, but the detectors start
        afresh after a restart: one that no detector confirms within RECONFIRM_S of reading
        time is cleared ("no longer seen since the agent restarted")."""
        now = self.clock()
        for inc in incidents:
            self.by_id[inc.id] = inc
            if inc.state != CLOSED:
                self.open[inc.key] = inc
                if not inc.one_shot:
                    inc.unconfirmed_since = now
        numbers = [int(i.id.rsplit("-", 1)[1]) for i in self.by_id.values() if "-" in i.id]
        self._seq = itertools.count(max(numbers, default=0) + 1)

    # -- detector events in --------------------------------------------------------------------

    def __call__(self, event: AlertEvent) -> None:
        """An alert sink: fold one detector event into its incident."""
        transition = event.transition
        if transition == EV_REPEAT:
            return  # evidence in InfluxDB; reminders are the manager's own
        key = self._key(event)
        inc = self.open.get(key)
        alerting = transition not in (EV_CLEARED, EV_SETTLED) and event.level.label != "ok"
        finding = transition in FINDINGS
        if inc is None:
            if not alerting:
                return  # a clear of something never told (e.g. before a restart): evidence only
            inc = self._open(key, event)
            inc.one_shot = finding  # opened by a finding: open until acknowledged
        elif (
            alerting
            and not finding
            and not any(m.finding and m.detector == "lot_compare" for m in inc.members.values())
        ):
            inc.one_shot = False  # a state joined: it clears when the states do
        before = inc.level
        inc.unconfirmed_since = 0  # a detector speaks of it: it is current
        member = f"{event.channel.name}/{event.detector}"  # a zone's incident has many channels
        if alerting or transition == EV_FLAPPING:
            inc.members[member] = Member(
                detector=event.detector,
                level=event.level.label if event.level.label != "ok" else "warn",
                since_ns=event.since_ns,
                message=event.message,
                value=event.value,
                baseline=event.baseline,
                delta=event.delta,
                rate_per_h=event.rate_per_h,
                headline=headline(event),
                finding=finding,
            )
            if event.detector not in inc.seen:
                inc.seen.append(event.detector)
        else:
            inc.members.pop(member, None)
        inc.note_context(self.context.for_tags(event.channel.tags))
        if transition in ONE_SHOT:
            inc.one_shot = True
        at = event.ts_ns
        if inc.seq == 0:
            self._level(inc)
            self._notify(inc, OPENED, at=at)
        elif not inc.one_shot and all(m.finding for m in inc.members.values()):
            inc.members.clear()  # the states cleared: the findings among them are history
            self._close(inc, at)
        else:
            peak = inc.peak
            self._level(inc)
            if LEVELS[inc.level] > LEVELS[before]:
                # Worse than ever before is news for people; back up to a level it had
                # reached already (a daily cycle) only updates the screens.
                people = LEVELS[inc.level] > LEVELS[peak]
                if people:
                    inc.state = OPEN  # worse than when it was acknowledged: take it on again
                self._notify(inc, ESCALATED, at=at, people=people)
            elif LEVELS[inc.level] < LEVELS[before]:
                self._notify(inc, EASED, at=at, people=False)
            else:
                self._save(inc)

    def _key(self, event: AlertEvent) -> str:
        if self.cfg.incidents.group == "zone":
            zone = event.channel.tags.get("zone")
            if zone:
                return f"zone:{zone}"
        return event.channel.name

    def _open(self, key: str, event: AlertEvent) -> Incident:
        ch = event.channel
        configured = self.channels.get(ch.name)
        action = (configured.action if configured is not None else "") or (
            self.cfg.incidents.actions.get(ch.kind, "")
        )
        day = datetime.fromtimestamp(event.ts_ns / 1e9, UTC).strftime("%Y%m%d")
        inc = Incident(
            id=f"{day}-{next(self._seq):04d}",
            key=key,
            channel=ch.name,
            zone=ch.tags.get("zone", ""),
            label=ch.label if not key.startswith("zone:") else _zone_words(ch.tags["zone"]),
            kind=ch.kind,
            unit=ch.unit,
            affects=ch.affects,
            action=action,
            opened_ns=event.since_ns or event.ts_ns,
        )
        self.open[key] = inc
        self.by_id[inc.id] = inc
        return inc

    def _level(self, inc: Incident) -> None:
        worst = max((LEVELS[m.level] for m in inc.members.values()), default=LEVELS["warn"])
        inc.level = next(name for name, n in LEVELS.items() if n == worst)
        if LEVELS[inc.level] > LEVELS[inc.peak]:
            inc.peak = inc.level

    def _close(self, inc: Incident, ts_ns: int) -> None:
        inc.state = CLOSED
        inc.cleared_ns = ts_ns
        inc.level = "ok"
        self.open.pop(inc.key, None)
        self._notify(inc, CLEARED, at=ts_ns)

    # -- people in -----------------------------------------------------------------------------

    def acknowledge(self, incident_id: str, by: str, note: str = "") -> Incident:
        """Someone took it on: reminders stop until it escalates or clears."""
        inc = self.by_id.get(incident_id)
        if inc is None:
            raise KeyError(incident_id)
        if inc.state == CLOSED:
            return inc
        inc.state = ACKED
        inc.acked_by = by
        inc.acked_note = note
        inc.acked_ns = self.clock()
        self._notify(inc, ACKNOWLEDGED)
        if inc.one_shot:  # a finding is done with once someone has seen it
            inc.state = CLOSED
            inc.cleared_ns = inc.acked_ns
            self.open.pop(inc.key, None)
            self._save(inc)
        return inc

    def context_changed(self) -> None:
        """The production context changed: open incidents remember the new lots and shifts."""
        for inc in self.open.values():
            tags = {"zone": inc.zone} if inc.zone else {}
            inc.note_context(self.context.for_tags(tags))

    # -- time passes ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Reminders of unacknowledged incidents, and escalations due (once a second)."""
        now = self.clock()
        for inc in list(self.open.values()):
            if inc.unconfirmed_since and (now - inc.unconfirmed_since) / 1e9 >= RECONFIRM_S:
                inc.members.clear()
                inc.state = CLOSED
                inc.cleared_ns = now
                inc.level = "ok"
                inc.unconfirmed_since = 0
                self.open.pop(inc.key, None)
                self._notify(inc, CLEARED, at=now, note="no detector saw it again after a restart")
                continue
            if inc.state != OPEN:
                continue
            if self.escalations is not None:
                open_for = (now - inc.opened_ns) / 1e9
                for after, route in self.escalations(inc):
                    if open_for >= after and route not in inc.escalated:
                        inc.escalated.append(route)
                        self._notify(inc, ESCALATED_TO, route=route)
            every = self.remind_every
            if every is not None and (now - inc.last_notice_ns) / 1e9 >= every:
                self._notify(inc, REMINDER)

    # -- notices out ---------------------------------------------------------------------------

    def _notify(
        self,
        inc: Incident,
        transition: str,
        *,
        route: str = "",
        at: int | None = None,
        people: bool = True,
        note: str = "",
    ) -> None:
        """Record a transition and tell the listeners. ``at``: the reading time that caused
        it (else the agent's clock); ``people=False``: screens only, no one is notified."""
        now = self.clock() if at is None else at
        inc.seq += 1
        inc.last_notice_ns = now
        inc.last_transition = transition
        inc.sentence = self.sentence(inc, transition, now) + (f" ({note}.)" if note else "")
        self._save(inc)
        notice = self.state_of(inc, route=route, people=people)
        log.info(
            "incident " + transition,
            incident=inc.id,
            channel=inc.channel,
            severity=inc.level,
            sentence=notice.sentence,
        )
        for listener in self.listeners:
            listener(notice)

    def open_now(self) -> list[Notice]:
        """Every open incident as its last notice tells it."""
        return [self.state_of(inc) for inc in self.open.values() if inc.seq]

    def state_of(self, inc: Incident, *, route: str = "", people: bool = False) -> Notice:
        """The incident's last notice as it stands now (screens reconnecting are told it)."""
        return Notice(
            incident=inc.to_json(),
            transition=inc.last_transition,
            seq=inc.seq,
            ts_ns=inc.last_notice_ns,
            sentence=inc.sentence,
            details=self.details(inc),
            route=route,
            people=people,
        )

    def _save(self, inc: Incident) -> None:
        for save in self.saves:
            save(inc)

    def sentence(self, inc: Incident, transition: str, now_ns: int) -> str:
        """The notice's first sentences: plain words, the site's local time, what to do."""
        zone = self.zone
        worst = inc.worst_member()
        what = worst.headline if worst is not None else inc.label
        since = since_words(inc.opened_ns, zone, now_ns)
        head = {"warn": "WARNING", "alarm": "ALARM", "ok": "OK"}[inc.level]
        affects = f" This affects {inc.affects}." if inc.affects else ""
        action = f" What to do: {inc.action.rstrip('.')}." if inc.action else ""
        lots = _lots(inc)
        if transition == OPENED:
            return f"{head}: {what}, {since}.{affects}{action}{lots}"
        if transition == ESCALATED:
            return f"ALARM, worse now: {what}, {since}.{affects}{action}{lots}"
        if transition == EASED:
            return f"Easing to a warning: {what}, {since}.{action}"
        if transition == REMINDER:
            waited = duration_words((now_ns - inc.opened_ns) / 1e9)
            return (
                f"Reminder, still {head.lower()}: {what}, {since}; not acknowledged for "
                f"{waited}.{action}{lots}"
            )
        if transition == ESCALATED_TO:
            waited = duration_words((now_ns - inc.opened_ns) / 1e9)
            return f"{head}, not acknowledged for {waited}: {what}, {since}.{affects}{action}{lots}"
        if transition == ACKNOWLEDGED:
            note = f" ({inc.acked_note})" if inc.acked_note else ""
            return f"Acknowledged by {inc.acked_by}{note}: {what}, {since}."
        lasted = duration_words(max(inc.cleared_ns - inc.opened_ns, 0) / 1e9)
        began = local_time(inc.opened_ns, zone, now_ns=now_ns)
        return f"Back to normal: {inc.label} (out of normal from {began}, for {lasted}).{lots}"

    @staticmethod
    def details(inc: Incident) -> str:
        """The detectors' own words and statistics, for engineers."""
        parts = [f"{m.detector} {m.level}: {m.message}" for m in inc.members.values()]
        return " | ".join(parts)


def _lots(inc: Incident) -> str:
    lots = inc.context.get("lot")
    if not lots:
        return ""
    return f" Lots made meanwhile: {', '.join(lots)}."


def _zone_words(zone: str) -> str:
    """A zone's name as people say it: edge_paint → 'Edge paint zone'."""
    return f"{zone.replace('_', ' ').replace('-', ' ').capitalize()} zone"
