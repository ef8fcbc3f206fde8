"""Alert states and events: turning detector scores into few, plain-worded alerts.

Each (channel, detector) pair has one AlertState: ok → warn → alarm and back, with a hold time
(the condition must persist before an alert is raised), a clear hold (it must stay gone before
the alert clears) and a hysteresis margin (a value hovering at a threshold does not flap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from agent.reading import Channel
from agent.store.lineprotocol import encode_point
from agent.words import iso


class Level(IntEnum):
    """Severity of an alert key's current state."""

    OK = 0
    WARN = 1
    ALARM = 2

    @property
    def label(self) -> str:
        """Lower-case name used in tags and JSON: ok, warn, alarm."""
        return self.name.lower()


# Transitions, in the words used everywhere: logs, JSON, the drift_alert `transition` field.
RAISED = "raised"
ESCALATED = "escalated"
EASED = "eased"
CLEARED = "cleared"
REPEAT = "repeat"
FLAPPING = "flapping"  # the key keeps changing: further changes are held back
SETTLED = "settled"  # ...and has been quiet for a flap window again
CHANGED = "changed"  # a change point: the level (or spread) moved; the detector re-armed on it

FLAP_COUNT = 6
"""Changes (raised, cleared, ...) within FLAP_WINDOW that make an alert key count as flapping."""
FLAP_WINDOW = 6 * 3600.0


class AlertState:
    """The state machine of one alert key; ``observe`` returns an event kind or None."""

    __slots__ = (
        "alarm",
        "clear_hold",
        "clear_since",
        "flap_count",
        "flap_window",
        "flapping",
        "hold",
        "last_emit",
        "last_transition",
        "level",
        "margin",
        "pending_level",
        "pending_since",
        "repeat",
        "since",
        "transitions",
        "warn",
    )

    def __init__(
        self,
        warn: float,
        alarm: float | None = None,
        hold: float = 0.0,
        clear_hold: float | None = None,
        hysteresis: float | None = None,
        repeat: float | None = None,
        flap_count: int = FLAP_COUNT,
        flap_window: float = FLAP_WINDOW,
    ) -> None:
        self.warn = warn
        self.alarm = math.inf if alarm is None else alarm
        self.hold = hold
        self.clear_hold = hold if clear_hold is None else clear_hold
        self.margin = 0.1 * warn if hysteresis is None else hysteresis
        self.repeat = repeat
        self.level = Level.OK
        self.pending_since: float | None = None
        self.pending_level = Level.OK
        self.clear_since: float | None = None
        self.since: float | None = None  # when the active condition first crossed warn
        self.last_emit = -math.inf
        self.flap_count = flap_count
        self.flap_window = flap_window
        self.flapping = False
        self.transitions: list[float] = []
        self.last_transition = -math.inf

    def rewind(self) -> None:
        """The clock went back: forget pending holds and timers measured on the old time line
        (the level in force and its ``since`` stay)."""
        self.pending_since = None
        self.clear_since = None
        self.last_emit = -math.inf
        self.last_transition = -math.inf
        self.transitions.clear()

    def target(self, score: float) -> Level:
        """The level a score asks for, given the current level (hysteresis applied)."""
        level = self.level
        if score >= self.alarm:
            return Level.ALARM
        if level == Level.ALARM and score > self.alarm - self.margin:
            return Level.ALARM
        if score >= self.warn:
            return Level.WARN
        if level >= Level.WARN and score > self.warn - self.margin:
            return Level.WARN
        return Level.OK

    def observe(self, t: float, score: float) -> str | None:
        """Feed one score at reading time ``t``; return the event kind to announce, if any."""
        if self.flapping and t - self.last_transition >= self.flap_window:
            self.flapping = False
            self.transitions.clear()
            return SETTLED
        kind = self._step(t, score)
        if kind is None or kind == REPEAT:
            return None if kind is None or self.flapping else kind
        # A change of level: count it, and hold changes back while the key flaps.
        self.last_transition = t
        horizon = t - self.flap_window
        self.transitions = [x for x in self.transitions if x > horizon]
        self.transitions.append(t)
        if self.flapping:
            return None
        if len(self.transitions) >= self.flap_count:
            self.flapping = True
            return FLAPPING
        return kind

    def _step(self, t: float, score: float) -> str | None:
        level = self.level
        target = self.target(score)
        if self.pending_since is not None and target < self.pending_level:
            # While an alert is pending, a dip that stays within the hysteresis margin does not
            # restart the hold: a noisy value sitting at the threshold still raises (once).
            threshold = self.alarm if self.pending_level == Level.ALARM else self.warn
            if score > threshold - self.margin:
                target = self.pending_level
        if target > level:
            self.clear_since = None
            self.pending_level = target
            if self.pending_since is None:
                self.pending_since = t
            if t - self.pending_since < self.hold:
                return None
            if level == Level.OK:
                self.since = self.pending_since
            self.pending_since = None
            self.level = target
            self.last_emit = t
            return RAISED if level == Level.OK else ESCALATED
        if target < level:
            self.pending_since = None
            if self.clear_since is None:
                self.clear_since = t
            if t - self.clear_since < self.clear_hold:
                return None
            self.clear_since = None
            self.level = target
            self.last_emit = t
            return CLEARED if target == Level.OK else EASED
        self.pending_since = None
        self.clear_since = None
        if level and self.repeat is not None and t - self.last_emit >= self.repeat:
            self.last_emit = t
            return REPEAT
        return None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert event: what changed, on which channel, by which detector, with the numbers."""

    ts_ns: int
    channel: Channel
    detector: str
    transition: str  # raised, escalated, eased, cleared, repeat, flapping, settled, changed,
    # lot_change
    level: Level
    value: float
    baseline: float
    delta: float
    rate_per_h: float
    since_ns: int
    baseline_note: str
    message: str

    def line(self, site: str, gateway: str) -> str:
        """The event as a `drift_alert` line-protocol point."""
        tags = {
            "site": site,
            "gateway": gateway,
            "zone": self.channel.tags.get("zone", ""),
            "channel": self.channel.name,
            "detector": self.detector,
            "severity": self.level.label,
        }
        fields: dict[str, float | int | bool | str] = {
            "transition": self.transition,
            "message": self.message,
            "since_ns": self.since_ns,
        }
        for name, number in (
            ("value", self.value),
            ("baseline", self.baseline),
            ("delta", self.delta),
            ("rate_per_h", self.rate_per_h),
        ):
            if math.isfinite(number):
                fields[name] = float(number)
        return encode_point("drift_alert", tags, fields, self.ts_ns)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly view (replay output, MQTT payloads, tests)."""
        return {
            "time": iso(self.ts_ns),
            "channel": self.channel.name,
            "detector": self.detector,
            "transition": self.transition,
            "severity": self.level.label,
            "value": _num(self.value),
            "baseline": _num(self.baseline),
            "delta": _num(self.delta),
            "rate_per_h": _num(self.rate_per_h),
            "since": iso(self.since_ns),
            "baseline_from": self.baseline_note,
            "affects": self.channel.affects,
            "message": self.message,
        }


def _num(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None
