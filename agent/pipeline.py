"""The hot path: a decoded reading is validated, spooled and queued for detection; nothing here
blocks.

Stages that need a channel's readings in batches (the local history, lot comparison) are
passed in as ``BatchStage``s: the pipeline knows them only through that protocol, so they
can depend on the pipeline without the pipeline depending on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.drift.alerts import AlertEvent
from agent.drift.engine import DriftEngine
from agent.errors import SpoolError
from agent.metrics import AgentMetrics
from agent.reading import Channel
from agent.store.spool import Spool

AlertSink = Callable[[AlertEvent], None]

BATCH_MAX = 4096  # readings of one channel before detection runs without waiting for process()
PROCESS_INTERVAL = 0.05  # the longest a reading waits for detection under load, seconds
PROCESS_SOON = 0.005  # the wait when readings trickle in: a burst completes, an alert is prompt
BUSY_BATCH = 256  # readings in the last process() above which the agent waits PROCESS_INTERVAL
PROCESS_INTERVAL = 0.05  # seconds between the agent's calls to process()
DEVICE_AHEAD_NS = 86_400 * 10**9
"""Default of ``input_limits.max_ahead``: a device clock further ahead is refused."""
DEVICE_BEHIND_NS = 365 * 86_400 * 10**9
"""Default of ``input_limits.max_behind``: a device clock further behind is refused."""
MAX_PENDING_REJECTS = 10_000
"""Rejected frames kept in memory while the spool cannot write them to its dead-letter table;
beyond, the oldest are dropped and counted in ``dead_letters_dropped``."""


class BatchStage(Protocol):
    """Something that sees each watched channel's readings once per detection batch."""

    def add(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> None:
        """Take one batch of a channel's readings (time order as received)."""
        ...


class Pipeline:
    """Takes readings from sources; every accepted reading reaches the spool and the detectors."""

    def __init__(
        self,
        spool: Spool,
        metrics: AgentMetrics,
        site: str,
        gateway: str,
        engine: DriftEngine,
        *,
        device_ahead_ns: int = DEVICE_AHEAD_NS,
        device_behind_ns: int = DEVICE_BEHIND_NS,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.site = site
        self.gateway = gateway
        self.engine = engine
        # How far a device's own clock may be from the gateway's (docs/architecture.md, "Time").
        self.device_ahead_ns = device_ahead_ns
        self.device_behind_ns = device_behind_ns
        self.sinks: list[AlertSink] = []
        self.stages: list[BatchStage] = []
        self.clock_ns = 0  # time of the newest reading seen (simulated time in the demo)
        self._dirty: list[Channel] = []
        self.rejected: list[tuple[str, str]] = []
        self.on_waiting: Callable[[], None] | None = None  # told when work starts waiting
        self.last_batch = 0  # readings the last process() judged
        self.rejects_queued = 0  # rejects ever queued: the newest one's number
        self.rejects_durable = 0  # every reject numbered up to this is in the dead-letter table

    def ingest(self, channel: Channel, ts_ns: int, value: float, prefix: str | None = None) -> None:
        """Accept one reading: spool it, queue it for its channel's detectors.

        ``prefix``: this reading's own line-protocol head when it carries tags of its own
        (a sample id, a lot) beyond the channel's; None for the channel's.
        """
        if not math.isfinite(value):
            self.reject(f"{channel.name} {value!r} {ts_ns}", "not a finite number", channel, ts_ns)
            return
        channel.readings += 1
        self.metrics.readings_in += 1
        if ts_ns > self.clock_ns:  # noqa: PLR1730 (cheaper than max() on the hot path)
            self.clock_ns = ts_ns
        self.spool.append(f"{prefix or channel.prefix}{value!r} {ts_ns}")
        if channel.watched:
            pending = channel.pending_ns
            if not pending:
                if not self._dirty and self.on_waiting is not None:
                    self.on_waiting()
                self._dirty.append(channel)
            pending.append(ts_ns)
            channel.pending_x.append(value)
            if len(pending) >= BATCH_MAX:
                self._detect(channel)

    def process(self) -> None:
        """Run the detectors over every reading received since the last call.

        Detection runs in micro-batches (NumPy over each channel's new readings): the agent
        calls this PROCESS_SOON after readings start waiting, or PROCESS_INTERVAL after when
        the last batch was large (under load, larger batches cost less per reading), so an
        alert is at most that late in wall time; its timestamp is the reading's own.
        """
        dirty = self._dirty
        if not dirty:
            self.last_batch = 0
            return
        self._dirty = []
        judged = 0
        for channel in dirty:
            if channel.pending_ns:
                judged += len(channel.pending_ns)
                self._detect(channel)
        self.last_batch = judged

    def _detect(self, channel: Channel) -> None:
        ns, xs = channel.pending_ns, channel.pending_x
        result = self.engine.detect(channel, ns, xs)
        channel.pending_ns = []
        channel.pending_x = []
        for stage in self.stages:  # per batch, never per reading on the hot path
            stage.add(channel, ns, xs)
        if result.late:
            self.metrics.late_readings += result.late
        for event in result.events:
            self.alert(event)

    def reject(
        self,
        raw: bytes | str,
        reason: str,
        channel: Channel | None = None,
        ts_ns: int | None = None,
    ) -> None:
        """Keep a frame that could not become a reading (out of range) for the dead-letter table.

        With its channel, an invalid_rate detector counts it (as a NaN among the readings).
        """
        self.dead_letter(raw, reason)
        self.metrics.invalid_readings += 1
        if self.on_waiting is not None:
            self.on_waiting()
        if channel is not None and ts_ns is not None and channel.wants_invalid:
            pending = channel.pending_ns
            if not pending:
                self._dirty.append(channel)
            pending.append(ts_ns)
            channel.pending_x.append(math.nan)

    def dead_letter(self, raw: bytes | str, reason: str) -> None:
        """Queue a frame for the dead-letter table (the caller counts what it held)."""
        text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        self.rejected.append((text, reason))
        self.rejects_queued += 1

    async def flush_rejected(self) -> None:
        """Write queued rejects to the spool's dead-letter table. While the spool cannot write
        they wait (beyond MAX_PENDING_REJECTS the oldest are dropped and counted); a write that
        fails puts back what it did not store, so ``rejects_durable`` only advances over rejects
        that are on disk or counted as dropped."""
        mark = self.rejects_queued
        if not self.rejected:
            self.rejects_durable = mark
            return
        if not self.spool.healthy:
            self._bound_rejected()
            return
        batch, self.rejected = self.rejected, []
        by_reason: dict[str, list[str]] = {}
        for text, reason in batch:
            by_reason.setdefault(reason, []).append(text)
        groups = list(by_reason.items())
        for i, (reason, texts) in enumerate(groups):
            try:
                await self.spool.dead_letter(texts, 0, reason)
            except SpoolError:
                # the spool logs its outage; these wait for the next round with the rest
                self.rejected[:0] = [(t, r) for r, ts in groups[i:] for t in ts]
                self._bound_rejected()
                return
            except BaseException:  # cancelled: what was not stored goes back, then stop
                self.rejected[:0] = [(t, r) for r, ts in groups[i:] for t in ts]
                raise
        self.rejects_durable = mark

    def _bound_rejected(self) -> None:
        excess = len(self.rejected) - MAX_PENDING_REJECTS
        if excess > 0:
            del self.rejected[:excess]
            self.spool.count_dead_dropped(excess)

    def check_stale(self, now_s: float | None = None) -> None:
        """Raise stale alerts for channels that have gone quiet (see DriftEngine.check_stale)."""
        self.process()  # readings already received count: they are not silence
        for event in self.engine.check_stale(now_s):
            self.alert(event)

    def alert(self, event: AlertEvent, *, spool: bool = True) -> None:
        """Record an alert event in the spool and hand it to every sink (console, log, ...).

        ``spool=False``: the caller spools the event's line itself, later (the spool's own
        outage, whose line would wait in a buffer that may be dropping its oldest lines).
        """
        self.metrics.alerts += 1
        if spool:
            self.spool.append(event.line(self.site, self.gateway))
        for sink in self.sinks:
            sink(event)
