"""Reconnecting a device link: the one loop that applies the reconnect policy.

A source describes its link (``Link``: open it, wait until it is lost, close it); the
``Reconnector`` owns the loop around it: states, capped exponential backoff with jitter
(``agent.backoff.serial_policy``: a device is read again within ``reconnect_max`` of coming
back), one warning per outage (not per attempt) and one recovery line with the downtime.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from enum import Enum
from typing import Protocol

from agent.backoff import SERIAL_RECONNECT_MAX_S, Retries, serial_policy
from agent.ingest.frames import SourceHealth
from agent.logs import get_logger

log = get_logger("driftgate.sources.reconnect")

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
        cap: float = SERIAL_RECONNECT_MAX_S,
        rng: random.Random | None = None,
    ) -> None:
        self.link = link
        self.source = source
        self.what = what
        self.health = health
        self.cap = cap  # reconnect_max: the bound on "device back → reading again"
        self.retries = Retries(serial_policy(cap), rand=(rng or random.Random()).random)
        self.state = LinkState.CONNECTING
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
                self.retries.up()
                self._connected()
                reason = await self.link.wait_lost()
                await self.link.close()
                self.health.connected = False
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
        await asyncio.sleep(self.retries.next_delay())
