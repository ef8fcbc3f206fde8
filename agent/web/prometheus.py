"""``/metrics``: the self-metrics and each source's health in the Prometheus text format (0.0.4),
written by hand: a few dozen lines of text do not justify a dependency.

Names are ``driftgate_<field>``; counters (everything docs/schema.md does not mark *gauge*)
end in ``_total``; booleans are 0 or 1. Every series carries ``site`` and ``gateway``, so one
Prometheus can scrape many gateways without relabelling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from agent import __version__
from agent.web.view import AgentView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GAUGES = frozenset(
    {
        "spool_pending_lines",
        "spool_pending_bytes",
        "spool_buffered",
        "spool_disk_bytes",
        "spool_oldest_age_s",
        "spool_healthy",
        "disk_full",
        "forward_latency_ms",
        "influx_reachable",
        "mqtt_connected",
        "broker_dropped",
        "loop_lag_max_ms",
        "loop_lag_p99_ms",
        "incidents_open",
        "channels",
    }
)
"""Fields of ``AgentMetrics`` that are gauges (docs/schema.md marks them *gauge*)."""

SOURCE_GAUGES = frozenset({"connected", "last_frame_ns"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float | bool | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return repr(value) if isinstance(value, float) else str(value)


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], Any]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def metric_name(field: str, *, gauge: bool, prefix: str = "driftgate_") -> str:
    """The Prometheus name of a self-metric field."""
    if field.endswith("_ns"):
        return f"{prefix}{field.removesuffix('_ns')}_timestamp_seconds"
    return f"{prefix}{field}" + ("" if gauge else "_total")


def exposition(view: AgentView, health: Mapping[str, Any], live: Mapping[str, Any]) -> str:
    """The whole page. ``health`` is the status snapshot's health part; ``live`` holds gauges
    measured now (channels, spool_buffered, ...) that the self-metrics only set per interval."""
    base = {"site": view.cfg.site, "gateway": view.cfg.gateway}
    out = _Out()
    out.family(
        "driftgate_info", "gauge", "the agent's version", [({**base, "version": __version__}, 1)]
    )
    out.family(
        "driftgate_healthy",
        "gauge",
        "1 while /healthz answers 200 (sources and the forwarder healthy)",
        [(base, bool(health.get("ok")))],
    )
    fields = {**view.metrics.fields(), **live}
    for field, value in fields.items():
        gauge = field in GAUGES
        out.family(
            metric_name(field, gauge=gauge),
            "gauge" if gauge else "counter",
            f"driftgate_agent field {field} (docs/schema.md)",
            [(base, value)],
        )
    per_source: dict[str, list[tuple[dict[str, str], Any]]] = {}
    for source in view.sources:
        h = getattr(source, "health", None)
        if h is None:
            continue
        for field, value in h.fields().items():
            shown = value / 1e9 if field.endswith("_ns") else value
            per_source.setdefault(field, []).append(({**base, "source": source.name}, shown))
    for field, samples in per_source.items():
        gauge = field in SOURCE_GAUGES
        out.family(
            metric_name(field, gauge=gauge, prefix="driftgate_source_"),
            "gauge" if gauge else "counter",
            f"driftgate_source field {field} (docs/schema.md)",
            samples,
        )
    spool = health.get("spool", {})
    out.family(
        "driftgate_spool_drain_seconds",
        "gauge",
        "seconds until the spool's backlog is "
        "forwarded at the last minute's rates (NaN: it does not shrink)",
        [(base, spool.get("drain_s"))],
    )
    influx = health.get("influx") or {}
    if influx:
        last = influx.get("last_write_ns") or 0
        out.family(
            "driftgate_influx_last_write_timestamp_seconds",
            "gauge",
            "when InfluxDB last took a write (0: not yet since the start)",
            [(base, last / 1e9)],
        )
    out.family(
        "driftgate_uptime_seconds",
        "gauge",
        "seconds since the agent started",
        [(base, health.get("uptime_s", 0.0))],
    )
    out.family(
        "process_resident_memory_bytes",
        "gauge",
        "resident memory of the agent's process",
        [(base, health.get("rss_bytes", 0))],
    )
    return "\n".join(out.lines) + "\n"
