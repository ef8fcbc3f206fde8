"""Reconnecting a device link: the policy as data, and the one loop that applies it.

A source describes its link (``Link``: open it, wait until it is lost, close it); the
``Reconnector`` owns the loop around it: states, capped exponential backoff with jitter, one
warning per outage (not per attempt) and one recovery line with the downtime.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from enum import Enum
from typing import Protocol

from agent.ingest.frames import SourceHealth
from agent.logs import get_logger

log = get_logger("driftgate.sources.reconnect")

BACKOFF_BASE_S = 0.2  # the first wait after a failed open or a lost link
BACKOFF_FACTOR = 2.0
BACKOFF_CAP_S = 5.0  # the default cap: a device is read again within 5 s of coming back
JITTER = 0.2  # a wait is drawn from [(1 - JITTER) x d, d]: jitter only ever shortens it
# The cap bounds "device back → reading again", so the open itself must fit inside it too:
# the longest wait is the cap minus this headroom (an open of a local port takes milliseconds).
RESUME_HEADROOM_S = 0.25
STABLE_AFTER_S = 2.0  # a link that stayed up this long starts the next outage at the base wait

# What a failed open or a lost link may raise and is worth another try: the device is absent,
# unplugged, busy or not yet permitted (pyserial's SerialException is an OSError). Anything else
# (a bad parameter: ValueError) is a bug or a config error and ends the source.
RETRYABLE: tuple[type[BaseException], ...] = (OSError, ConnectionError, EOFError, TimeoutError)

_HINTS = {
    errno.ENOENT: "no such device: unplugged? use a /dev/serial/by-id/... path",
    errno.EACCES: "permission denied: add the agent's user to the dialout group",
    errno.EBUSY: "port busy: another program has it open",
}


class LinkState(Enum):
    """Where a link is in its life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"


class Link(Protocol):
    """What the reconnector needs of a link."""

    async def open(self) -> None:
        """Open the link; raise one of RETRYABLE if the device is not there (yet)."""
        ...

    async def wait_lost(self) -> BaseException | None:
        """Return when the open link is lost, with the reason (None: closed cleanly)."""
        ...

    async def close(self) -> None:
        """Release the link (also after it was lost); must not raise."""
        ...


def backoff_delay(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based) with a ``cap`` in seconds."""
    longest = cap - min(RESUME_HEADROOM_S, cap / 2)
    delay = min(BACKOFF_BASE_S * BACKOFF_FACTOR ** min(attempt, 32), longest)
    draw = (rng or random).random()
    return delay * (1.0 - JITTER * draw)


def describe(exc: BaseException | None) -> str:
    """A short, stable reason for a log line, with a hint for the common errno values."""
    if exc is None:
        return "closed"
    err = getattr(exc, "errno", None)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    hint = _HINTS.get(err) if isinstance(err, int) else None
    if hint is None and "No such file" in text:
        hint = _HINTS[errno.ENOENT]
    return f"{text} ({hint})" if hint else text


class Reconnector:
    """Keeps one link open for as long as it runs: open, wait until lost, back off, again."""

    def __init__(
        self,
        link: Link,
        *,
        source: str,
        what: str,
        health: SourceHealth,
        cap: float = BACKOFF_CAP_S,
        rng: random.Random | None = None,
    ) -> None:
        self.link = link
        self.source = source
        self.what = what
        self.health = health
        self.cap = cap
        self.rng = rng or random.Random()
        self.state = LinkState.CONNECTING
        self.attempt = 0  # index into the backoff schedule
        self.outages = 0
        self._tries = 0  # failed opens in the current outage
        self._down_since: float | None = None  # monotonic time the current outage began
        self._ever_connected = False

    async def run(self) -> None:
        """Open the link and keep it open until cancelled."""
        try:
            while True:
                self.state = LinkState.CONNECTING
                try:
                    await self.link.open()
                except RETRYABLE as exc:
                    await self.link.close()
                    self._outage(exc)
                    await self._wait()
                    continue
                up_since = time.monotonic()
                self._connected()
                reason = await self.link.wait_lost()
                await self.link.close()
                self.health.connected = False
                if time.monotonic() - up_since >= STABLE_AFTER_S:
                    self.attempt = 0
                self._outage(reason)
                await self._wait()
        finally:
            self.health.connected = False
            await self.link.close()

    def _outage(self, exc: BaseException | None) -> None:
        if self._down_since is not None:
            self._tries += 1
            log.debug("reconnect attempt failed", source=self.source, error=describe(exc))
            return
        self._down_since = time.monotonic()
        self._tries = 0
        self.outages += 1
        event = f"{self.what} lost" if self._ever_connected else f"{self.what} not available"
        log.warning(event, source=self.source, error=describe(exc), retry_max_s=self.cap)

    def _connected(self) -> None:
        self.state = LinkState.CONNECTED
        self.health.connected = True
        if self._down_since is not None:
            downtime = time.monotonic() - self._down_since
            self._down_since = None
            if self._ever_connected:
                self.health.reconnects += 1
            log.info(
                f"{self.what} back",
                source=self.source,
                downtime_s=round(downtime, 2),
                failed_opens=self._tries,
            )
        else:
            log.info(f"{self.what} connected", source=self.source)
        self._ever_connected = True

    async def _wait(self) -> None:
        self.state = LinkState.WAITING
        delay = backoff_delay(self.attempt, self.cap, self.rng)
        self.attempt += 1
        await asyncio.sleep(delay)
