"""One running agent: the data path from ``build``, its sources, the forwarder and the alert
sinks, every long-running task owned by the supervisor, and an orderly shutdown.

What runs where:
- on the event loop: source callbacks (serial reads, MQTT messages), the pipeline, detection
  (every PROCESS_INTERVAL), the forwarder's HTTP, the maintenance tick (once a second);
- on threads: every SQLite call (the spool's and the history's own worker threads), file
  writes of the state dir (context, baselines, lot samples), gzip of large batches, and the
  import of colour-science.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import clock
from agent.color.colorimetry import warm_up_colour
from agent.config.models import AgentConfig, InfluxConfig, MqttSourceConfig, SerialSourceConfig
from agent.config.notify import StacklightTarget
from agent.drift.alerts import AlertEvent
from agent.drift.compare import load_statistics, statistics_loaded
from agent.drift.engine import NotReady
from agent.errors import ConfigError, DriftgateError, SpoolError
from agent.incidents.model import Incident
from agent.ingest.broker import Ledger, MqttLink
from agent.ingest.profiles import load_profile
from agent.ingest.simulated import SimulatedSource
from agent.logs import EVERY_TIME, configure_logging, flush_bursts, get_logger
from agent.metrics import AgentMetrics
from agent.notify.mqtt import AlertPublisher, IncidentBoard, Publisher, ack_listener
from agent.notify.outbox import Outbox
from agent.notify.stacklight import StackLight, make_stacklight
from agent.pipeline import BUSY_BATCH, PROCESS_INTERVAL, PROCESS_SOON, Pipeline
from agent.reading import Channel
from agent.runtime.build import Source, build, build_delivery, build_incidents, build_sources
from agent.runtime.lag import LoopLag
from agent.runtime.outage import OutageAlerts
from agent.runtime.reload import ReloadAnswer, ReloadPlan, answer_path, plan_reload, write_answer
from agent.runtime.sinks import EventRecord, log_alert
from agent.runtime.supervisor import Supervisor
from agent.runtime.systemd import (
    STATUS_INTERVAL_S,
    Notifier,
    sighup_held,
    wedge_forever,
    wedge_requested,
)
from agent.store.disk import disk_full_hint, disk_words, error_name, is_disk_full
from agent.store.forwarder import Forwarder, ForwarderSettings
from agent.store.lineprotocol import encode_point
from agent.store.spool import SpoolStats
from agent.web.server import StatusServer
from agent.words import duration_words

log = get_logger("driftgate.agent")

SHUTDOWN_BUDGET_S = 5.0  # SIGTERM to exit, systemd's TimeoutStopSec is larger
MAINTENANCE_S = 1.0  # the tick that picks up CLI changes, saves state and checks staleness

PRODUCERS = ("detect", "self-metrics", "maintenance")
"""Tasks that append lines: stopped before the final flush, so nothing is left unsent."""


class AgentFailed(DriftgateError):
    """The supervisor gave up on a task: the process should exit non-zero and be restarted."""


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
    failure: str | None = None  # why the supervisor gave up, if it did
    incidents: list[Incident] = field(default_factory=list)
    not_ready: list[NotReady] = field(default_factory=list)  # detectors that never judged


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
        create_database=influx.create_database,
    )


class Agent:
    """One running agent: owns the spool, the forwarder, the sources and their tasks."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        sinks: list[Callable[[AlertEvent], None]] | None = None,
        reload_config: Callable[[], AgentConfig] | None = None,
        notifier: Notifier | None = None,
        status_fallback: bool = False,
    ):
        self.cfg = cfg
        self.reload_config = reload_config  # reads the config file again (SIGHUP); None: no reload
        self.notifier = notifier if notifier is not None else Notifier()
        self.state_dir = cfg.state_dir
        core = self.core = build(cfg)
        self.metrics = core.metrics
        self.spool = core.spool
        self.pipeline = core.pipeline
        self.engine = core.engine
        self.baselines = core.baselines
        self.context = core.context
        self.registry = core.registry
        self.history = core.history
        self.lots = core.lots
        self.color = core.color
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
        if self.mqtt is not None:
            self._ack_after_commit(self.mqtt)
        self.sources = build_sources(core, self.mqtt)
        self.record = EventRecord(self.metrics)
        self.pipeline.sinks.append(self.record)
        self.pipeline.sinks.append(log_alert)
        self.incidents = build_incidents(core, self.incident_clock)
        self.publisher: Publisher | None = None
        if self.mqtt is not None and cfg.mqtt is not None:
            self.publisher = Publisher(self.mqtt)
            if cfg.mqtt.publish_alerts:
                self.pipeline.sinks.append(AlertPublisher(self.publisher, cfg.site, cfg.gateway))
            if cfg.incidents.mqtt:
                manager = self.incidents.manager
                board = IncidentBoard(self.publisher, cfg.site, cfg.gateway, manager.open_now)
                self.incidents.manager.listeners.append(board)
            ack_listener(self.mqtt, cfg.site, cfg.gateway, self.acknowledge)
        # Tower lights show the open incidents of their zone: they follow every notice, like
        # the retained MQTT board, rather than being routed deliveries.
        manager = self.incidents.manager
        self.lights: list[StackLight] = [
            make_stacklight(t, manager.open.values)
            for t in cfg.notify.targets
            if isinstance(t, StacklightTarget)
        ]
        manager.listeners.extend(self.lights)
        self.pipeline.sinks.extend(sinks or [])
        self.forwarder = (
            Forwarder(self.spool, forwarder_settings(cfg.influx), self.metrics)
            if cfg.influx is not None
            else None
        )
        self.outage_alerts = OutageAlerts(self.pipeline)
        self.spool.listeners.append(self.outage_alerts)
        self.supervisor = Supervisor()
        self.lag = LoopLag()
        self.stop_event = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.started = asyncio.Event()  # every task started: a reload may change them
        self.reload_attempts = 0  # reloads asked (SIGHUP)
        self.readings_per_s: float | None = None  # over the last STATUS_INTERVAL_S
        self.reloads = 0  # reloads applied
        # The gateway's own screen (status page, /healthz, /metrics): it reads this agent.
        self.status: StatusServer | None = None
        if cfg.status.enabled:
            self.status = StatusServer(self, fallback_port=status_fallback)
            self.pipeline.stages.append(self.status.latest)

    def _ack_after_commit(self, mqtt: MqttLink) -> None:
        """Tell the MQTT link where a message's output becomes durable (``mqtt.ack``)."""
        spool, pipeline, context = self.spool, self.pipeline, self.context
        mqtt.ack_after(
            (
                Ledger("spool", lambda: spool.appended_seq, lambda: spool.durable_seq),
                Ledger(
                    "dead letters",
                    lambda: pipeline.rejects_queued,
                    lambda: pipeline.rejects_durable,
                ),
                Ledger("context", lambda: context.version, lambda: context.saved_version),
            ),
            commit_soon=spool.commit_soon,
        )
        spool.durable_listeners.append(lambda _seq: mqtt.release())

    def _release_acks(self) -> None:
        if self.mqtt is not None:
            self.mqtt.release()

    @property
    def events(self) -> list[AlertEvent]:
        """The newest alert events of this run (at most EVENTS_KEPT)."""
        return list(self.record.events)

    @property
    def channels(self) -> list[Channel]:
        """Every channel seen so far."""
        return list(self.registry.channels.values())

    def self_metrics_lines(self) -> list[str]:
        """The agent's own counters as `driftgate_agent` (and per-source `driftgate_source`)
        points, stamped with the wall clock."""
        now = clock.wall_ns()
        tags = {"site": self.cfg.site, "gateway": self.cfg.gateway}
        metrics = self.metrics
        metrics.loop_lag_max_ms, metrics.loop_lag_p99_ms = self.lag.take()
        metrics.task_restarts = self.supervisor.restarts
        metrics.channels = len(self.registry.channels)
        metrics.spool_buffered = self.spool.buffered
        oldest = self.spool.oldest_ns
        metrics.spool_oldest_age_s = round(max(now - oldest, 0) / 1e9, 1) if oldest else 0.0
        metrics.mqtt_unacked = self.mqtt.unacked if self.mqtt is not None else 0
        lines = [encode_point("driftgate_agent", tags, metrics.fields(), now)]
        for source in self.sources:
            health = getattr(source, "health", None)
            if health is not None:
                source_tags = {**tags, "source": source.name}
                for extra, fields in health.points():
                    lines.append(
                        encode_point("driftgate_source", {**source_tags, **extra}, fields, now)
                    )
        return lines

    # -- the long-running tasks (each owned by the supervisor) --------------------------------

    async def _detect_loop(self) -> None:
        waiting = asyncio.Event()
        pipeline = self.pipeline
        pipeline.on_waiting = waiting.set
        gathering = False  # bursts wait to be judged in larger batches (Pipeline.process_due)
        try:
            while True:
                await waiting.wait()
                busy = pipeline.last_batch > BUSY_BATCH or gathering
                await asyncio.sleep(PROCESS_INTERVAL if busy else PROCESS_SOON)
                waiting.clear()
                pipeline.process_due()
                await pipeline.flush_rejected()
                self._release_acks()  # messages whose frames were dead-lettered
                gathering = pipeline.waiting
                if gathering:
                    waiting.set()
        finally:
            self.pipeline.on_waiting = None

    async def _maintenance_loop(self) -> None:
        # The CLI changes files in the state dir (context, baselines, references): pick the
        # changes up within a second. State learned here is written from a thread.
        while True:
            await asyncio.sleep(MAINTENANCE_S)
            await self.maintain()

    async def maintain(self) -> None:
        """One maintenance tick: save and reload the state dir's files, check staleness."""
        if wedge_requested():  # a test hook, off unless its environment variable is set
            wedge_forever()
        if self.context.dirty:
            await self._save(self.context.save, "the production context")
            self._release_acks()  # the context messages behind the change
        try:
            if await asyncio.to_thread(self.context.reload):
                self.apply_context()
        except DriftgateError as exc:
            log.error("cannot read the production context", error=str(exc))
        if self.baselines.unsaved:
            await self._save(self.baselines.save, "the baselines")
        try:
            if await asyncio.to_thread(self.baselines.reload):
                for drift in self.engine:
                    drift.baseline.reload()
                log.info("baselines changed on disk: detectors compare against them now")
        except (OSError, ValueError, TypeError) as exc:
            log.error("cannot read the baselines file", error=str(exc))
        if self.color is not None and await asyncio.to_thread(self.color.references.reload):
            self.color.references_changed()
        self.registry.new_channels.flush()  # the summary of a burst of new channels
        clock.wall_ns()  # a quiet agent notices a step of the clock here at the latest
        self.pipeline.check_stale(self.stale_clock())
        if self.lots is not None:
            if self.lots.collecting and not statistics_loaded():
                await asyncio.to_thread(load_statistics)  # before the first comparison needs it
            if self.lots.due():
                await self.lots.save_soon()  # logs its own write errors
            try:
                if await asyncio.to_thread(self.lots.approved.reload):
                    self.lots.approvals_changed()
            except DriftgateError as exc:
                log.error("cannot read the approved lots", error=str(exc))
        for row, incident, by, note in await self.incidents.store.pending_acks():
            self.acknowledge(incident, by, note)
            await self.incidents.store.ack_done(row)
        manager = self.incidents.manager
        manager.tick()
        self.metrics.incidents_open = len(manager.open)

    def acknowledge(self, incident: str, by: str, note: str = "") -> None:
        """Someone acknowledged an incident (CLI, MQTT, the status page)."""
        try:
            self.incidents.manager.acknowledge(incident, by, note)
        except KeyError:
            log.warning("acknowledgement of an unknown incident ignored", incident=incident, by=by)
            return
        log.info("incident acknowledged", incident=incident, by=by, note=note)

    def incident_clock(self) -> int:
        """Now, for incidents: the wall clock, or reading time in an accelerated simulation."""
        now = self.stale_clock()
        return clock.wall_ns() if now is None else int(now * 1e9)

    async def _save(self, save: Callable[[], None], what: str) -> None:
        """Write a state file from a thread; a full disk is logged (once per burst), not a crash
        of the maintenance task: the state stays in memory and the save is tried again."""
        try:
            await asyncio.to_thread(save)
        except OSError as exc:
            self._log_unsaved(what, self.state_dir, exc)

    @staticmethod
    def _log_unsaved(what: str, where: Path, exc: OSError) -> None:
        if is_disk_full(exc, where):
            log.error(
                f"disk full: cannot save {what}",
                path=exc.filename or str(where),
                error=error_name(exc),
                disk=disk_words(Path(exc.filename or where)),
                hint=disk_full_hint(Path(exc.filename or where)),
            )
        else:
            log.error(f"cannot save {what}", path=exc.filename or str(where), error=str(exc))

    async def _self_metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.self_metrics.interval)
            self.spool.extend(self.self_metrics_lines())
            flush_bursts()

    def _prepare_colour(self) -> None:
        """Import colour-science and compute what the configured instruments' spectra need, so
        that the first measurement does not stall the event loop (runs in a thread)."""
        color = self.color
        if color is None:
            return
        profiles = []
        for sc in self.cfg.sources:
            if isinstance(sc, SerialSourceConfig | MqttSourceConfig):
                with contextlib.suppress(DriftgateError):
                    profiles.append(load_profile(sc.profile))
        shapes = {(p.spectrum.start_nm, p.spectrum.step_nm, p.spectrum.count)
                  for p in profiles if p.spectrum is not None}  # fmt: skip
        if not shapes and not any(f.kind == "color" for p in profiles for f in p.fields):
            return
        warm_up_colour()
        for shape in shapes:
            color.colorimetry.prepare(*shape)

    def stale_clock(self) -> float | None:
        """Now, for stale checks: None (live: the monotonic time since each channel's last
        reading arrived), or the newest reading's time when every source is a simulation
        running faster than real time (the demo)."""
        simulated = [s for s in self.sources if isinstance(s, SimulatedSource)]
        if (
            simulated
            and len(simulated) == len(self.sources)
            and all(s.speed != 1.0 for s in simulated)
        ):
            return self.pipeline.clock_ns / 1e9
        return None

    def clock_stepped(self, step: int, now_ns: int) -> None:
        """The wall clock stepped (a listener of agent.clock.WALL): apply its policy."""
        self.metrics.clock_steps += 1
        self.pipeline.process()  # readings stamped before the step are judged on the old line
        if step < 0:
            restarted = self.engine.rewind(now_ns)
        else:
            restarted = []
            self.engine.skip_ahead(step)
        log.warning(
            "the wall clock stepped " + ("back" if step < 0 else "forward"),
            by_s=round(abs(step) / 1e9, 1),
            restarted_channels=len(restarted),
            hint="readings keep the clock's time; channels whose newest reading is now in "
            "the future start their detector windows afresh"
            if step < 0
            else "readings keep the clock's time; it does not count as silence",
        )

    def apply_context(self) -> None:
        """Re-tag every channel with the current production context (after a change)."""
        self.pipeline.process()  # readings already received keep the context they came under
        count = self.registry.retag_all()
        if self.lots is not None:
            self.lots.context_changed()  # new lots start their samples with the next readings
        scopes = self.context.scopes
        # The whole context while it reads at a glance; past that, how much of it there is.
        shown: object = scopes if len(scopes) <= 8 else f"{len(scopes)} lines and zones"
        log.info("production context changed", channels=count, context=shown)

    # -- systemd: status, watchdog, reload ------------------------------------------------------

    def status_line(self) -> str:
        """One line for ``systemctl status``: the rate, the spool's backlog, the forwarding."""
        m = self.metrics
        rate = self.readings_per_s
        parts = [] if rate is None else [f"{rate:,.1f} readings/s"]
        waiting = m.spool_pending_lines + self.spool.buffered
        parts.append(f"spool {waiting:,} line{'' if waiting == 1 else 's'} waiting")
        if self.forwarder is None:
            parts.append("no InfluxDB configured")
        elif (outage := self.forwarder.outage()) is not None:
            down_s, status = outage
            answer = f"HTTP {status}" if status else "no answer"
            down = f"{down_s:.0f} s" if down_s < 60 else duration_words(down_s)
            parts.append(f"InfluxDB not taking writes for {down} ({answer})")
        elif m.forwarded or m.influx_reachable:
            parts.append(f"InfluxDB ok, {m.forwarded:,} forwarded")
        else:
            parts.append("InfluxDB: nothing sent yet")
        if not self.spool.healthy:
            parts.append("SPOOL CANNOT WRITE (disk full?)")
        return "; ".join(parts)

    async def _systemd_loop(self) -> None:
        """WATCHDOG=1 from the event loop itself (a wedged loop stops them), STATUS= lines."""
        notifier = self.notifier
        watchdog = notifier.watchdog_s
        tick = STATUS_INTERVAL_S if watchdog is None else min(watchdog / 3, STATUS_INTERVAL_S)
        last_at, last_in = time.monotonic(), self.metrics.readings_in
        while True:
            await asyncio.sleep(tick)
            if watchdog is not None:
                notifier.ping()
            now = time.monotonic()
            if now - last_at >= STATUS_INTERVAL_S:
                self.readings_per_s = (self.metrics.readings_in - last_in) / (now - last_at)
                notifier.status(self.status_line())
                last_at, last_in = now, self.metrics.readings_in

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload()

    async def reload(self) -> ReloadAnswer:
        """Read the config file again and apply what changed (SIGHUP). A file with problems is
        refused whole, each problem logged as ``file:line: key: reason``; the running
        configuration stays. The answer also goes to the file ``driftgate reload`` waits for."""
        await self.started.wait()  # asked during the start: after it
        self.notifier.reloading()
        self.reload_attempts += 1
        try:
            answer = await self._reload()
        finally:
            self.notifier.ready(self.status_line())
        path = answer_path()
        if path is not None:
            try:
                await asyncio.to_thread(write_answer, path, answer)
            except OSError as exc:
                log.error("cannot write the answer to the reload", path=str(path), error=str(exc))
        return answer

    async def _reload(self) -> ReloadAnswer:
        answer = functools.partial(ReloadAnswer, os.getpid(), self.reload_attempts)
        if self.reload_config is None:
            problem = "the agent was not started from a config file: nothing to reload"
            log.warning("reload refused", **EVERY_TIME, problems=[problem])
            return answer(False, [problem])
        try:
            new = await asyncio.to_thread(self.reload_config)
            plan = plan_reload(self.cfg, new)
            # Built before anything stops: a source that cannot be built (a device profile
            # that does not load) refuses the reload while everything still runs.
            sources = self._new_sources(plan)
        except DriftgateError as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("configuration refused: the running one stays", **EVERY_TIME,
                      problems=problems)  # fmt: skip
            return answer(False, problems)
        for warning in new.warnings:
            log.warning(warning.event, where=warning.where, detail=warning.detail)
        await self._apply(plan, sources)
        self.reloads += 1
        if plan.needs_restart:
            log.warning(
                "changes that need a restart were not applied",
                **EVERY_TIME,
                keys=list(plan.needs_restart),
                hint="systemctl restart driftgate",
            )
        log.info("configuration reloaded", applied=plan.applied)
        return answer(True, [], plan.applied, list(plan.needs_restart))

    def _new_sources(self, plan: ReloadPlan) -> list[Source]:
        """The added and changed sources, built (their channels registered), not started."""
        wanted = set(plan.sources_added) | set(plan.sources_changed)
        if not wanted:
            return []
        only = [sc for sc in plan.config.sources if sc.name in wanted]
        cfg = plan.config.model_copy(update={"sources": only})
        return build_sources(dataclasses.replace(self.core, cfg=cfg), self.mqtt)

    async def _apply(self, plan: ReloadPlan, new_sources: list[Source]) -> None:
        cfg = plan.config
        sup = self.supervisor
        self.pipeline.process()  # readings already received are judged by the old detectors
        if plan.log:
            configure_logging(cfg.log.level, cfg.log.format)
        going = set(plan.sources_removed) | set(plan.sources_changed)
        old = {s.name: s for s in self.sources if s.name in going}
        await sup.stop([f"source:{name}" for name in old])
        forgotten = {c.name for name in plan.sources_removed for c in old[name].channels()}
        for name in plan.sources_changed:
            before = next(sc for sc in self.cfg.sources if sc.name == name)
            after = next(sc for sc in cfg.sources if sc.name == name)
            if _naming(before) != _naming(after):  # its channels get other names now
                forgotten |= {c.name for c in old[name].channels()}
        self.registry.forget(forgotten)
        if self.status is not None:  # nor a last value on the page (a source back starts afresh)
            for name in forgotten:
                self.status.latest.values.pop(name, None)
        self.sources = [s for s in self.sources if s.name not in going] + new_sources
        self.core.sources = self.sources
        if plan.channels_changed:
            self.registry.reconfigure(cfg.channels, plan.channels_changed)
            self.incidents.manager.channels = {c.name: c for c in cfg.channels}
        self.cfg = self.core.cfg = cfg
        for source in new_sources:
            sup.start(f"source:{source.name}", _runner(source, self.pipeline), finite=True)
        if plan.influx:
            await self._restart_forwarder()
        if plan.notify:
            await self._restart_delivery()
        if plan.self_metrics:
            await sup.stop(["self-metrics"])
            sup.start("self-metrics", self._self_metrics_loop)

    async def _restart_forwarder(self) -> None:
        """New InfluxDB settings: the batch in flight may finish (1 s), then a new forwarder
        sends what the spool holds; nothing is lost, a batch cut off is sent again."""
        sup = self.supervisor
        if self.forwarder is not None and sup.task("forwarder") is not None:
            sup.may_end("forwarder")
            self.forwarder.stop()
            forward = sup.task("forwarder")
            if forward is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(forward), 1.0)
            await sup.stop(["forwarder"])
        influx = self.cfg.influx
        self.forwarder = (
            Forwarder(self.spool, forwarder_settings(influx), self.metrics)
            if influx is not None
            else None
        )
        self.metrics.influx_reachable = False
        if self.forwarder is not None:
            sup.start("forwarder", self.forwarder.run)

    async def _restart_delivery(self) -> None:
        """New targets or routes: deliveries waiting in the outbox stay and go by the new ones."""
        sup = self.supervisor
        incidents, manager = self.incidents, self.incidents.manager
        await sup.stop(["outbox", *sup.names("notify:"), *sup.names("stacklight:")])
        await self._finally(incidents.outbox.close(), "closing notice targets failed")
        for light in self.lights:
            light.release()
            manager.listeners.remove(light)
        manager.listeners.remove(incidents.outbox)
        router, outbox = build_delivery(self.cfg, incidents.store, self.metrics,
                                        self.incident_clock)  # fmt: skip
        incidents.router, incidents.outbox = router, outbox
        manager.escalations = router.escalations
        manager.listeners.append(outbox)
        self.lights = [
            make_stacklight(t, manager.open.values)
            for t in self.cfg.notify.targets
            if isinstance(t, StacklightTarget)
        ]
        manager.listeners.extend(self.lights)
        sup.start("outbox", outbox.watch)
        for name in outbox.targets:
            sup.start(f"notify:{name}", _worker(outbox, name))
        for light in self.lights:
            sup.start(f"stacklight:{light.name}", light.run)

    # -- run and stop ----------------------------------------------------------------------

    async def run(
        self, *, drain_at_end: float = 0.0, handle_signals: bool = True, linger: bool = False
    ) -> RunResult:
        """Run until the sources finish (a bounded simulation), SIGINT/SIGTERM, or the
        supervisor gives up on a task; then shut down. ``drain_at_end``: seconds to keep
        forwarding after the sources finished on their own. ``linger``: keep running (the
        status page, forwarding) after they finished, until a signal or ``stop_event``."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
            if self.reload_config is not None:
                # Before the start: SIGHUP's default action would end the process.
                loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
                if sighup_held():  # one came while the process started (hold_sighup)
                    self.reload_requested.set()
        failure: str | None = None
        by_signal = False
        clock.WALL.listeners.append(self.clock_stepped)
        try:
            await self._start()
            finite = [] if linger else [f"source:{s.name}" for s in self.sources]
            failure = await self.supervisor.wait(self.stop_event, finite)
            by_signal = self.stop_event.is_set() and failure is None
        finally:
            final = await self._shutdown(by_signal or failure is not None, drain_at_end)
            clock.WALL.listeners.remove(self.clock_stepped)
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)  # False where none was added
        sim_starts = [int(s.start * 1e9) for s in self.sources if isinstance(s, SimulatedSource)]
        return RunResult(
            metrics=self.metrics,
            channels=list(self.registry.channels.values()),
            events=self.events,
            wall_seconds=time.monotonic() - started,
            sim_start_ns=min(sim_starts, default=0),
            sim_end_ns=self.pipeline.clock_ns,
            pending_lines=final.pending_lines,
            pending_bytes=final.pending_bytes,
            dead_letters=final.dead_letters,
            stopped_by_signal=by_signal,
            failure=failure,
            incidents=sorted(self.incidents.manager.by_id.values(), key=lambda i: i.id),
            not_ready=self.engine.not_ready(),
        )

    async def _start(self) -> None:
        await asyncio.to_thread(self._prepare_colour)
        stats = await self.spool.open()
        for warning in self.cfg.warnings:
            log.warning(warning.event, where=warning.where, detail=warning.detail)
        log.info(
            "agent starting",
            site=self.cfg.site,
            gateway=self.cfg.gateway,
            state_dir=str(self.state_dir),
            channels=len(self.registry.channels),
            spool_pending=stats.pending_lines,
            influx=self.cfg.influx.url if self.cfg.influx else None,
        )
        sup = self.supervisor
        sup.start("loop-lag", self.lag.run)
        sup.start("spool", self.spool.run)
        if self.forwarder is not None:
            sup.start("forwarder", self.forwarder.run)
        sup.start("self-metrics", self._self_metrics_loop)
        sup.start("detect", self._detect_loop)
        sup.start("maintenance", self._maintenance_loop)
        if self.history is not None:
            sup.start("history", self.history.run)
        if self.mqtt is not None:
            sup.start("mqtt", self.mqtt.run)
        if self.publisher is not None:
            sup.start("mqtt-publisher", self.publisher.run)
        incidents = self.incidents
        incidents.manager.restore(await incidents.store.open())
        self.metrics.incidents_open = len(incidents.manager.open)
        sup.start("incidents", incidents.store.run)
        sup.start("outbox", incidents.outbox.watch)
        for name in incidents.outbox.targets:
            sup.start(f"notify:{name}", _worker(incidents.outbox, name))
        for light in self.lights:  # after the restore: the first state shown includes it
            sup.start(f"stacklight:{light.name}", light.run)
        if self.status is not None:
            sup.start("status", self.status.run)
        for source in self.sources:
            sup.start(f"source:{source.name}", _runner(source, self.pipeline), finite=True)
        if self.reload_config is not None:
            sup.start("reload", self._reload_loop)
        if self.notifier.enabled:
            sup.start("systemd", self._systemd_loop)
        self.started.set()
        # Ready: the spool is open and the sources started (what READY=1 tells systemd; the
        # line is bench/footprint.py's measuring point, which works without systemd).
        log.info("agent running", sources=len(self.sources), channels=len(self.registry.channels))
        self.notifier.ready(self.status_line())

    async def _shutdown(self, by_signal: bool, drain_at_end: float) -> SpoolStats:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        self.notifier.stopping("stopping: committing the spool")
        sup = self.supervisor
        if self.publisher is not None and self.publisher.queue:
            # Give queued messages a moment to go out before the link says goodbye.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.publisher.drained.wait(), 1.0)
        mqtt = self.mqtt
        if mqtt is not None:
            # Take no more messages: those arriving now stay un-acknowledged and come again in
            # the next session. With ack: on_arrival paho would acknowledge them: stop at once.
            mqtt.quiesce()
            if self.cfg.mqtt is not None and self.cfg.mqtt.ack == "on_arrival":
                await mqtt.stop()
        # Stop everything that produces lines first (sources, detection, self-metrics), so
        # nothing is appended after the final flush and drain below (it would be left unsent).
        await sup.stop(["reload", *sup.names("source:"), *PRODUCERS, "mqtt-publisher"])
        self.pipeline.process()
        await self._finally(self.pipeline.flush_rejected(), "cannot dead-letter rejected frames")
        if self.lots is not None:
            await self._finally(asyncio.to_thread(self.lots.save), "cannot save the lot samples")
        if self.baselines.unsaved:
            await self._finally(asyncio.to_thread(self.baselines.save), "cannot save baselines")
        if self.context.dirty:
            await self._finally(asyncio.to_thread(self.context.save), "cannot save the context")
        await sup.stop(["history"])
        if self.history is not None:
            await self._finally(self.history.close(), "cannot write the local history")
        self.outage_alerts.spool_held()
        self.spool.extend(self.self_metrics_lines())
        try:
            await self.spool.flush()
        except SpoolError:
            pass  # the spool has logged its outage; its close says what that cost
        except Exception:
            log.exception("spool commit failed at shutdown")
        if mqtt is not None:
            # The final commit released the last PUBACKs: they go out before `offline`
            # (retained) and a clean disconnect (no will).
            await self._finally(mqtt.stop(), "cannot stop the MQTT link")
            await sup.stop(["mqtt"])
        forward = sup.task("forwarder")
        if forward is not None and self.forwarder is not None:
            # Let the batch in flight finish rather than cancel it: a cancelled write may have
            # reached the server and would be sent again by the drain.
            sup.may_end("forwarder")  # else its return is "ended unexpectedly" and restarted
            self.forwarder.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(forward), 1.0)
            await sup.stop(["forwarder"])
        if self.forwarder is not None:
            budget = 1.5 if by_signal else max(drain_at_end, 1.5)
            await self._finally(self.forwarder.drain(budget), "forwarding at shutdown failed")
        await sup.stop()
        await self._finally(self.incidents.store.close(), "cannot save the incidents")
        await self._finally(self.incidents.outbox.close(), "closing notice targets failed")
        for light in self.lights:
            light.release()
        final = await self.spool.stats()
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            await asyncio.wait_for(self.spool.close(), remaining)
        except TimeoutError:
            log.error("spool did not close in time; SQLite's WAL keeps what was committed")
        for idle in self.engine.not_ready():  # a setting, or too little data, kept it silent
            log.warning("detector never judged a reading", channel=idle.channel,
                        detector=idle.detector, why=idle.why)  # fmt: skip
        self.registry.new_channels.flush(force=True)
        flush_bursts(force=True)
        lost = self.spool.lost_lines
        # error: lines were lost just now; warning: earlier in the run, while the disk was full
        level = log.error if self.spool.lost_at_close else log.warning if lost else log.info
        level(
            "agent stopped",
            readings=self.metrics.readings_in,
            alerts=self.metrics.alerts,
            spooled=self.metrics.spool_appended - lost,
            lost_lines=lost,
            lost_at_stop=self.spool.lost_at_close,
        )
        return final

    @staticmethod
    async def _finally(step: Awaitable[object], what: str) -> None:
        """Run one shutdown step; a failure is logged (an unexpected one with its traceback) and
        the next step runs."""
        try:
            await step
        except DriftgateError as exc:  # says what happened and what to do: no traceback needed
            log.error(what, error=str(exc))
        except Exception:
            log.exception(what)


def _naming(sc: object) -> tuple[object, ...]:
    """What a source's channel names are made of: when it changes, the old channels are
    forgotten (a Modbus bus's devices are part of it: a device added restarts the detectors of
    the bus's channels, as a restart would)."""
    prefix, tags = getattr(sc, "prefix", None), getattr(sc, "base_tags", None)
    if prefix is None or tags is None:
        return (type(sc).__name__,)  # a simulated workshop: always the same channels
    devices = getattr(sc, "devices", None)
    return (
        type(sc).__name__,
        getattr(sc, "profile", None),
        prefix(),
        tuple(sorted(tags().items())),
        repr(devices) if devices is not None else None,
    )


def _worker(outbox: Outbox, name: str) -> Callable[[], Awaitable[None]]:
    async def work() -> None:
        await outbox.work(name)

    return work


def _runner(source: Source, pipeline: Pipeline) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await source.run(pipeline)

    return run
