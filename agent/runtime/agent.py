"""The agent's wiring, top to bottom like the data flow: sources → pipeline → detectors → spool →
forwarder, plus alert sinks, self-metrics and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.channels import ChannelRegistry
from agent.color.references import ReferenceStore
from agent.color.stage import ColorStage, warm_up_colour
from agent.config import (
    AgentConfig,
    InfluxConfig,
    MqttSourceConfig,
    SerialSourceConfig,
    SimulatedSourceConfig,
)
from agent.context import ContextStore
from agent.drift.alerts import AlertEvent
from agent.drift.baselines import BaselineStore
from agent.drift.lots import LotTracker
from agent.errors import DriftgateError
from agent.ingest.broker import AlertPublisher, MqttLink
from agent.ingest.mqtt import MqttSource
from agent.ingest.profiles import load_profile
from agent.ingest.serial import SerialSource
from agent.ingest.simulated import SimulatedSource
from agent.logs import flush_bursts, get_logger
from agent.metrics import AgentMetrics
from agent.pipeline import PROCESS_INTERVAL, Pipeline
from agent.reading import Channel
from agent.sim.workshop import DAY, Workshop
from agent.store.forwarder import Forwarder, ForwarderSettings
from agent.store.history import History, HistoryError, history_path
from agent.store.lineprotocol import encode_point
from agent.store.spool import Spool, SpoolStats, spool_path

log = get_logger("driftgate.agent")

SHUTDOWN_BUDGET_S = 5.0  # SIGTERM to exit, systemd's TimeoutStopSec is larger


class Source(Protocol):
    """What the runtime needs of a source."""

    name: str

    def channels(self) -> list[Channel]:
        """The channels this source produces (known up front)."""
        ...

    async def run(self, pipeline: Pipeline) -> None:
        """Produce readings into the pipeline until cancelled or done."""
        ...


@dataclass(slots=True)
class RunResult:
    """What a run did: for the demo summary and for tests."""

    metrics: AgentMetrics
    channels: list[Channel]
    events: list[AlertEvent] = field(default_factory=list)
    wall_seconds: float = 0.0
    sim_start_ns: int = 0
    sim_end_ns: int = 0
    pending_lines: int = 0
    pending_bytes: int = 0
    dead_letters: int = 0
    stopped_by_signal: bool = False


def forwarder_settings(influx: InfluxConfig) -> ForwarderSettings:
    """Map the validated influx section onto the forwarder's settings."""
    return ForwarderSettings(
        url=influx.url,
        api=influx.api,
        database=influx.database or "",
        retention_policy=influx.retention_policy,
        username=influx.username,
        password=influx.password.get_secret_value() if influx.password else None,
        org=influx.org or "",
        bucket=influx.bucket or "",
        token=influx.token.get_secret_value() if influx.token else None,
        gzip=influx.gzip,
        batch_size=influx.batch_size,
        flush_interval=influx.flush_interval,
        timeout=influx.timeout,
        verify_tls=influx.verify_tls,
        ca_file=influx.ca_file,
        max_backoff=influx.max_backoff,
    )


def build_sources(
    cfg: AgentConfig,
    registry: ChannelRegistry,
    *,
    pipeline: Pipeline | None = None,
    mqtt: MqttLink | None = None,
) -> list[Source]:
    """Instantiate the configured sources (MQTT sources need the pipeline and the link)."""
    sources: list[Source] = []
    base_tags = {"site": cfg.site, "gateway": cfg.gateway}
    for sc in cfg.sources:
        if isinstance(sc, SimulatedSourceConfig):
            if sc.start is not None:
                start = sc.start.timestamp()
            elif sc.days is not None:
                # End the simulated span at today's midnight, so Grafana's "last 30 days" shows it.
                today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
                start = today.timestamp() - sc.days * DAY
            else:
                start = time.time()
            workshop = Workshop.build(start, seed=sc.seed, tags=base_tags)
            sources.append(
                SimulatedSource(
                    sc.name, workshop, start=start, interval=sc.interval, speed=sc.speed,
                    days=sc.days,
                )
            )  # fmt: skip
        elif isinstance(sc, SerialSourceConfig):
            sources.append(SerialSource(sc, None, registry))  # the pipeline is bound in run()
        elif isinstance(sc, MqttSourceConfig):
            if mqtt is None or pipeline is None:
                raise DriftgateError(f"source {sc.name}: an mqtt source needs the mqtt: section")
            sources.append(MqttSource(sc, mqtt, pipeline, registry))
    return sources


class Agent:
    """One running agent: owns the spool, the forwarder, the sources and their tasks."""

    def __init__(
        self, cfg: AgentConfig, *, sinks: list[Callable[[AlertEvent], None]] | None = None
    ):
        self.cfg = cfg
        self.metrics = AgentMetrics()
        self.state_dir = cfg.state_dir
        self.spool = Spool(
            spool_path(cfg.state_dir),
            max_bytes=cfg.spool.max_bytes,
            synchronous=cfg.spool.synchronous,
            flush_interval=cfg.spool.flush_interval,
            flush_lines=cfg.spool.flush_lines,
            metrics=self.metrics,
        )
        self.pipeline = Pipeline(self.spool, self.metrics, cfg.site, cfg.gateway)
        self.baselines = BaselineStore(cfg.state_dir / "baselines.json")
        self.context = ContextStore(cfg.state_dir / "context.json")
        self.registry = ChannelRegistry(
            cfg.channels,
            self.baselines,
            self.context,
            cfg.alerts.repeat,
            (cfg.alerts.flap_count, cfg.alerts.flap_window),
        )
        self.color = ColorStage(
            cfg.color, ReferenceStore(cfg.state_dir / "references"), self.registry, self.pipeline
        )
        self.pipeline.color = self.color
        self.history = History(history_path(cfg.state_dir), days=cfg.history.days)
        self.pipeline.history = self.history
        self.lots = LotTracker(cfg.lots, cfg.state_dir / "lots.json", self.pipeline, self.registry)
        self.pipeline.lots = self.lots
        self.mqtt = (
            MqttLink(
                cfg.mqtt,
                site=cfg.site,
                gateway=cfg.gateway,
                metrics=self.metrics,
                context=self.context,
                on_context=self.apply_context,
            )
            if cfg.mqtt is not None
            else None
        )
        self.alert_publisher: AlertPublisher | None = None
        if self.mqtt is not None and cfg.mqtt is not None and cfg.mqtt.publish_alerts:
            self.alert_publisher = AlertPublisher(self.mqtt, cfg.site, cfg.gateway)
            self.pipeline.sinks.append(self.alert_publisher)
        self.sources = build_sources(cfg, self.registry, pipeline=self.pipeline, mqtt=self.mqtt)
        for source in self.sources:
            for channel in source.channels():
                self.registry.add(channel)
        self.events: list[AlertEvent] = []
        self.pipeline.sinks.append(self.events.append)
        self.pipeline.sinks.append(_log_alert)
        self.pipeline.sinks.extend(sinks or [])
        self.forwarder = (
            Forwarder(self.spool, forwarder_settings(cfg.influx), self.metrics)
            if cfg.influx is not None
            else None
        )
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._forward_task: asyncio.Task[None] | None = None

    @property
    def channels(self) -> list[Channel]:
        """Every channel seen so far."""
        return list(self.registry.channels.values())

    def self_metrics_lines(self) -> list[str]:
        """The agent's own counters as `driftgate_agent` (and per-source `driftgate_source`)
        points, stamped with the wall clock."""
        now = time.time_ns()
        tags = {"site": self.cfg.site, "gateway": self.cfg.gateway}
        lines = [encode_point("driftgate_agent", tags, self.metrics.fields(), now)]
        for source in self.sources:
            health = getattr(source, "health", None)
            if health is not None:
                source_tags = {**tags, "source": source.name}
                lines.append(encode_point("driftgate_source", source_tags, health.fields(), now))
        return lines

    async def _detect_loop(self) -> None:
        while True:
            await asyncio.sleep(PROCESS_INTERVAL)
            self.pipeline.process()
            await self.pipeline.flush_rejected()

    async def _context_loop(self) -> None:
        # `driftgate context set` writes the file; pick the change up within a second.
        while True:
            await asyncio.sleep(1.0)
            try:
                changed = self.context.reload()
            except DriftgateError as exc:
                log.error("cannot read the production context", error=str(exc))
                continue
            if changed:
                self.apply_context()
            try:
                if self.registry.reload_baselines():
                    log.info("baselines changed on disk: detectors compare against them now")
            except (OSError, ValueError, TypeError) as exc:
                log.error("cannot read the baselines file", error=str(exc))
            self.pipeline.check_stale(self.clock())
            self.lots.save_if_due()

    def _measures_colour(self) -> bool:
        """Whether any device source sends spectra or L*a*b* (its profile says so)."""
        for sc in self.cfg.sources:
            if isinstance(sc, SerialSourceConfig | MqttSourceConfig):
                try:
                    profile = load_profile(sc.profile)
                except DriftgateError:
                    continue
                if profile.spectrum is not None or any(f.kind == "color" for f in profile.fields):
                    return True
        return False

    def clock(self) -> float:
        """Now, for stale checks: the wall clock, or the newest reading's time when every
        source is a simulation running faster than real time (the demo)."""
        simulated = [s for s in self.sources if isinstance(s, SimulatedSource)]
        if (
            simulated
            and len(simulated) == len(self.sources)
            and all(s.speed != 1.0 for s in simulated)
        ):
            return self.pipeline.clock_ns / 1e9
        return time.time()

    async def _references_loop(self) -> None:
        # `driftgate reference capture|import|clear` write files; pick them up within a second.
        while True:
            await asyncio.sleep(1.0)
            self.color.poll()

    def apply_context(self) -> None:
        """Re-tag every channel with the current production context (after a change)."""
        self.pipeline.process()  # readings already received keep the context they came under
        count = self.registry.retag_all()
        self.lots.context_changed()  # new lots start their samples with the next readings
        log.info("production context changed", channels=count, context=self.context.scopes)

    async def _self_metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.self_metrics.interval)
            self.spool.extend(self.self_metrics_lines())
            flush_bursts()

    async def run(self, *, drain_at_end: float = 0.0, handle_signals: bool = True) -> RunResult:
        """Run until the sources finish (a bounded simulation) or SIGINT/SIGTERM; then shut down.

        ``drain_at_end``: seconds to keep forwarding after the sources finished on their own.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        by_signal = False
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
        if self._measures_colour():
            # colour-science takes a second to import (more on a Pi): do it now, off the
            # event loop, rather than stall the loop at the first measurement.
            await asyncio.to_thread(warm_up_colour)
        stats = await self.spool.open()
        log.info(
            "agent starting",
            site=self.cfg.site,
            gateway=self.cfg.gateway,
            state_dir=str(self.state_dir),
            channels=len(self.registry.channels),
            spool_pending=stats.pending_lines,
            influx=self.cfg.influx.url if self.cfg.influx else None,
        )
        self._tasks.append(asyncio.create_task(self.spool.run(), name="spool"))
        self._forward_task = (
            asyncio.create_task(self.forwarder.run(), name="forwarder")
            if self.forwarder is not None
            else None
        )
        self._tasks.append(asyncio.create_task(self._self_metrics_loop(), name="self-metrics"))
        self._tasks.append(asyncio.create_task(self._detect_loop(), name="detect"))
        self._tasks.append(asyncio.create_task(self._context_loop(), name="context"))
        self._tasks.append(asyncio.create_task(self._references_loop(), name="references"))
        self._tasks.append(asyncio.create_task(self.history.run(), name="history"))
        if self.mqtt is not None:
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="mqtt"))
        if self.alert_publisher is not None:
            self._tasks.append(
                asyncio.create_task(self.alert_publisher.run(), name="alert-publisher")
            )
        source_tasks = [
            asyncio.create_task(src.run(self.pipeline), name=f"source:{src.name}")
            for src in self.sources
        ]
        stopper = asyncio.create_task(self.stop_event.wait(), name="stop")
        final: SpoolStats | None = None
        try:
            waiting: set[asyncio.Future[Any]] = {stopper, *source_tasks}
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    by_signal = True
                    break
                for task in done:
                    waiting.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        name = task.get_name() if isinstance(task, asyncio.Task) else "?"
                        log.error("source failed", task=name, error=repr(task.exception()))
                if not (waiting - {stopper}) and self.sources:
                    break
        finally:
            final = await self._shutdown(source_tasks, stopper, by_signal, drain_at_end)
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        sim_starts = [int(s.start * 1e9) for s in self.sources if isinstance(s, SimulatedSource)]
        sim_start = min(sim_starts, default=0)
        return RunResult(
            metrics=self.metrics,
            channels=list(self.registry.channels.values()),
            events=self.events,
            wall_seconds=time.monotonic() - started,
            sim_start_ns=sim_start,
            sim_end_ns=self.pipeline.clock_ns,
            pending_lines=final.pending_lines if final else 0,
            pending_bytes=final.pending_bytes if final else 0,
            dead_letters=final.dead_letters if final else 0,
            stopped_by_signal=by_signal,
        )

    async def _shutdown(
        self,
        source_tasks: list[asyncio.Task[None]],
        stopper: asyncio.Task[bool],
        by_signal: bool,
        drain_at_end: float,
    ) -> SpoolStats:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        stopper.cancel()
        if self.alert_publisher is not None and self.alert_publisher.queue:
            # Give queued alert events a moment to go out before the link says goodbye.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.alert_publisher.drained.wait(), 1.0)
        if self.mqtt is not None:
            await self.mqtt.stop()  # `offline` (retained), then a clean disconnect: no will
        # Stop everything that produces lines first (sources, detection, self-metrics), so
        # nothing is appended after the final flush and drain below (it would be left unsent).
        producers = [
            t for t in self._tasks if t.get_name() in ("self-metrics", "detect", "history")
        ]
        for task in [*source_tasks, *producers]:
            task.cancel()
        await asyncio.gather(stopper, *source_tasks, *producers, return_exceptions=True)
        self.pipeline.process()
        await self.pipeline.flush_rejected()
        self.lots.save()
        try:
            await self.history.close()
        except (HistoryError, OSError) as exc:
            log.error("cannot write the local history", error=str(exc))
        self.spool.extend(self.self_metrics_lines())
        await self.spool.flush()
        if self._forward_task is not None and self.forwarder is not None:
            # Let the batch in flight finish rather than cancel it: a cancelled write may have
            # reached the server and would be sent again by the drain.
            self.forwarder.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._forward_task), 1.0)
            except TimeoutError:
                self._forward_task.cancel()
            await asyncio.gather(self._forward_task, return_exceptions=True)
        if self.forwarder is not None:
            budget = 1.5 if by_signal else max(drain_at_end, 1.5)
            with contextlib.suppress(Exception):
                await self.forwarder.drain(budget)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        final = await self.spool.stats()
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            await asyncio.wait_for(self.spool.close(), remaining)
        except TimeoutError:
            log.error("spool did not close in time; SQLite's WAL keeps what was committed")
        flush_bursts(force=True)
        log.info("agent stopped", readings=self.metrics.readings_in, alerts=self.metrics.alerts)
        return final


def _log_alert(event: AlertEvent) -> None:
    log.info(
        "drift alert",
        channel=event.channel.name,
        detector=event.detector,
        kind=event.kind,
        severity=event.level.label,
        value=round(event.value, 4),
        baseline=round(event.baseline, 4),
        message=event.message,
    )
