"""The spool's outages as alerts: a disk that refuses writes is an alarm for the supervisor's
screen, the log and the MQTT topic, and its end says how long it lasted and what was lost.

While the spool cannot write, the raised event goes to the alert sinks at once and its line
waits here: appended to a spool that is failing, it could be among the oldest lines dropped
from memory. It is spooled when writes succeed again, just before the cleared event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.drift.alerts import CLEARED, RAISED, AlertEvent, Level
from agent.pipeline import Pipeline
from agent.reading import Channel
from agent.store.disk import disk_words
from agent.store.spool import SpoolOutage
from agent.words import duration_words

SPOOL_CHANNEL = Channel(
    name="gateway.spool",
    measurement="driftgate_agent",
    field="spool_healthy",
    unit="lines",
    kind="gateway",
    label="Gateway spool",
    affects="the record of every reading",
)
"""The channel an outage's alert events are about (the gateway itself, not a sensor)."""


@dataclass(frozen=True, slots=True)
class OutageAlert:
    """What an outage of one kind is called, and what its events say."""

    detector: str
    raised: str
    cleared: str


OUTAGE_ALERTS: dict[bool, OutageAlert] = {
    True: OutageAlert(
        "disk_full",
        "ALARM: The gateway's disk is full: driftgate cannot store readings in {path} ({disk}). "
        "It keeps up to {max_buffered:,} lines in memory and drops the oldest beyond that; "
        "free space on that disk now.",
        "The gateway's disk takes writes again after {down}: {written:,} lines that waited "
        "in memory are stored; {lost}.",
    ),
    False: OutageAlert(
        "spool_unwritable",
        "ALARM: driftgate cannot write to its spool {path} ({error}). It keeps up to "
        "{max_buffered:,} lines in memory and drops the oldest beyond that; check the disk "
        "under the state directory.",
        "driftgate writes to its spool again after {down}: {written:,} lines that waited in "
        "memory are stored; {lost}.",
    ),
}
"""Keyed by whether the disk is full (else another write error)."""


def _down_words(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else duration_words(seconds)


class OutageAlerts:
    """A spool outage listener: raises the alarm when writes fail, clears it when they work."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.held: AlertEvent | None = None  # raised, not spooled yet

    def __call__(self, outage: SpoolOutage) -> None:
        """Turn an outage's start or end into an alert event."""
        policy = OUTAGE_ALERTS[outage.disk_full]
        spool = self.pipeline.spool
        if outage.ended is None:
            message = policy.raised.format(
                path=spool.path,
                disk=disk_words(spool.path),
                error=outage.error,
                max_buffered=spool.max_buffered,
            )
            event = self._event(outage, policy.detector, RAISED, Level.ALARM, message)
            self.held = event
            self.pipeline.alert(event, spool=False)
            return
        self.spool_held()
        lost = outage.dropped_lines
        message = policy.cleared.format(
            down=_down_words(outage.down_s),
            written=outage.written_lines,
            lost=f"{lost:,} lines were lost (counted in spool_dropped_unwritable)"
            if lost
            else "nothing was lost",
        )
        self.pipeline.alert(self._event(outage, policy.detector, CLEARED, Level.OK, message))

    def spool_held(self) -> None:
        """Append the raised event's line (when writes work again, or at shutdown)."""
        if self.held is not None:
            event, self.held = self.held, None
            self.pipeline.spool.append(event.line(self.pipeline.site, self.pipeline.gateway))

    @staticmethod
    def _event(
        outage: SpoolOutage, detector: str, transition: str, level: Level, message: str
    ) -> AlertEvent:
        now = outage.started_ns + int(outage.down_s * 1e9) if outage.ended else outage.started_ns
        return AlertEvent(
            ts_ns=now,
            channel=SPOOL_CHANNEL,
            detector=detector,
            transition=transition,
            level=level,
            value=float(outage.dropped_lines),
            baseline=math.nan,
            delta=math.nan,
            rate_per_h=math.nan,
            since_ns=outage.started_ns,
            baseline_note="",
            message=message,
        )
