"""Where alert events go besides the spool and incidents: the run's own record, the log."""

from __future__ import annotations

import math
from collections import deque

from agent.drift.alerts import AlertEvent
from agent.logs import get_logger
from agent.metrics import AgentMetrics

log = get_logger("driftgate.agent")

EVENTS_KEPT = 10_000
"""Alert events a run keeps in memory (the demo's summary, tests); older ones are dropped."""


class EventRecord:
    """The run's alert events, newest ``limit`` of them: every event is in the spool anyway,
    so a long-running agent must not keep them all in memory."""

    def __init__(self, metrics: AgentMetrics, limit: int = EVENTS_KEPT) -> None:
        self.events: deque[AlertEvent] = deque(maxlen=limit)
        self.metrics = metrics
        self._told = False

    def __call__(self, event: AlertEvent) -> None:
        """An alert sink: keep the event, dropping the oldest beyond the limit."""
        events = self.events
        if len(events) == events.maxlen:
            self.metrics.events_dropped += 1
            if not self._told:
                self._told = True
                log.info(
                    "keeping only the newest alert events in memory",
                    limit=events.maxlen,
                    hint="every event is in the spool and InfluxDB",
                )
        events.append(event)


def log_alert(event: AlertEvent) -> None:
    """An alert sink: one structured log line per event."""
    log.info(
        "drift alert",
        channel=event.channel.name,
        detector=event.detector,
        transition=event.transition,
        severity=event.level.label,
        value=_rounded(event.value),
        baseline=_rounded(event.baseline),
        message=event.message,
    )


def _rounded(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None
