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
from agent.metrics import AgentMetrics
from agent.reading import Channel
from agent.store.spool import Spool

AlertSink = Callable[[AlertEvent], None]

BATCH_MAX = 4096  # readings of one channel before detection runs without waiting for process()
PROCESS_INTERVAL = 0.05  # seconds between the agent's calls to process()


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
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.site = site
        self.gateway = gateway
        self.engine = engine
        self.sinks: list[AlertSink] = []
        self.stages: list[BatchStage] = []
        self.clock_ns = 0  # time of the newest reading seen (simulated time in the demo)
        self._dirty: list[Channel] = []
        self.rejected: list[tuple[str, str]] = []
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
                self._dirty.append(channel)
            pending.append(ts_ns)
            channel.pending_x.append(value)
            if len(pending) >= BATCH_MAX:
                self._detect(channel)

    def process(self) -> None:
        """Run the detectors over every reading received since the last call.

        Detection runs in micro-batches (NumPy over each channel's new readings): sources call
        this after each burst and the agent every PROCESS_INTERVAL seconds, so an alert is at
        most that late in wall time; its timestamp is the reading's own.
        """
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for channel in dirty:
            if channel.pending_ns:
                self._detect(channel)

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
        text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        self.rejected.append((text, reason))
        self.rejects_queued += 1
        self.metrics.invalid_readings += 1
        if channel is not None and ts_ns is not None and channel.wants_invalid:
            pending = channel.pending_ns
            if not pending:
                self._dirty.append(channel)
            pending.append(ts_ns)
            channel.pending_x.append(math.nan)

    async def flush_rejected(self) -> None:
        """Write queued rejects to the spool's dead-letter table.

        Rejects a failed write did not store go back to the queue for the next call, so
        ``rejects_durable`` only advances over rejects that are on disk.
        """
        mark = self.rejects_queued
        if not self.rejected:
            self.rejects_durable = mark
            return
        batch, self.rejected = self.rejected, []
        by_reason: dict[str, list[str]] = {}
        for text, reason in batch:
            by_reason.setdefault(reason, []).append(text)
        stored: set[str] = set()
        try:
            for reason, texts in by_reason.items():
                await self.spool.dead_letter(texts, 0, reason)
                stored.add(reason)
        except BaseException:
            self.rejected[:0] = [(t, r) for t, r in batch if r not in stored]
            raise
        self.rejects_durable = mark

    def check_stale(self, now_s: float | None = None) -> None:
        """Raise stale alerts for channels that have gone quiet (see DriftEngine.check_stale)."""
        self.process()  # readings already received count: they are not silence
        for event in self.engine.check_stale(now_s):
            self.alert(event)

    def alert(self, event: AlertEvent) -> None:
        """Record an alert event in the spool and hand it to every sink (console, log, ...)."""
        self.metrics.alerts += 1
        self.spool.append(event.line(self.site, self.gateway))
        for sink in self.sinks:
            sink(event)
