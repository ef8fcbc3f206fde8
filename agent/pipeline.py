"""The hot path: a decoded reading is validated, detected on, and spooled. Nothing here blocks."""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.alerts import AlertEvent
from agent.drift.engine import detect
from agent.metrics import AgentMetrics
from agent.reading import Channel
from agent.spool import Spool

AlertSink = Callable[[AlertEvent], None]


class Pipeline:
    """Takes readings from sources; every accepted reading reaches the spool and the detectors."""

    def __init__(self, spool: Spool, metrics: AgentMetrics, site: str, gateway: str) -> None:
        self.spool = spool
        self.metrics = metrics
        self.site = site
        self.gateway = gateway
        self.sinks: list[AlertSink] = []
        self.clock_ns = 0  # time of the newest reading seen (simulated time in the demo)

    def ingest(self, channel: Channel, ts_ns: int, value: float) -> None:
        """Accept one reading: spool it, run its channel's detectors, emit any alert events."""
        if not math.isfinite(value):
            self.metrics.invalid_readings += 1
            return
        channel.readings += 1
        self.metrics.readings_in += 1
        if ts_ns > self.clock_ns:  # noqa: PLR1730 (cheaper than max() on the hot path)
            self.clock_ns = ts_ns
        self.spool.append(f"{channel.prefix}{value!r} {ts_ns}")
        if channel.detectors:
            events = detect(channel, ts_ns, value)
            if events is not None:
                for event in events:
                    self.alert(event)

    def alert(self, event: AlertEvent) -> None:
        """Record an alert event in the spool and hand it to every sink (console, log, ...)."""
        self.metrics.alerts += 1
        self.spool.append(event.line(self.site, self.gateway))
        for sink in self.sinks:
            sink(event)
