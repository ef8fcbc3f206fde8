"""The gateway's wall clock in one place, and what the agent does when it jumps.

Readings from devices without a clock of their own are stamped with the wall clock when they
arrive (``wall_ns``). That clock can jump: NTP steps it (a Raspberry Pi has no battery clock
and boots at the time it last shut down, then NTP steps it forward, sometimes by days), or
somebody sets the date. Every reading of the clock is compared with the monotonic clock, so a
step is noticed at the first stamp after it, before that reading is ingested, and the
listeners (the agent) apply the policy:

- **Readings keep the wall clock's time**, jump or not: a stamp is never invented. Frames of
  one read (or reads closer than a millisecond) get 1 ns apart so no point overwrites another
  in InfluxDB; after a step back the stamps simply go back.
- **Stepped back**: the channels whose newest reading is now in the future would skip every
  new reading as late; their detector windows start afresh from the new time (their locked
  baselines and the alerts in force stay).
- **Stepped forward**: the time skipped is not silence: stale detectors move their last
  reading forward by the step, so no "no reading for 15 min" alert comes of it. (Other
  windows see the step as a gap in the data, which it is.)
- Either way one warning names the step and ``clock_steps`` counts it in the self-metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STEP_THRESHOLD_NS = 2_000_000_000
"""A disagreement between the wall and monotonic clocks this large counts as a step (NTP slews
smaller corrections gradually)."""

StepListener = Callable[[int, int], None]
"""``listener(step_ns, now_ns)``: the wall clock just stepped by step_ns (negative: back)."""


def read_wall() -> int:
    """The operating system's wall clock (tests replace this to step it)."""
    return time.time_ns()


class WallClock:
    """The wall clock, watched for steps against the monotonic clock."""

    def __init__(self, threshold_ns: int = STEP_THRESHOLD_NS) -> None:
        self.threshold_ns = threshold_ns
        self.listeners: list[StepListener] = []
        self._wall = read_wall()
        self._mono = time.monotonic_ns()

    def now(self) -> int:
        """Now, ns since the epoch; tells the listeners first if the clock stepped."""
        wall, mono = read_wall(), time.monotonic_ns()
        step = (wall - self._wall) - (mono - self._mono)
        self._wall, self._mono = wall, mono
        if step >= self.threshold_ns or step <= -self.threshold_ns:
            for listener in self.listeners:
                listener(step, wall)
        return wall


WALL = WallClock()
"""The one wall clock of the process."""


def wall_ns() -> int:
    """Now, nanoseconds since the epoch, from the gateway's wall clock (see WallClock)."""
    return WALL.now()
