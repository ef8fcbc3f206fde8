"""How long to wait before trying again: one retry policy as data, and the counter that walks it.

A ``Backoff`` is capped exponential growth (``base * factor**n``, at most ``cap``) with jitter
that only ever shortens a wait: it is drawn from ``[(1 - jitter) * d, d]``, so the cap is a
real bound and ``jitter=1.0`` is "full jitter" (anywhere up to ``d``). A server's requested
minimum (HTTP ``Retry-After``) wins over the drawn wait, up to ``max_server_wait``.
``Retries`` counts the attempts of one outage and starts over at the base wait once a link
has stayed up for ``stable_after``.

The policies of the agent's retry loops are the constants below; the two whose cap is
configured are built from the config value (``FORWARDER.with_cap(influx.max_backoff)``,
``serial_policy(sources[].reconnect_max)``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

__all__ = [
    "FORWARDER",
    "FULL_JITTER",
    "LOGIN_LOCKOUT",
    "MQTT",
    "SERIAL",
    "SERIAL_RECONNECT_MAX_S",
    "SERIAL_RESUME_HEADROOM_S",
    "SPOOL_WRITE",
    "STATUS_LISTEN",
    "TASK_RESTART",
    "Backoff",
    "Draw",
    "Retries",
    "serial_policy",
]

Draw = Callable[[], float]
"""A uniform random draw in [0, 1) (``random.random``; tests pass a fixed one)."""

FULL_JITTER = 1.0
"""``jitter`` for waits drawn from anywhere in (0, d]: clients spread over the whole window."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """A retry policy: capped exponential waits, jitter that only shortens, a server's minimum."""

    base: float
    """Seconds before the first retry (attempt 0)."""
    factor: float
    """Each further attempt multiplies the wait by this (1.0: a constant wait)."""
    cap: float
    """The longest wait in seconds, jitter included (a server's minimum may exceed it)."""
    jitter: float = 0.0
    """The fraction of a wait that is random: drawn from [(1 - jitter) * d, d]."""
    max_server_wait: float = 3600.0
    """A server's requested minimum wait is honoured up to this many seconds."""
    stable_after: float = 0.0
    """Seconds a link must stay up for its next outage to start at ``base`` again (Retries)."""

    def __post_init__(self) -> None:
        values = (self.base, self.factor, self.cap, self.jitter, self.max_server_wait)
        if not all(math.isfinite(v) for v in (*values, self.stable_after)):
            raise ValueError(f"backoff values must be finite: {self}")
        if self.base <= 0 or self.cap <= 0:
            raise ValueError(f"backoff base and cap must be positive: {self}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1 (waits must not shrink): {self}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1]: {self}")
        if self.max_server_wait < 0 or self.stable_after < 0:
            raise ValueError(f"backoff max_server_wait and stable_after must be >= 0: {self}")

    def nominal(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (0-based) before jitter: base * factor**n, capped."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        try:
            return min(self.cap, self.base * self.factor**attempt)
        except OverflowError:  # a long outage: the power left the float range long after the cap
            return self.cap

    def delay(
        self, attempt: int, *, server_min: float | None = None, rand: Draw = random.random
    ) -> float:
        """Seconds to wait before retry ``attempt``, never less than a server's minimum (capped)."""
        wait = self.nominal(attempt) * (1.0 - self.jitter * rand())
        if server_min is not None:
            wait = max(wait, min(server_min, self.max_server_wait))
        return wait

    def with_cap(self, cap: float) -> Backoff:
        """This policy with the longest wait set from the config."""
        return replace(self, cap=cap)


@dataclass(slots=True)
class Retries:
    """The attempt count of one retry loop over a Backoff; starts over after a stable period."""

    policy: Backoff
    rand: Draw = random.random
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0
    """How many waits this outage has had so far: the index into the policy's schedule."""
    _up_since: float | None = field(default=None, init=False, repr=False)

    def up(self) -> None:
        """The link is up (again); if it stays up ``stable_after``, the next outage starts over."""
        self._up_since = self.clock()

    def next_delay(self, server_min: float | None = None) -> float:
        """Seconds to wait before the next try; counts the attempt."""
        if self._up_since is not None:
            # Checked when the link is lost rather than when it comes up, so a link that
            # connects and drops at once (flapping) keeps growing its waits up to the cap.
            if self.clock() - self._up_since >= self.policy.stable_after:
                self.attempt = 0
            self._up_since = None
        wait = self.policy.delay(self.attempt, server_min=server_min, rand=self.rand)
        self.attempt += 1
        return wait


FORWARDER = Backoff(base=0.5, factor=2.0, cap=60.0, jitter=FULL_JITTER, max_server_wait=3600.0)
"""InfluxDB writes: full jitter, since many gateways may retry against one server; its
``Retry-After`` is honoured up to an hour. The cap is ``influx.max_backoff`` (with_cap)."""

MQTT = Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.25, stable_after=30.0)
"""The MQTT connection: 0.5 s doubling up to 30 s, 25 % jitter so gateways do not reconnect in
step. A connection dropped within 30 s (a client-id clash, a broker that kicks us) does not
restart at 0.5 s, so a flapping link reconnects about once per cap, not twice a second."""

SERIAL_RECONNECT_MAX_S = 5.0
"""The default of ``sources[].reconnect_max``: a device is read again within 5 s of returning."""

SERIAL_RESUME_HEADROOM_S = 0.25
"""Room left inside reconnect_max for opening the port (a local open takes milliseconds)."""


def serial_policy(reconnect_max: float) -> Backoff:
    """The reconnect policy of a serial device that must be read again within reconnect_max."""
    # The bound is "device back → reading again", so the longest wait is reconnect_max less the
    # time the open itself may take (never more than half of it, for very short bounds).
    cap = reconnect_max - min(SERIAL_RESUME_HEADROOM_S, reconnect_max / 2)
    return Backoff(base=0.2, factor=2.0, cap=cap, jitter=0.2, stable_after=2.0)


SERIAL = serial_policy(SERIAL_RECONNECT_MAX_S)
"""Serial and other device links at the default reconnect_max: 0.2 s doubling, 20 % jitter."""

TASK_RESTART = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.5, stable_after=600.0)
"""A crashed task of the agent (agent/runtime/supervisor.py): 1 s doubling up to 30 s; a task
that ran ten minutes before it crashed starts over at 1 s."""

SPOOL_WRITE = Backoff(base=0.25, factor=2.0, cap=5.0, jitter=0.2)
"""A spool write that failed (disk full, I/O error): the next commit of the lines held in
memory, and the forwarder's next try to delete a batch InfluxDB took. 0.25 s doubling to 5 s:
never a tight loop of failing commits, and writing again within 5 s of space returning."""

STATUS_LISTEN = Backoff(base=5.0, factor=2.0, cap=60.0, jitter=0.2)
"""The status page's listening socket while its address is taken or missing (another program
on the port, an interface not up yet): tried again, never a crash of the agent for it."""

LOGIN_LOCKOUT = Backoff(base=30.0, factor=2.0, cap=900.0)
"""Logins on the status page after LOGIN_FAILURES failed tries from one address or for one
account: refused for 30 s, doubling to 15 min (a 4-digit PIN would otherwise fall in minutes)."""
