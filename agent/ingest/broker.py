"""The agent's one MQTT connection: a persistent session, birth/will status, topic dispatch.

One client per agent, so one persistent session: a fixed client id, MQTT v5 with clean start
off and a session expiry, so that while the agent is away (restart, reboot, network outage)
the broker keeps its subscriptions and queues QoS 1 messages for it, within the broker's
``max_queued_messages`` (see ``deploy/mosquitto/README.md``). Sources and the production
context register topic filters with ``subscribe`` before ``run``; ``run`` is aiomqtt's
documented reconnect loop (one reusable client, ``async with client`` → subscribe → iterate,
``except MqttError`` → back off and go round).

Acknowledged after the commit (``mqtt.ack: on_commit``, the default). The client's message
callback hands each message straight to its handler (``FrameHandler.frame`` →
``Pipeline.ingest``, which only appends to the spool's memory); its QoS 1 PUBACK waits until
whatever the message produced is durable: its lines committed by the spool, its dead letters
written, a context change saved to ``context.json``. Each of those places is a ``Ledger`` that
numbers what it was handed and says through which number it is durable; a message remembers,
per ledger it touched, the number it must wait for, and ``release`` sends the PUBACKs of the
messages at the head of the arrival order whose numbers are durable, in that order (MQTT
requires PUBACKs in the order the PUBLISHes came). A crash before the PUBACK makes the broker
send the message again; nothing acknowledged is lost.

aiomqtt does not expose paho's manual acknowledgement (``manual_ack``, ``ack(mid, qos)``;
aiomqtt issue #345), so this module reaches paho's client under aiomqtt's in one place,
``_paho``. The broker sends at most ``mqtt.receive_maximum`` unacknowledged messages (MQTT v5
Receive Maximum, sent in CONNECT; Mosquitto takes it in place of its
``max_inflight_messages``), so when half of them wait the spool is asked to commit at once.
Subscriptions ask for at most QoS 1: paho answers a QoS 2 message with PUBREC before handing
it over, after which the broker does not send it again, so QoS 2 cannot wait for the commit.

``mqtt.ack: on_arrival`` is the old behaviour, kept for measuring what the wait costs
(``bench/mqtt_ack.py``): paho acknowledges when the callback returns, and a crash loses what
the spool had not committed (up to ``spool.flush_interval`` of acknowledged messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiomqtt import Client, Message, MqttCodeError, MqttError, ProtocolVersion, TLSParameters, Will
from aiomqtt import Topic as _Topic
from aiomqtt import Wildcard as _Wildcard
from paho.mqtt.client import Client as _PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import clock
from agent.backoff import MQTT, Retries
from agent.config import MqttConfig
from agent.context import ContextError, ContextStore
from agent.ingest.frames import SourceHealth, preview
from agent.logs import get_logger
from agent.metrics import AgentMetrics

__all__ = [
    "DROPPED_TOPIC",
    "Ledger",
    "LinkHealth",
    "MessageHandler",
    "MqttLink",
    "parse_context",
]

log = get_logger("driftgate.mqtt")

MessageHandler = Callable[[str, bytes, int], None]
"""``handler(topic, payload, received_ns)``: synchronous and quick (it runs in the read path)."""

STOP_TIMEOUT_S = 2.0
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
ONLINE, OFFLINE = b"online", b"offline"
_SESSION_EXPIRY_MAX = 0xFFFFFFFF
_ROUTE_CACHE_MAX = 10_000  # distinct topics remembered with their handlers
_ROUTE_CACHE_TOPIC = 512  # longer topics (MQTT allows 64 KiB) are routed, never remembered
# CONNACK reason codes that retrying will not fix (MQTT v5 and v3 numbering): say so.
AUTH_FAILURES = frozenset({4, 5, 134, 135, 138, 140})
SUBSCRIBE_QOS_MAX = 1
"""The highest QoS asked for: a QoS 2 message is acknowledged (PUBREC) before it reaches us."""
COMMIT_EARLY_AT = 0.5
"""Ask the spool to commit at once when this share of ``receive_maximum`` waits for PUBACKs,
so the broker's window never fills while a commit is merely due."""


@dataclass(frozen=True, slots=True)
class Ledger:
    """A place a message's output waits to become durable, numbered in the order handed over:
    ``handed()`` is the newest item's number, ``durable()`` the number up to which every item
    is on disk."""

    name: str
    handed: Callable[[], int]
    durable: Callable[[], int]


def _paho(client: Client) -> _PahoClient:
    """The paho client inside aiomqtt's: aiomqtt has no manual acknowledgement (issue #345)."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, _PahoClient):
        raise RuntimeError(
            "this aiomqtt no longer keeps its paho client in Client._client: pin "
            "aiomqtt<3 (pyproject.toml), or set mqtt.ack: on_arrival until driftgate is updated"
        )
    return paho


@dataclass(slots=True)
class LinkHealth:
    """The connection's own health; also mirrored into AgentMetrics and each MQTT source."""

    connected: bool = False
    reconnects: int = 0
    messages: int = 0
    last_message_ns: int = 0
    unrouted: int = 0
    handler_errors: int = 0


def parse_context(topic: str, payload: bytes) -> tuple[str, str, dict[str, str | None]]:
    """``(scope, name, tags)`` from a context message: the topic's last two levels are
    ``<line|zone>/<name>``, the payload a JSON object (null or "" removes a tag).
    Raises ContextError."""
    levels = topic.split("/")
    if len(levels) < 2:
        raise ContextError(f"context topic {topic!r} should end in <line|zone>/<name>")
    scope, name = levels[-2], levels[-1]
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise ContextError(f"payload is not JSON: {preview(payload)}") from None
    if not isinstance(doc, dict):
        raise ContextError(f"payload should be a JSON object, got {type(doc).__name__}")
    tags: dict[str, str | None] = {}
    for key, value in doc.items():
        if value is None or isinstance(value, str):
            tags[key] = value
        elif isinstance(value, float) and not math.isfinite(value):
            raise ContextError(f"the value of {key[:40]!r} is {value}: give a number or text")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            tags[key] = str(value)
        else:
            raise ContextError(
                f"the value of {key[:40]!r} should be text, got {type(value).__name__}"
            )
    return scope, name, tags


def _inbox(deliver: Callable[[Message], None]) -> type[asyncio.Queue[Message]]:
    """aiomqtt's incoming queue, replaced by a hand-over: each message goes to ``deliver``
    inside the client's message callback, before the PUBACK (see the module docstring)."""

    class Inbox(asyncio.Queue[Message]):
        def put_nowait(self, item: Message) -> None:
            deliver(item)

    return Inbox


@dataclass(slots=True)
class _Subscription:
    qos: int
    retained: bool
    handlers: list[MessageHandler]


class MqttLink:
    """The agent's connection to its broker (``mqtt:`` in the config)."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        site: str,
        gateway: str,
        metrics: AgentMetrics,
        context: ContextStore | None = None,
        on_context: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.client_id = cfg.client_id or f"driftgate-{site}-{gateway}"
        self.status_topic = f"driftgate/{site}/{gateway}/status"
        self.context_filter = cfg.context_topic or f"driftgate/{site}/context/#"
        self.health = LinkHealth()
        self.watchers: list[SourceHealth] = []
        self._context = context
        self._on_context = on_context
        self._subscriptions: dict[str, _Subscription] = {}
        self._routes: dict[str, tuple[MessageHandler, ...]] = {}
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._manual_ack = cfg.ack == "on_commit"
        self._taking = True  # False once quiesced: later messages stay un-acknowledged
        self._paho: _PahoClient | None = None
        self._ledgers: tuple[Ledger, ...] = ()
        self._commit_soon: Callable[[], None] | None = None
        self._commit_at = max(1, int(cfg.receive_maximum * COMMIT_EARLY_AT))
        # (mid, qos, the number each ledger must reach, 0 where the message left no trace)
        self._unacked: deque[tuple[int, int, tuple[int, ...]]] = deque()
        self.connected_event = asyncio.Event()
        self.on_connect: list[Callable[[], None]] = []  # after each (re)connect and subscribe
        self.retries = Retries(MQTT)
        if context is not None:
            self.subscribe(self.context_filter, 1, self._context_message, retained=True)
        if cfg.watch_dropped:
            self.subscribe(DROPPED_TOPIC, 0, self._dropped_message, retained=True)

    # -- registration

    def subscribe(
        self, topic_filter: str, qos: int, handler: MessageHandler, *, retained: bool = False
    ) -> None:
        """Route messages matching ``topic_filter`` to ``handler`` (register before ``run``).

        ``retained``: also take the retained message the broker sends on subscribing (the
        last context, the broker's $SYS counters); a sensor's retained value is an old
        reading stamped as new, so by default it is not requested.
        """
        _Wildcard(topic_filter)  # ValueError for a malformed filter
        sub = self._subscriptions.get(topic_filter)
        if sub is None:
            self._subscriptions[topic_filter] = _Subscription(qos, retained, [handler])
        else:
            sub.qos = max(sub.qos, qos)
            sub.retained = sub.retained or retained
            sub.handlers.append(handler)
        self._routes.clear()

    @property
    def filters(self) -> list[str]:
        """The registered topic filters."""
        return list(self._subscriptions)

    def ack_after(
        self, ledgers: tuple[Ledger, ...], commit_soon: Callable[[], None] | None = None
    ) -> None:
        """Acknowledge each message once its output is durable in ``ledgers`` (register before
        ``run``; call ``release`` whenever one of them becomes more durable). ``commit_soon``:
        asks the spool to commit at once when many acknowledgements wait."""
        self._ledgers = ledgers
        self._commit_soon = commit_soon

    @property
    def unacked(self) -> int:
        """Messages received and handled whose PUBACK waits for their output to be durable."""
        return len(self._unacked)

    # -- the connection

    def _make_client(self) -> Client:
        cfg = self.cfg
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = min(int(cfg.session_expiry), _SESSION_EXPIRY_MAX)
        properties.ReceiveMaximum = cfg.receive_maximum
        tls = None
        if cfg.tls or cfg.ca_file or cfg.cert_file:
            tls = TLSParameters(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
            )
        client = Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=self.client_id,
            protocol=ProtocolVersion.V5,
            clean_start=False,  # resume the session the broker kept for us, from the first connect
            properties=properties,
            keepalive=cfg.keepalive,
            will=Will(self.status_topic, OFFLINE, qos=1, retain=True),
            tls_params=tls,
            queue_type=_inbox(self._dispatch),
        )
        self._unacked.clear()  # a new client is a new connection: old packet ids mean nothing
        if self._manual_ack:
            paho = self._paho = _paho(client)
            paho.manual_ack_set(True)
            # PUBACKs are only valid on the connection the PUBLISH came on: when it ends, the
            # broker sends the un-acknowledged messages again (same packet ids), so forget them
            # before any message of a new connection can arrive.
            aiomqtt_on_disconnect = paho.on_disconnect

            def on_disconnect(*args: Any) -> None:
                self._unacked.clear()
                if aiomqtt_on_disconnect is not None:
                    aiomqtt_on_disconnect(*args)

            paho.on_disconnect = on_disconnect
        return client

    async def run(self) -> None:
        """Connect, subscribe and hand messages over until cancelled; reconnect with backoff.

        Broker outages are handled here; any other error ends ``run`` for its supervisor.
        """
        self._task = asyncio.current_task()
        client = self._client = self._make_client()
        retries = self.retries
        failures = 0  # in this outage, for the recovery line
        outage_since: float | None = None
        while not self.stopping():
            try:
                async with client:
                    await self._connected(client)
                    # Not a reset: a session dropped within MQTT.stable_after (the client id
                    # taken over, say) goes on backing off instead of retrying every 0.5 s.
                    retries.up()
                    if outage_since is not None:
                        self.health.reconnects += 1
                        log.info(
                            "mqtt reconnected",
                            broker=self._where(),
                            downtime_s=round(time.monotonic() - outage_since, 1),
                            attempts=failures,
                        )
                    outage_since, failures = None, 0
                    # Messages are handed over on arrival (_inbox): this only ends on disconnect.
                    async for message in client.messages:
                        self._dispatch(message)
            except MqttError as exc:
                self._set_connected(False)
                self._unacked.clear()  # the broker sends them again on the next connection
                if self.stopping():
                    break
                failures += 1
                if outage_since is None:
                    outage_since = time.monotonic()
                    self._log_outage(exc)
                await asyncio.sleep(retries.next_delay())
            except BaseException:
                # Anything but the broker going away is a bug: the supervisor logs it with its
                # traceback and restarts the link (a new client, a new session resume).
                self._set_connected(False)
                raise

    async def _connected(self, client: Client) -> None:
        _no_delay(client)
        await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        for topic_filter, sub in self._subscriptions.items():
            handling = (
                SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                if sub.retained
                else SubscribeOptions.RETAIN_DO_NOT_SEND
            )
            qos = min(sub.qos, SUBSCRIBE_QOS_MAX)
            options = SubscribeOptions(qos=qos, retainHandling=handling)
            granted = await client.subscribe(topic_filter, options=options)
            refused = [code for code in granted if getattr(code, "value", code) >= 0x80]
            if refused:
                log.error(
                    "mqtt broker refused a subscription: check the ACL",
                    filter=topic_filter,
                    reason=str(refused[0]),
                )
        self._set_connected(True)
        for callback in self.on_connect:
            callback()
        log.info(
            "mqtt connected",
            broker=self._where(),
            client_id=self.client_id,
            subscriptions=len(self._subscriptions),
        )

    def _log_outage(self, exc: MqttError) -> None:
        code = exc.rc if isinstance(exc, MqttCodeError) else None
        value = getattr(code, "value", code)
        if isinstance(value, int) and value in AUTH_FAILURES:
            log.error(
                "mqtt broker refused the connection: check username, password and ACL",
                broker=self._where(),
                reason=str(exc),
            )
        else:
            log.warning("mqtt connection lost", broker=self._where(), reason=str(exc))

    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _set_connected(self, connected: bool) -> None:
        self.health.connected = connected
        self.metrics.mqtt_connected = connected
        for health in self.watchers:
            health.connected = connected
            health.reconnects = self.health.reconnects
        if connected:
            self.connected_event.set()
        else:
            self.connected_event.clear()

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish while connected; raises MqttError when not connected or not acknowledged."""
        client = self._client
        if client is None or not self.health.connected:
            raise MqttError(f"not connected to the MQTT broker {self._where()}")
        await client.publish(topic, payload, qos=qos, retain=retain)

    def stopping(self) -> bool:
        """Whether ``stop`` was called."""
        return self._stopping

    def quiesce(self) -> None:
        """Hand no more messages over (shutdown): those arriving from now on are not
        acknowledged, and the broker sends them again in the next session. With
        ``ack: on_arrival`` paho would acknowledge them anyway, so there stop at once."""
        self._taking = not self._manual_ack

    async def stop(self, grace: float = STOP_TIMEOUT_S) -> None:
        """Acknowledge what is durable, publish ``offline`` (retained) and disconnect cleanly,
        so the will is not sent."""
        self._stopping = True
        self._taking = False
        self.release()  # the PUBACKs go out before the offline status on the same socket
        if self._client is not None and self.health.connected:
            try:
                await self._client.publish(
                    self.status_topic, OFFLINE, qos=1, retain=True, timeout=grace
                )
            except MqttError as exc:
                log.warning("could not publish the offline status", reason=str(exc))
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._set_connected(False)

    # -- dispatch (runs inside the client's read callback: never raise, never block)

    def _dispatch(self, message: Message) -> None:
        if not self._taking:
            return  # quiesced: not acknowledged, so the broker keeps it for the next session
        if not self._manual_ack or message.qos == 0:
            self._handle(message)
            return
        ledgers = self._ledgers
        before = [ledger.handed() for ledger in ledgers]
        self._handle(message)
        needs = tuple(
            now if now != then else 0
            for then, now in zip(before, [ledger.handed() for ledger in ledgers], strict=True)
        )
        unacked = self._unacked
        unacked.append((message.mid, message.qos, needs))
        self.release()
        if len(unacked) >= self._commit_at and self._commit_soon is not None:
            self._commit_soon()

    def release(self) -> None:
        """Send the PUBACKs of the oldest messages whose output is durable now, in the order
        the messages came, up to the first that still waits."""
        unacked = self._unacked
        paho = self._paho
        if not unacked or paho is None:
            return
        durable = [ledger.durable() for ledger in self._ledgers]
        while unacked:
            mid, qos, needs = unacked[0]
            if any(need > done for need, done in zip(needs, durable, strict=True)):
                return
            unacked.popleft()
            paho.ack(mid, qos)

    def _handle(self, message: Message) -> None:
        received_ns = clock.wall_ns()
        topic = message.topic.value
        health = self.health
        health.messages += 1
        health.last_message_ns = received_ns
        self.metrics.mqtt_messages += 1
        handlers = self._routes.get(topic)
        if handlers is None:
            handlers = self._route(message.topic)
        if not handlers:
            health.unrouted += 1
            return
        payload = message.payload
        if len(payload) > self.cfg.max_payload:
            # Neither the broker (up to MQTT's 256 MB) nor paho limits a payload: no decoding
            # of a 5 MB message, only a count and one line per burst.
            self.metrics.mqtt_oversized += 1
            log.warning(
                "mqtt message too large: dropped without decoding",
                topic=topic[:200],
                bytes=len(payload),
                limit=self.cfg.max_payload,
                hint="raise mqtt.max_payload if the sender is right, or fix the sender",
            )
            return
        for handler in handlers:
            try:
                handler(topic, payload, received_ns)
            except Exception as exc:
                health.handler_errors += 1
                log.error("mqtt message handler failed", topic=topic, error=repr(exc))

    def _route(self, topic: _Topic) -> tuple[MessageHandler, ...]:
        found = tuple(
            handler
            for topic_filter, sub in self._subscriptions.items()
            if topic.matches(topic_filter)
            for handler in sub.handlers
        )
        if len(topic.value) > _ROUTE_CACHE_TOPIC:
            return found  # 10,000 made-up 64 KiB topics would otherwise hold 640 MB here
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[topic.value] = found
        return found

    def _context_message(self, topic: str, payload: bytes, _received_ns: int) -> None:
        if not payload or self._context is None:
            return  # an empty payload clears a retained message: nothing to apply
        try:
            scope, name, tags = parse_context(topic, payload)
            changed = self._context.set(scope, name, tags, save=False)
        except ContextError as exc:
            self.metrics.context_refused += 1
            log.warning(
                "bad production context message ignored", topic=topic[:200], reason=str(exc)
            )
            return
        if changed:
            log.info("production context set over mqtt", scope=scope, name=name, tags=tags)
            if self._on_context is not None:
                self._on_context()

    def _dropped_message(self, _topic: str, payload: bytes, _received_ns: int) -> None:
        try:
            self.metrics.broker_dropped = int(payload.strip() or b"0")
        except ValueError:
            log.warning("unexpected $SYS dropped counter", payload=preview(payload))


def _no_delay(client: Client) -> None:
    """Send each MQTT packet at once (TCP_NODELAY), as the broker should: with Nagle's
    algorithm a small publish waits for the ACK of the previous one, which the receiver
    delays by up to 40 ms. paho leaves it on; alerts and incident notices are small."""
    paho = getattr(client, "_client", None)  # aiomqtt has no option for it
    sock = paho.socket() if paho is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
