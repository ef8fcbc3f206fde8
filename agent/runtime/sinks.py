"""Where alert events go besides the spool: the run's own record, the log, the MQTT topic."""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque

from aiomqtt import MqttError

from agent.drift.alerts import AlertEvent
from agent.ingest.broker import MqttLink
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


ALERT_QUEUE = 10_000


class AlertPublisher:
    """Publishes alert events as JSON on ``driftgate/<site>/<gateway>/alerts`` (QoS 1), for andon
    boards and supervisors' screens. Best effort: every event is also in the spool and InfluxDB;
    while the broker is away events queue (at most ALERT_QUEUE, oldest dropped and counted)."""

    def __init__(self, link: MqttLink, site: str, gateway: str) -> None:
        self.link = link
        self.topic = f"driftgate/{site}/{gateway}/alerts"
        self.queue: deque[str] = deque(maxlen=ALERT_QUEUE)
        self.dropped = 0
        self.published = 0
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()  # set whenever the queue is empty
        self.drained.set()

    def __call__(self, event: AlertEvent) -> None:
        """An alert sink: queue the event (never blocks)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(json.dumps(event.as_dict(), ensure_ascii=False))
        self.drained.clear()
        self._wake.set()

    async def run(self) -> None:
        """Publish queued events in order; wait for the broker when it is away."""
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.link.connected_event.wait()
            try:
                await self.link.publish(self.topic, self.queue[0], qos=1)
            except MqttError:
                await asyncio.sleep(1.0)  # the link logs the outage and reconnects
                continue
            self.queue.popleft()
            self.published += 1
            if not self.queue:
                self.drained.set()
