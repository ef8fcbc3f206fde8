"""Replay: recorded readings through the live detectors.

The readings go through the same ChannelRegistry (config, default detectors by kind) and the
same Pipeline micro-batching as a running agent, so replay and live give the same alert events.
Baselines live in memory unless a state dir is named: a replay never disturbs the live agent's.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig, config_from_dict
from agent.drift.alerts import AlertEvent
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DriftEngine, NotReady
from agent.reading import Channel
from agent.runtime.build import build
from agent.store.spool import Spool

if TYPE_CHECKING:
    pass

from agent.replay.inputs import ReplayError, ReplayInput

REPLAY_BATCH = 1024  # readings between Pipeline.process() calls, like a live burst


class _NoSpool(Spool):
    """Replay's spool: the readings are already recorded, so nothing is kept."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent/replay-spool.sqlite"))

    def append(self, line: str) -> None:
        """Discard."""

    def extend(self, lines: object) -> None:
        """Discard."""


@dataclass(slots=True)
class ChannelSummary:
    """What a replay saw of one channel."""

    readings: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    events: Counter[str] = dataclasses.field(default_factory=Counter)
    max_abs_delta: float = math.nan


@dataclass(slots=True)
class Trace:
    """A channel's signal for plotting, thinned to at most ~2 × LIMIT buckets (min, mean, max)."""

    LIMIT = 4000
    t: list[int] = dataclasses.field(default_factory=list)
    lo: list[float] = dataclasses.field(default_factory=list)
    mean: list[float] = dataclasses.field(default_factory=list)
    hi: list[float] = dataclasses.field(default_factory=list)
    per_bucket: int = 1
    _n: int = 0
    _t: int = 0
    _lo: float = math.inf
    _hi: float = -math.inf
    _sum: float = 0.0

    def add(self, ts: int, x: float) -> None:
        """Add one reading."""
        if self._n == 0:
            self._t = ts
        self._n += 1
        self._sum += x
        self._lo = min(self._lo, x)
        self._hi = max(self._hi, x)
        if self._n >= self.per_bucket:
            self.flush()

    def flush(self) -> None:
        """Close the current bucket."""
        if not self._n:
            return
        self.t.append(self._t)
        self.lo.append(self._lo)
        self.hi.append(self._hi)
        self.mean.append(self._sum / self._n)
        self._n, self._sum, self._lo, self._hi = 0, 0.0, math.inf, -math.inf
        if len(self.t) >= 2 * self.LIMIT:
            self._halve()

    def _halve(self) -> None:
        self.t = self.t[::2]
        self.lo = [min(a, b) for a, b in zip(self.lo[::2], self.lo[1::2], strict=True)]
        self.hi = [max(a, b) for a, b in zip(self.hi[::2], self.hi[1::2], strict=True)]
        self.mean = [(a + b) / 2 for a, b in zip(self.mean[::2], self.mean[1::2], strict=True)]
        self.per_bucket *= 2


@dataclass(slots=True)
class ReplayResult:
    """Alert events in reading-time order, the channels, and what each channel saw."""

    events: list[AlertEvent]
    channels: dict[str, Channel]
    summaries: dict[str, ChannelSummary]
    traces: dict[str, Trace]
    baselines: BaselineStore
    engine: DriftEngine
    late: int = 0
    invalid: int = 0
    not_ready: list[NotReady] = dataclasses.field(default_factory=list)


def replay(
    source: ReplayInput,
    cfg: AgentConfig | None = None,
    *,
    baselines: BaselineStore | None = None,
    only: Sequence[str] = (),
    trace: bool = False,
) -> ReplayResult:
    """Run a recorded input through the registry and the pipeline, as a live agent would."""
    store = baselines if baselines is not None else BaselineStore(None)
    if cfg is None:
        cfg = config_from_dict({"site": "replay", "gateway": "replay"}, source="<replay>")
    core = build(cfg, spool=_NoSpool(), baselines=store, persistent=False)
    pipeline, registry, metrics = core.pipeline, core.registry, core.metrics
    known = {s.name for s in source.series}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ReplayError(
            f"no channel {', '.join(map(repr, unknown))} in the input (it has "
            f"{', '.join(sorted(known))})"
        )
    channels: list[Channel | None] = []
    for spec in source.series:
        if only and spec.name not in only:
            channels.append(None)
            continue
        channels.append(
            registry.get_or_create(
                spec.name,
                measurement=spec.measurement,
                field=spec.field,
                unit=spec.unit,
                kind=spec.kind,
                tags=spec.tags,
            )
        )
    events: list[AlertEvent] = []
    pipeline.sinks.append(events.append)
    summaries = [ChannelSummary() for _ in channels]
    traces = [Trace() for _ in channels] if trace else []
    ingest = pipeline.ingest
    count = 0
    for index, ts, value in source.readings():
        channel = channels[index]
        if channel is None:
            continue
        ingest(channel, ts, value)
        s = summaries[index]
        s.readings += 1
        if s.first_ns is None or ts < s.first_ns:
            s.first_ns = ts
        if s.last_ns is None or ts > s.last_ns:
            s.last_ns = ts
        if trace:
            traces[index].add(ts, value)
        count += 1
        if count % REPLAY_BATCH == 0:
            pipeline.process()
    pipeline.process()
    # A live agent's clock at the end of the recording: channels quiet since then are stale.
    pipeline.check_stale(pipeline.clock_ns / 1e9)
    store.save()  # baselines learned on the way, where a state dir was given
    events.sort(key=lambda e: e.ts_ns)
    by_name: dict[str, ChannelSummary] = {}
    for channel, s in zip(channels, summaries, strict=True):
        if channel is not None:
            by_name[channel.name] = s
    for event in events:
        s = by_name[event.channel.name]
        s.events[event.transition] += 1
        if math.isfinite(event.delta) and not abs(event.delta) <= s.max_abs_delta:
            s.max_abs_delta = abs(event.delta)
    named_traces: dict[str, Trace] = {}
    for channel, tr in zip(channels, traces, strict=False):
        if channel is not None:
            tr.flush()
            named_traces[channel.name] = tr
    return ReplayResult(
        events=events,
        channels={c.name: c for c in channels if c is not None},
        summaries=by_name,
        traces=named_traces,
        baselines=store,
        engine=core.engine,
        late=metrics.late_readings,
        invalid=metrics.invalid_readings,
        not_ready=core.engine.not_ready(),
    )
