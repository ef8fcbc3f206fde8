"""The simulated source: the demo workshop's physics on an accelerated clock."""

from __future__ import annotations

import asyncio
import time

from agent.pipeline import Pipeline
from agent.reading import Channel
from agent.sim.workshop import Workshop

_TICK_S = 0.05  # wall seconds between bursts of simulated samples


class SimulatedSource:
    """Feeds the workshop's readings at ``speed`` simulated seconds per wall second."""

    def __init__(
        self,
        name: str,
        workshop: Workshop,
        *,
        start: float,
        interval: float,
        speed: float,
        days: float | None,
    ) -> None:
        self.name = name
        self.workshop = workshop
        self.start = start
        self.interval = interval
        self.speed = speed
        self.end = None if days is None else start + days * 86400.0
        self.sim_time = start
        self.frames = 0
        self.finished = False

    def channels(self) -> list[Channel]:
        """The channels this source produces."""
        return self.workshop.channels()

    async def run(self, pipeline: Pipeline) -> None:
        """Produce readings until ``days`` of simulated time have passed (or for ever).

        Run again after a crash, it goes on from where it was, not from the start.
        """
        t = self.sim_time
        wall0 = time.monotonic() - (t - self.start) / self.speed
        ingest = pipeline.ingest
        sample = self.workshop.sample
        while self.end is None or t < self.end:
            due = self.start + (time.monotonic() - wall0) * self.speed
            if self.end is not None:
                due = min(due, self.end)
            while t < due:
                ts_ns = int(t * 1e9)
                for channel, value in sample(t):
                    ingest(channel, ts_ns, value)
                self.frames += 1
                t += self.interval
                self.sim_time = t
            pipeline.process()
            await asyncio.sleep(_TICK_S)
        self.finished = True
