"""Self-metrics: counters the pipeline bumps, written as `driftgate_agent` points."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class AgentMetrics:
    """Counters and gauges of one agent run (also what the demo's summary prints)."""

    readings_in: int = 0
    invalid_readings: int = 0
    late_readings: int = 0
    decode_errors: int = 0
    alerts: int = 0
    spool_appended: int = 0
    spool_committed: int = 0
    spool_pending_lines: int = 0
    spool_pending_bytes: int = 0
    spool_dropped: int = 0
    forwarded: int = 0
    forward_batches: int = 0
    forward_errors: int = 0
    forward_retries: int = 0
    dead_letters: int = 0
    forward_latency_ms: float = 0.0
    influx_reachable: bool = False
    mqtt_connected: bool = False
    mqtt_messages: int = 0
    mqtt_unacked: int = 0  # messages whose PUBACK waits for the spool's commit (gauge)
    broker_dropped: int = 0  # the broker's $SYS/broker/publish/messages/dropped (cumulative)
    dead_letters_dropped: int = 0  # oldest dead letters deleted at spool.max_dead_letters
    events_dropped: int = 0  # alert events no longer kept in memory (all are in the spool)
    loop_lag_max_ms: float = 0.0  # event-loop lag over the last self-metrics interval
    loop_lag_p99_ms: float = 0.0
    task_restarts: int = 0  # crashed tasks the supervisor restarted
    clock_steps: int = 0  # wall-clock steps seen (NTP corrections of more than a second)
    per_channel: dict[str, int] = field(default_factory=dict)

    def fields(self) -> dict[str, float | int | bool]:
        """The scalar metrics, as InfluxDB fields."""
        out = asdict(self)
        out.pop("per_channel")
        return out
