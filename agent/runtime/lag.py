"""Event-loop lag: how late the loop runs a timer, the one figure that shows a blocked loop.

Everything on the event loop (serial and MQTT callbacks, detection, the forwarder) shares one
thread: a call that blocks it for 200 ms delays every reading and every PUBACK by as much. The
monitor sleeps a short tick over and over and records how much later than asked it woke;
the self-metrics report the maximum and the 99th percentile of each interval.
"""

from __future__ import annotations

import asyncio
import time

TICK_S = 0.05
"""How often the loop is sampled; a block shorter than this can hide between two samples."""
MAX_SAMPLES = 10_000  # per interval (a self-metrics interval of 10 min at 20 Hz)


class LoopLag:
    """Samples the event loop's lag; ``take`` returns (max, p99) in ms since the last take."""

    def __init__(self, tick: float = TICK_S) -> None:
        self.tick = tick
        self.samples: list[float] = []
        self.worst_ms = 0.0  # the largest lag ever seen (for tests and the status line)

    async def run(self) -> None:
        """Sample until cancelled."""
        tick = self.tick
        while True:
            before = time.perf_counter()
            await asyncio.sleep(tick)
            lag_ms = max(time.perf_counter() - before - tick, 0.0) * 1000.0
            samples = self.samples
            if len(samples) < MAX_SAMPLES:
                samples.append(lag_ms)
            self.worst_ms = max(self.worst_ms, lag_ms)

    def take(self) -> tuple[float, float]:
        """The maximum and 99th percentile lag (ms) since the last call, then start afresh."""
        samples, self.samples = self.samples, []
        if not samples:
            return 0.0, 0.0
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
        return round(samples[-1], 2), round(p99, 2)
