"""Which routes take a notice, and which recipients they give it to now: the shift on duty,
quiet hours, a rate limit per recipient; and when an unacknowledged incident escalates."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta, tzinfo
from fnmatch import fnmatchcase
from typing import Any

from agent.config.notify import NotifyConfig, RouteConfig, ShiftConfig
from agent.incidents.model import CLEARED, ESCALATED_TO, LEVELS, Incident, Notice
from agent.incidents.store import NewDelivery


def _within(now: time, start: time, end: time) -> bool:
    """Whether a time of day falls in [start, end), across midnight when end <= start."""
    if start < end:
        return start <= now < end
    return now >= start or now < end


def shift_on_duty(shifts: list[ShiftConfig], moment: datetime) -> ShiftConfig | None:
    """The shift working at a local moment (a night shift belongs to the day it started)."""
    clock = moment.time()
    for shift in shifts:
        if not _within(clock, shift.start, shift.end):
            continue
        started = moment.date()
        if shift.end <= shift.start and clock < shift.end:
            started -= timedelta(days=1)  # after midnight: the shift began the day before
        if started.weekday() in shift.days:
            return shift
    return None


def _next(moment: datetime, at: time) -> datetime:
    """The next local moment at a time of day (today, or tomorrow if passed)."""
    candidate = moment.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return candidate if candidate > moment else candidate + timedelta(days=1)


class Router:
    """Turns a notice into deliveries: (target, recipient, when)."""

    def __init__(self, cfg: NotifyConfig, zone: tzinfo, clock: Callable[[], int]) -> None:
        self.cfg = cfg
        self.zone = zone
        self.clock = clock
        self.routes = {r.name: r for r in cfg.routes}
        self._sent: dict[str, deque[int]] = {}  # recipient -> send times in the rate window

    def matches(self, route: RouteConfig, incident: dict[str, Any]) -> bool:
        """Whether a route takes this incident (by its peak severity: whoever was told that it
        opened is told that it cleared)."""
        m = route.match
        if LEVELS[str(incident["peak"])] < LEVELS[m.severity]:
            return False
        if m.zones and incident["zone"] not in m.zones:
            return False
        if m.kinds and incident["kind"] not in m.kinds:
            return False
        return not m.channels or any(fnmatchcase(incident["channel"], p) for p in m.channels)

    def routes_for(self, incident: dict[str, Any]) -> list[RouteConfig]:
        """The routes an incident goes to (escalation routes only when escalated)."""
        escalation_only = {r.escalate_to for r in self.cfg.routes if r.escalate_to}
        return [
            r
            for r in self.cfg.routes
            if r.name not in escalation_only and self.matches(r, incident)
        ]

    def escalations(self, inc: Incident) -> list[tuple[float, str]]:
        """(seconds unacknowledged, route to tell) for each of the incident's routes."""
        out: list[tuple[float, str]] = []
        for route in self.routes_for(inc.to_json()):
            if route.escalate_after is not None and route.escalate_to is not None:
                out.append((route.escalate_after, route.escalate_to))
        return out

    def deliveries(self, notice: Notice) -> list[NewDelivery]:
        """Every (route, recipient) this notice goes to, and when."""
        incident = notice.incident
        if notice.transition == ESCALATED_TO:
            routes = [self.routes[notice.route]] if notice.route in self.routes else []
        else:
            routes = self.routes_for(incident)
        out: list[NewDelivery] = []
        for route in routes:
            out += self.deliveries_for_route(route, notice)
        return out

    def deliveries_for_route(
        self, route: RouteConfig, notice: Notice, *, hold: bool = True
    ) -> list[NewDelivery]:
        """The deliveries of a notice on one route: its recipients now (the shift on duty),
        held by quiet hours or the rate limit unless ``hold`` is False (a test notice)."""
        incident = notice.incident
        now = self.clock()
        local = datetime.fromtimestamp(now / 1e9, UTC).astimezone(self.zone)
        shift = shift_on_duty(route.shifts, local)
        entries = shift.to if shift is not None else route.to
        held = self._quiet(route, notice, local) if hold else None
        out: list[NewDelivery] = []
        for entry in entries:
            target, _, recipient = entry.partition(":")
            due = held if held is not None else now
            if hold and held is None:
                due = self._rate(route, f"{target}:{recipient}", now)
            body = notice.body()
            body.update(route=route.name, recipient=recipient,
                        shift=shift.name if shift is not None else "",
                        held=("quiet hours" if held is not None else
                              "rate limit" if due > now else ""))  # fmt: skip
            out.append(
                NewDelivery(
                    key=f"{incident['id']}:{notice.seq}:{route.name}:{entry}",
                    incident=str(incident["id"]),
                    target=target,
                    recipient=recipient,
                    due_ns=max(due, now),
                    body=body,
                )
            )
        return out

    def _quiet(self, route: RouteConfig, notice: Notice, local: datetime) -> int | None:
        """When a notice held by quiet hours may go (None: not held)."""
        quiet = route.quiet_hours
        if quiet is None or not _within(local.time(), quiet.start, quiet.end):
            return None
        severity = notice.severity if notice.transition != CLEARED else "warn"
        if LEVELS[severity] >= LEVELS[quiet.deliver]:
            return None
        return int(_next(local, quiet.end).timestamp() * 1e9)

    def _rate(self, route: RouteConfig, recipient: str, now: int) -> int:
        """When a notice to this recipient may go under the route's rate limit (now, or later)."""
        limit = route.rate_limit
        if limit is None:
            return now
        window = int(limit.per * 1e9)
        sent = self._sent.setdefault(recipient, deque())
        while sent and now - sent[0] >= window:
            sent.popleft()
        due = now if len(sent) < limit.count else sent[len(sent) - limit.count] + window
        sent.append(due)
        return due
