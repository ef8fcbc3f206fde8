"""What the agent publishes on its broker for screens and andon boards:

- ``driftgate/<site>/<gateway>/alerts``: every detector event as JSON (QoS 1), the evidence;
- ``driftgate/<site>/<gateway>/incidents/<id>``: the current state of every open incident,
  retained, so a floor screen that connects late sees what is open now; an empty retained
  message removes a cleared one;
- ``driftgate/<site>/<gateway>/incidents/events``: every incident notice as it happens.

It also takes acknowledgements: a JSON ``{"by": "…", "note": "…"}`` on
``driftgate/<site>/<gateway>/incidents/<id>/ack``.

Best effort, in order: while the broker is away messages queue (at most QUEUE, oldest dropped
and counted), and after a reconnect every open incident is published again (a broker without
persistence forgets retained messages when it restarts). The record that counts is in
InfluxDB and in state_dir/incidents.sqlite.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiomqtt import MqttError

from agent.drift.alerts import AlertEvent
from agent.incidents.model import CLEARED, Notice
from agent.ingest.broker import MqttLink
from agent.logs import get_logger

log = get_logger("driftgate.notify")

QUEUE = 10_000


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish."""

    topic: str
    payload: bytes
    retain: bool = False


class Publisher:
    """Publishes queued messages in order over the agent's MQTT link, waiting out outages."""

    def __init__(self, link: MqttLink, limit: int = QUEUE) -> None:
        self.link = link
        self.queue: deque[Message] = deque(maxlen=limit)
        self.dropped = 0
        self.by_topic: Counter[str] = Counter()  # messages published, per topic
        self.on_connect: list[Callable[[], None]] = []  # queue what must be said again
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()  # set whenever the queue is empty
        self.drained.set()
        link.on_connect.append(self._connected)

    def _connected(self) -> None:
        for again in self.on_connect:
            again()

    @property
    def published(self) -> int:
        """Messages published so far."""
        return sum(self.by_topic.values())

    def put(self, message: Message) -> None:
        """Queue one message (never blocks)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(message)
        self.drained.clear()
        self._wake.set()

    async def run(self) -> None:
        """Publish in order, waiting for the broker when it is away."""
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.link.connected_event.wait()
            message = self.queue[0]
            try:
                await self.link.publish(message.topic, message.payload, qos=1,
                                        retain=message.retain)  # fmt: skip
            except MqttError:
                await asyncio.sleep(1.0)  # the link logs the outage and reconnects
                continue
            self.queue.popleft()
            self.by_topic[message.topic] += 1
            if not self.queue:
                self.drained.set()


class AlertPublisher:
    """An alert sink: every detector event as JSON on ``driftgate/<site>/<gateway>/alerts``."""

    def __init__(self, publisher: Publisher, site: str, gateway: str) -> None:
        self.publisher = publisher
        self.topic = f"driftgate/{site}/{gateway}/alerts"

    def __call__(self, event: AlertEvent) -> None:
        """Queue the event (never blocks)."""
        payload = json.dumps(event.as_dict(), ensure_ascii=False).encode()
        self.publisher.put(Message(self.topic, payload))


class IncidentBoard:
    """The open incidents, retained on the broker, and their notices as a stream."""

    def __init__(
        self,
        publisher: Publisher,
        site: str,
        gateway: str,
        open_now: Callable[[], Iterable[Notice]],
    ) -> None:
        self.publisher = publisher
        self.prefix = f"driftgate/{site}/{gateway}/incidents"
        self.open_now = open_now
        publisher.on_connect.append(self.republish)

    def topic(self, incident_id: str) -> str:
        """The retained topic of one incident."""
        return f"{self.prefix}/{incident_id}"

    def __call__(self, notice: Notice) -> None:
        """A notice listener: update the retained state, and tell the stream."""
        body = json.dumps(notice.body(), ensure_ascii=False).encode()
        incident_id = str(notice.incident["id"])
        if notice.transition == CLEARED or notice.incident["state"] == "cleared":
            self.publisher.put(Message(self.topic(incident_id), b"", retain=True))
        else:
            self.publisher.put(Message(self.topic(incident_id), body, retain=True))
        self.publisher.put(Message(f"{self.prefix}/events", body))

    def republish(self) -> None:
        """Queue every open incident's state again (after a reconnect), as its last notice."""
        for notice in self.open_now():
            payload = json.dumps(notice.body(), ensure_ascii=False).encode()
            self.publisher.put(
                Message(self.topic(str(notice.incident["id"])), payload, retain=True)
            )


AckHandler = Callable[[str, str, str], None]


def ack_listener(link: MqttLink, site: str, gateway: str, acknowledge: AckHandler) -> None:
    """Take acknowledgements from ``…/incidents/<id>/ack``: JSON {"by": …, "note": …}."""
    prefix = f"driftgate/{site}/{gateway}/incidents/"

    def on_message(topic: str, payload: bytes, _received_ns: int) -> None:
        incident = topic.removeprefix(prefix).removesuffix("/ack")
        try:
            doc = json.loads(payload or b"{}")
            by = str(doc.get("by") or "").strip()
            note = str(doc.get("note") or "")
        except (ValueError, AttributeError, RecursionError):
            log.warning("acknowledgement is not a JSON object: ignored", topic=topic)
            return
        if not by:
            log.warning("acknowledgement without a name (by): ignored", topic=topic)
            return
        acknowledge(incident, by[:100], note[:500])

    link.subscribe(f"{prefix}+/ack", 1, on_message)
