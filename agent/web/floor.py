"""The picture the status page shows, built from the running agent's memory.

Nothing here touches the disk or waits: a snapshot is a few dict look-ups per channel, built on
the event loop at most once a second however many screens ask (``Floor.snapshot``). The same
JSON is the page, ``/api/status`` and ``driftgate status``.

The newest value of each channel comes from ``Latest``, a pipeline stage that sees each
detection batch (never each reading); the drain time of the spool and how long a source or
InfluxDB has been down come from ``Watch``, sampled once a second.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.drift.detectors import Limit
from agent.drift.engine import ChannelDrift
from agent.incidents.model import ACKED, LEVELS, Incident
from agent.incidents.words import local_zone, since_words
from agent.reading import Channel
from agent.web.view import AgentView
from agent.words import duration_words, fmt

STATES = ("ok", "warn", "alarm", "nodata")
WORDS = {"ok": "normal", "warn": "warning", "alarm": "alarm", "nodata": "no readings yet"}
"""The word beside each state's colour: the page never says anything by colour alone."""

WATCH_SPAN_S = 60.0
"""The drain rate of the spool is measured over the last minute."""


class Latest:
    """The newest reading of each watched channel, taken per detection batch (a BatchStage)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, float]] = {}

    def add(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> None:
        """Keep the batch's newest valid reading, unless an older batch had a newer one."""
        for i in range(len(ns) - 1, -1, -1):
            x = values[i]
            if not math.isnan(x):  # NaN: an invalid reading counted by invalid_rate
                seen = self.values.get(channel.name)
                if seen is None or ns[i] >= seen[0]:
                    self.values[channel.name] = (ns[i], x)
                return


def zone_words(zone: str) -> str:
    """A zone as people say it: edge_paint → 'Edge paint'."""
    text = zone.replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:] if text else "Other"


def source_kind(source: object) -> str:
    """serial, mqtt or simulated, from the source's class."""
    return type(source).__name__.removesuffix("Source").lower() or "source"


def rss_bytes() -> int:
    """The process's resident memory now (/proc; the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Watch:
    """Sampled once a second: rates for the spool's drain time, and since when each source and
    InfluxDB have been down (``/healthz`` gives them ``status.health_grace`` to come back)."""

    def __init__(self, view: AgentView, clock: Any = time.monotonic) -> None:
        self.view = view
        self.clock = clock
        self.started = clock()
        self.samples: deque[tuple[float, int, int]] = deque()
        self.down_since: dict[str, float] = {}

    def sample(self) -> None:
        """Take one sample (the status page's loop calls this once a second)."""
        now = self.clock()
        m = self.view.metrics
        self.samples.append((now, m.forwarded, m.spool_appended))
        while self.samples and now - self.samples[0][0] > WATCH_SPAN_S:
            self.samples.popleft()
        for source in self.view.sources:
            health = getattr(source, "health", None)
            key = f"source:{source.name}"
            if health is not None and not health.connected:
                self.down_since.setdefault(key, now)
            else:
                self.down_since.pop(key, None)
        if self.view.forwarder is not None and not m.influx_reachable and self.backlog() > 0:
            self.down_since.setdefault("influx", now)
        else:
            self.down_since.pop("influx", None)

    def backlog(self) -> int:
        """Lines waiting for InfluxDB: committed and still in memory."""
        return self.view.metrics.spool_pending_lines + self.view.spool.buffered

    def rates(self) -> tuple[float, float]:
        """(forwarded, appended) lines per second over the last minute."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, f0, a0), (t1, f1, a1) = self.samples[0], self.samples[-1]
        span = max(t1 - t0, 1e-9)
        return (f1 - f0) / span, (a1 - a0) / span

    def drain_s(self) -> float | None:
        """Seconds until the backlog is forwarded at the present rates; None if it does not
        shrink (InfluxDB away, or lines arrive faster than they leave)."""
        backlog = self.backlog()
        if backlog == 0:
            return 0.0
        out, in_ = self.rates()
        return backlog / (out - in_) if out > in_ else None

    def down_for(self, key: str) -> float:
        """Seconds ``key`` (``source:<name>``, ``influx``) has been down; 0 while up."""
        since = self.down_since.get(key)
        return self.clock() - since if since is not None else 0.0


class Floor:
    """Builds the snapshot of the floor and the gateway, cached for ``max_age`` seconds."""

    def __init__(
        self, view: AgentView, latest: Latest, watch: Watch, *, grace: float, max_age: float = 1.0
    ) -> None:
        self.view = view
        self.latest = latest
        self.watch = watch
        self.grace = grace
        self.max_age = max_age
        self.zone = local_zone(view.cfg.timezone)
        self._cached: dict[str, Any] | None = None
        self._at = -math.inf
        self.version = 0  # bumped whenever a new snapshot is built

    def invalidate(self) -> None:
        """The next snapshot is built afresh (an incident changed)."""
        self._at = -math.inf

    def snapshot(self) -> dict[str, Any]:
        """The whole picture, JSON-ready; rebuilt at most once per ``max_age``."""
        now = time.monotonic()
        if self._cached is None or now - self._at >= self.max_age:
            self._cached = self._build()
            self._at = now
            self.version += 1
        return self._cached

    # -- building ------------------------------------------------------------------------------

    def _build(self) -> dict[str, Any]:
        view = self.view
        now_ns = view.incident_clock()
        cfg = view.cfg
        incidents = self.open_incidents(now_ns)
        by_channel: dict[str, dict[str, Any]] = {}
        for inc in incidents:
            for name in inc["channels"]:
                worse = by_channel.get(name)
                if worse is None or _rank(inc) > _rank(worse):
                    by_channel[name] = inc
        channels = [
            self.channel(ch, by_channel.get(ch.name), now_ns)
            for ch in sorted(view.registry.channels.values(), key=_floor_order)
        ]
        return {
            "site": cfg.site,
            "gateway": cfg.gateway,
            "version": __version__,
            "now_ns": now_ns,
            "timezone": str(self.zone),
            "incidents": incidents,
            "channels": channels,
            "context": {k: dict(v) for k, v in sorted(view.context.scopes.items())},
            "health": self.health(),
        }

    def open_incidents(self, now_ns: int) -> list[dict[str, Any]]:
        """Open and acknowledged incidents: not acknowledged first, then the worst, the oldest."""
        manager = self.view.incidents.manager
        shown = [self.incident(inc, now_ns) for inc in manager.open.values() if inc.seq]
        shown.sort(key=lambda i: (i["acknowledged"], -LEVELS[i["level"]], i["opened_ns"]))
        return shown

    def incident(self, inc: Incident, now_ns: int) -> dict[str, Any]:
        """One incident as the page shows it."""
        worst = inc.worst_member()
        channels = {inc.channel} | {key.split("/", 1)[0] for key in inc.members}
        channel = self.view.registry.channels.get(inc.channel)
        return {
            "id": inc.id,
            "label": inc.label,
            "channel": inc.channel,
            "channels": sorted(channels),
            "zone": inc.zone,
            "line": channel.tags.get("line", "") if channel is not None else "",
            "level": inc.level if inc.level in LEVELS else "warn",
            "state": inc.state,
            "acknowledged": inc.state == ACKED,
            "acked_by": inc.acked_by,
            "acked_note": inc.acked_note,
            "acked_ns": inc.acked_ns,
            "opened_ns": inc.opened_ns,
            "cleared_ns": inc.cleared_ns,
            "what": (worst.headline if worst is not None and worst.headline else inc.label),
            "since": since_words(inc.opened_ns, self.zone, max(now_ns, inc.opened_ns)),
            "sentence": inc.sentence,
            "affects": inc.affects,
            "action": inc.action,
            "context": {k: list(v) for k, v in inc.context.items()},
        }

    def channel(self, ch: Channel, incident: dict[str, Any] | None, now_ns: int) -> dict[str, Any]:
        """One channel as the page shows it: value, baseline, band, state and its word."""
        drift = self.view.engine.drift(ch)
        seen = self.latest.values.get(ch.name)
        if incident is not None:
            state = incident["level"]
        elif seen is None:
            state = "nodata"
        else:
            state = "ok"
        acknowledged = incident is not None and incident["acknowledged"]
        word = WORDS[state] + (", acknowledged" if acknowledged else "")
        value_ns, value = seen if seen is not None else (0, math.nan)
        baseline = _baseline(drift)
        return {
            "name": ch.name,
            "label": ch.label,
            "unit": ch.unit,
            "kind": ch.kind,
            "zone": ch.tags.get("zone", ""),
            "line": ch.tags.get("line", ""),
            "station": ch.tags.get("station", ""),
            "value": value if math.isfinite(value) else None,
            "value_text": fmt(value, ch.unit) if seen is not None else "–",
            "value_ns": value_ns,
            "age": duration_words((now_ns - value_ns) / 1e9) + " ago" if seen else "",
            "state": state,
            "word": word,
            "acknowledged": acknowledged,
            "incident": incident["id"] if incident is not None else None,
            "baseline": baseline,
            "band": _band(drift, baseline),
            "readings": ch.readings,
            "watched": ch.watched,
            "context": self.view.context.for_tags(ch.tags),
        }

    def health(self) -> dict[str, Any]:
        """The gateway's own health: sources, spool, InfluxDB, broker, loop, memory."""
        view, watch = self.view, self.watch
        m = view.metrics
        now_wall = time.time_ns()
        sources = [self._source(s, now_wall) for s in view.sources]
        out_rate, in_rate = watch.rates()
        oldest = view.spool.oldest_ns
        fwd = view.forwarder
        influx: dict[str, Any] | None = None
        if view.cfg.influx is not None:
            last = fwd.last_write_ns if fwd is not None else 0
            influx = {
                "url": view.cfg.influx.url,
                "reachable": m.influx_reachable,
                "last_write_ns": last,
                "last_write_age_s": round((now_wall - last) / 1e9, 1) if last else None,
                "forwarded": m.forwarded,
                "errors": m.forward_errors,
                "latency_ms": round(m.forward_latency_ms, 1),
            }
        mqtt = None
        if view.cfg.mqtt is not None:
            mqtt = {
                "broker": f"{view.cfg.mqtt.host}:{view.cfg.mqtt.port}",
                "connected": m.mqtt_connected,
                "messages": m.mqtt_messages,
            }
        samples = list(view.lag.samples)
        if len(samples) >= 20:
            samples.sort()
            lag = {
                "max_ms": round(samples[-1], 1),
                "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 1),
            }
        else:
            lag = {"max_ms": m.loop_lag_max_ms, "p99_ms": m.loop_lag_p99_ms}
        problems = self.problems()
        return {
            "ok": not problems,
            "problems": problems,
            "sources": sources,
            "spool": {
                "backlog_lines": watch.backlog(),
                "pending_bytes": m.spool_pending_bytes,
                "disk_bytes": m.spool_disk_bytes,
                "max_bytes": view.spool.max_bytes,
                "oldest_age_s": round(max(now_wall - oldest, 0) / 1e9, 1) if oldest else 0.0,
                "healthy": view.spool.healthy,
                "disk_full": view.spool.disk_full,
                "in_per_s": round(in_rate, 1),
                "out_per_s": round(out_rate, 1),
                "drain_s": _rounded(watch.drain_s()),
                "dropped": m.spool_dropped,
            },
            "influx": influx,
            "mqtt": mqtt,
            "loop_lag": lag,
            "rss_bytes": rss_bytes(),
            "uptime_s": round(watch.clock() - watch.started, 1),
            "task_restarts": view.supervisor.restarts,
            "readings_in": m.readings_in,
            "decode_errors": m.decode_errors,
        }

    def _source(self, source: object, now_wall: int) -> dict[str, Any]:
        name = str(getattr(source, "name", "?"))
        kind = source_kind(source)
        health = getattr(source, "health", None)
        out: dict[str, Any] = {"name": name, "kind": kind}
        if health is None:  # a simulation: it runs, or it has finished
            finished = bool(getattr(source, "finished", False))
            out.update(
                connected=None,
                word="finished" if finished else "running",
                frames=int(getattr(source, "frames", 0)),
                last_frame_age_s=None,
                decode_errors=0,
                reconnects=0,
                ok=True,
            )
            return out
        last = health.last_frame_ns
        down = self.watch.down_for(f"source:{name}")
        word = (
            "connected"
            if health.connected
            else (f"not connected for {duration_words(down)}" if down >= 60 else "not connected")
        )
        out.update(
            connected=health.connected,
            word=word,
            frames=health.frames,
            last_frame_age_s=round(max(now_wall - last, 0) / 1e9, 1) if last else None,
            decode_errors=health.decode_errors,
            reconnects=health.reconnects,
            ok=health.connected or down < self.grace,
        )
        return out

    def problems(self) -> list[str]:
        """Why the gateway is not healthy (empty when it is): what ``/healthz`` answers 503 for."""
        view, watch, grace = self.view, self.watch, self.grace
        out: list[str] = []
        if view.supervisor.failed:
            out.append(view.supervisor.failed)
        for source in view.sources:
            down = watch.down_for(f"source:{source.name}")
            if down >= grace:
                out.append(
                    f"{source_kind(source)} source {source.name} not connected for {_span(down)}"
                )
        if view.cfg.influx is not None:
            task = view.supervisor.tasks.get("forwarder")
            if task is None or task.done:
                out.append("the forwarder is not running")
            down = watch.down_for("influx")
            if down >= grace:
                out.append(
                    f"InfluxDB has not taken a write for {_span(down)} "
                    f"({watch.backlog():,} lines waiting in the spool)"
                )
        if not view.spool.healthy:
            out.append(
                "the spool cannot write: the disk is full"
                if view.spool.disk_full
                else "the spool cannot write to its disk"
            )
        return out


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else duration_words(seconds)


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _rank(inc: dict[str, Any]) -> tuple[int, bool]:
    return LEVELS[inc["level"]], not inc["acknowledged"]


def _floor_order(ch: Channel) -> tuple[str, str, str, str]:
    return (ch.tags.get("zone", "~"), ch.tags.get("line", ""), ch.tags.get("station", ""), ch.name)


def _baseline(drift: ChannelDrift | None) -> dict[str, Any] | None:
    """The baseline the detectors compare against: locked, else the rolling window once ready."""
    if drift is None:
        return None
    base = drift.baseline
    locked = base.locked
    if locked is not None:
        return {
            "mean": locked.mean if math.isfinite(locked.mean) else None,
            "std": locked.std if math.isfinite(locked.std) else None,
            "source": locked.source,
            "describe": locked.describe(),
            "start_ns": locked.start_ns,
            "end_ns": locked.end_ns,
        }
    rolling = base.rolling
    if rolling.n >= base.spec.min_samples:
        mean, std = rolling.mean(), rolling.std()
        return {
            "mean": mean if math.isfinite(mean) else None,
            "std": std if math.isfinite(std) else None,
            "source": "rolling",
            "describe": base.describe() + (", learning" if base.spec.learn is not None else ""),
            "start_ns": 0,
            "end_ns": 0,
        }
    return {
        "mean": None,
        "std": None,
        "source": "learning",
        "describe": "learning",
        "start_ns": 0,
        "end_ns": 0,
    }


def _band(drift: ChannelDrift | None, baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The band a reading is judged against: the spec band where one is configured (warn
    limits), else the baseline's normal range (mean ± 2σ)."""
    if drift is not None:
        for detector in drift.detectors:
            if isinstance(detector, Limit):
                band = detector.band
                return {
                    "low": band.low_warn,
                    "high": band.high_warn,
                    "what": "spec",
                    "low_alarm": band.low_alarm,
                    "high_alarm": band.high_alarm,
                }
    if baseline is not None and baseline["mean"] is not None and baseline["std"]:
        mean, std = baseline["mean"], baseline["std"]
        return {
            "low": mean - 2 * std,
            "high": mean + 2 * std,
            "what": "normal",
            "low_alarm": None,
            "high_alarm": None,
        }
    return None
