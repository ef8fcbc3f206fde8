"""One place that wires a config into the data path, top to bottom like the data flow:

    sources → FrameHandler (device profile) → Pipeline → spool
                                                └──→ drift engine → alert sinks
                                                └──→ stages: local history, lot comparison
              colour measurements → ColorStage ──→ Pipeline

The live agent, ``driftgate replay`` and the benchmarks all build their pipeline here, so what
they measure or replay is what runs on the gateway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from agent.channels import ChannelRegistry
from agent.color.references import ReferenceStore
from agent.color.stage import ColorStage
from agent.config.models import (
    AgentConfig,
    ModbusSourceConfig,
    MqttSourceConfig,
    SerialSourceConfig,
    SimulatedSourceConfig,
)
from agent.config.notify import StacklightTarget
from agent.context import ContextStore
from agent.drift.approved import ApprovedLots, approved_path
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DriftEngine
from agent.drift.lots import LotTracker
from agent.errors import DriftgateError
from agent.incidents.manager import IncidentManager
from agent.incidents.store import IncidentStore, store_path
from agent.incidents.words import local_zone
from agent.ingest.broker import MqttLink
from agent.ingest.modbus import ModbusSource
from agent.ingest.mqtt import MqttSource
from agent.ingest.serial import SerialSource
from agent.ingest.simulated import SimulatedSource
from agent.metrics import AgentMetrics
from agent.notify.outbox import Outbox
from agent.notify.router import Router
from agent.notify.targets import make_target, origin_of
from agent.pipeline import Pipeline
from agent.reading import Channel
from agent.sim.workshop import DAY, Workshop
from agent.store.history import History, history_path
from agent.store.spool import Spool, spool_path


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
class Core:
    """The data path of one agent, from a decoded reading to the spool and the detectors."""

    cfg: AgentConfig
    metrics: AgentMetrics
    spool: Spool
    baselines: BaselineStore
    context: ContextStore
    engine: DriftEngine
    registry: ChannelRegistry
    pipeline: Pipeline
    history: History | None = None
    lots: LotTracker | None = None
    color: ColorStage | None = None
    sources: list[Source] = field(default_factory=list)


def build(
    cfg: AgentConfig,
    *,
    spool: Spool | None = None,
    baselines: BaselineStore | None = None,
    persistent: bool = True,
) -> Core:
    """Wire the data path for ``cfg``.

    ``persistent=False`` (replay, benchmarks) keeps baselines and context in memory and leaves
    out the local history, lot tracking and the colour stage, which exist to keep state; nor
    does it cap the channels (``input_limits.max_channels`` guards a gateway against its senders, a
    replayed file has exactly the series it has).
    ``spool`` replaces the state dir's spool (a replay discards lines).
    """
    state = cfg.state_dir if persistent else None
    metrics = AgentMetrics()
    if spool is None:
        spool = Spool(
            spool_path(cfg.state_dir),
            max_bytes=cfg.spool.max_bytes,
            synchronous=cfg.spool.synchronous,
            flush_interval=cfg.spool.flush_interval,
            flush_lines=cfg.spool.flush_lines,
            max_dead_letters=cfg.spool.max_dead_letters,
            metrics=metrics,
        )
    else:
        spool.metrics = metrics
    if baselines is None:
        baselines = BaselineStore(state / "baselines.json" if state is not None else None)
    context = ContextStore(state / "context.json" if state is not None else None)
    engine = DriftEngine(baselines, cfg.alerts)
    registry = ChannelRegistry(
        cfg.channels,
        engine,
        context,
        max_channels=cfg.input_limits.max_channels if persistent else None,
    )
    pipeline = Pipeline(
        spool,
        metrics,
        cfg.site,
        cfg.gateway,
        engine,
        device_ahead_ns=round(cfg.input_limits.max_ahead * 1e9),
        device_behind_ns=round(cfg.input_limits.max_behind * 1e9),
    )
    core = Core(cfg, metrics, spool, baselines, context, engine, registry, pipeline)
    if state is not None:
        core.history = History(history_path(state), days=cfg.history.days)
        pipeline.stages.append(core.history)
        core.lots = LotTracker(
            cfg.lots, state / "lots.json", pipeline, registry,
            approved=ApprovedLots(approved_path(state)), sink=core.history,
        )  # fmt: skip
        pipeline.stages.append(core.lots)
        core.color = ColorStage(cfg.color, ReferenceStore(state / "references"), registry, pipeline)
    return core


@dataclass(slots=True)
class Incidents:
    """Incidents and their delivery: the manager, its store, the routes and the outbox."""

    store: IncidentStore
    manager: IncidentManager
    router: Router
    outbox: Outbox


def build_incidents(core: Core, clock: Callable[[], int]) -> Incidents:
    """Wire incidents onto the data path: the manager listens to every alert event; its notices
    go through the routes into the outbox (state_dir/incidents.sqlite)."""
    cfg = core.cfg
    zone = local_zone(cfg.timezone)
    store = IncidentStore(store_path(cfg.state_dir), cfg.timezone)
    router = Router(cfg.notify, zone, clock)
    manager = IncidentManager(cfg, core.context, clock, zone=zone, escalations=router.escalations)
    outbox = Outbox(
        store,
        router,
        # Stack lights are not routed: they show state (the agent attaches them to the manager).
        [
            make_target(t, origin_of(cfg))
            for t in cfg.notify.targets
            if not isinstance(t, StacklightTarget)
        ],
        core.metrics,
        max_attempts=cfg.notify.max_attempts,
    )
    manager.saves.append(store.save)
    manager.listeners.append(outbox)
    core.pipeline.sinks.append(manager)
    return Incidents(store, manager, router, outbox)


def simulated_start(sc: SimulatedSourceConfig) -> float:
    """Where a simulated source's clock starts (epoch seconds)."""
    if sc.start is not None:
        return sc.start.timestamp()
    if sc.days is not None:
        # End the simulated span at today's midnight, so Grafana's "last 30 days" shows it.
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today.timestamp() - sc.days * DAY
    return time.time()


def build_sources(core: Core, mqtt: MqttLink | None = None) -> list[Source]:
    """The configured sources, their channels registered (MQTT sources need the link)."""
    cfg = core.cfg
    sources: list[Source] = []
    base_tags = {"site": cfg.site, "gateway": cfg.gateway}
    for sc in cfg.sources:
        if isinstance(sc, SimulatedSourceConfig):
            start = simulated_start(sc)
            workshop = Workshop.build(start, seed=sc.seed, tags=base_tags)
            sources.append(
                SimulatedSource(
                    sc.name, workshop, start=start, interval=sc.interval, speed=sc.speed,
                    days=sc.days,
                )
            )  # fmt: skip
        elif isinstance(sc, SerialSourceConfig):
            sources.append(SerialSource(sc, core.pipeline, core.registry, measurements=core.color))
        elif isinstance(sc, MqttSourceConfig):
            if mqtt is None:
                raise DriftgateError(f"source {sc.name}: an mqtt source needs the mqtt: section")
            sources.append(
                MqttSource(sc, mqtt, core.pipeline, core.registry, measurements=core.color)
            )
        elif isinstance(sc, ModbusSourceConfig):
            sources.append(ModbusSource(sc, core.pipeline, core.registry))
    for source in sources:
        for channel in source.channels():
            core.registry.add(channel)
    core.sources = sources
    return sources
