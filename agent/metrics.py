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
    spool_dropped_unwritable: int = 0  # of spool_dropped: lost because the disk refused writes
    spool_buffered: int = 0  # lines in memory waiting for a commit (grows while unwritable)
    spool_disk_bytes: int = 0  # the spool's files on disk (what spool.max_bytes bounds)
    spool_oldest_age_s: float = 0.0  # age of the oldest line waiting in the spool
    spool_healthy: bool = True  # False while the spool cannot commit
    disk_full: bool = False  # the spool cannot commit because its disk is full
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
    incidents_open: int = 0  # incidents not cleared (open or acknowledged)
    notices: int = 0  # incident notices (opened, escalated, …, cleared)
    deliveries: int = 0  # notices delivered to a recipient
    delivery_failures: int = 0  # delivery attempts that failed (each is retried)
    channels: int = 0  # gauge: channels the registry holds (at most input_limits.max_channels)
    channels_refused: int = 0  # readings dropped: their new channel was past the cap
    mqtt_oversized: int = 0  # MQTT messages over mqtt.max_payload, dropped undecoded
    context_refused: int = 0  # context updates refused (malformed, over a cap, unsafe as tags)
    device_time_refused: int = 0  # readings beyond input_limits.max_ahead/max_behind, dead-lettered
    per_channel: dict[str, int] = field(default_factory=dict)

    def fields(self) -> dict[str, float | int | bool]:
        """The scalar metrics, as InfluxDB fields."""
        out = asdict(self)
        out.pop("per_channel")
        return out
