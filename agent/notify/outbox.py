"""The outbox: every notice, routed, stored, then delivered by its target, retried until it
went out. A slow or dead endpoint holds only its own target's worker: ingestion, detection
and the other targets never wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from agent.backoff import Backoff, Retries
from agent.incidents.model import Notice
from agent.incidents.store import Delivery, IncidentStore
from agent.logs import get_logger
from agent.metrics import AgentMetrics
from agent.notify.router import Router

log = get_logger("driftgate.notify")

DELIVERY = Backoff(base=2.0, factor=2.0, cap=300.0, jitter=0.5)
"""A failed delivery: 2 s doubling to 5 min; an endpoint back after an outage gets the backlog
within five minutes."""
BATCH = 50  # deliveries one target takes per round


class NotTried(Exception):
    """A delivery a target left for the next round (an earlier one to the same place failed,
    and notices must arrive in order)."""


class NotYet(NotTried):
    """A delivery a target holds back on purpose until ``until_ns`` (an e-mail batch window is
    still open). Nothing is written: it stays due, so the target is offered it again, with
    whatever joined it meanwhile, at ``until_ns`` or when new deliveries arrive; after a
    restart the same happens from the outbox as stored."""

    def __init__(self, reason: str, until_ns: int) -> None:
        super().__init__(reason)
        self.until_ns = until_ns


class Target(Protocol):
    """A way notices reach people (a webhook, e-mail, a chat service, a tower light)."""

    name: str

    async def send(self, deliveries: Sequence[Delivery]) -> Sequence[BaseException | None]:
        """Send these (in order); one result per delivery: None when it went out."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Outbox:
    """Routes notices into the store and runs one delivery worker per target."""

    def __init__(
        self,
        store: IncidentStore,
        router: Router,
        targets: Sequence[Target],
        metrics: AgentMetrics,
        *,
        max_attempts: int | None = None,
        backoff: Backoff = DELIVERY,
    ) -> None:
        self.store = store
        self.router = router
        self.targets = {t.name: t for t in targets}
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._wake = {name: asyncio.Event() for name in self.targets}

    def __call__(self, notice: Notice) -> None:
        """A manager listener: route the notice and queue its deliveries (never blocks)."""
        self.metrics.notices += 1
        if not notice.people:
            return
        deliveries = [d for d in self.router.deliveries(notice) if d.target in self.targets]
        if deliveries:
            self.store.queue(deliveries)

    async def watch(self) -> None:
        """Wake the workers whenever new deliveries were written."""
        while True:
            await self.store.written.wait()
            self.store.written.clear()
            for event in self._wake.values():
                event.set()

    async def work(self, name: str) -> None:
        """Deliver a target's due deliveries, oldest first, until cancelled."""
        target = self.targets[name]
        wake = self._wake[name]
        retries = Retries(self.backoff)
        down_since: float | None = None
        while True:
            wake.clear()  # a write from now on wakes a sleep below
            now = time.time_ns()
            due = await self.store.due(name, now, BATCH)
            if not due:
                await self._sleep_until_due(name, wake)
                continue
            results = await target.send(due)
            failed = False
            held_until: int | None = None
            retry_at = time.time_ns()
            for delivery, error in zip(due, results, strict=True):
                if error is None:
                    await self.store.done(delivery)
                    self.metrics.deliveries += 1
                    continue
                if isinstance(error, NotYet):
                    until = error.until_ns
                    held_until = until if held_until is None else min(held_until, until)
                    continue
                if isinstance(error, NotTried):
                    await self.store.retry(delivery, retry_at, str(error), tried=False)
                    continue
                failed = True
                self.metrics.delivery_failures += 1
                text = f"{type(error).__name__}: {error}"
                if self.max_attempts is not None and delivery.attempts + 1 >= self.max_attempts:
                    await self.store.give_up(delivery, text)
                    log.error("notice not delivered, given up", target=name,
                              incident=delivery.incident, attempts=delivery.attempts + 1,
                              error=text)  # fmt: skip
                    continue
                wait = retries.next_delay()
                retry_at = time.time_ns() + int(wait * 1e9)
                await self.store.retry(delivery, retry_at, text)
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(f"notice delivery to {name} failing: retrying", target=name,
                                error=text, retry_in_s=round(wait, 1))  # fmt: skip
            if failed:
                # Nothing overtakes what failed: notices queued meanwhile wait behind it (a
                # batch held for another recipient may go when its window closes).
                wake_at = retry_at if held_until is None else min(retry_at, held_until)
                await asyncio.sleep(max((wake_at - time.time_ns()) / 1e9, 0.0))
                continue
            retries.up()
            if down_since is not None:
                log.info(f"notice delivery to {name} works again", target=name,
                         down_s=round(time.monotonic() - down_since, 1))  # fmt: skip
                down_since = None
            if held_until is not None and all(isinstance(e, NotYet) for e in results):
                # Only held ones are due: offering them again before their time would spin.
                await self._sleep_until_due(name, wake, held_until, after_ns=now)

    async def _sleep_until_due(
        self, name: str, wake: asyncio.Event, until_ns: int | None = None, after_ns: int = -1
    ) -> None:
        """Until the next delivery falls due (or ``until_ns``), or new ones are written."""
        due = await self.store.next_due(name, after_ns)
        if until_ns is not None:
            due = until_ns if due is None else min(due, until_ns)
        timeout = None if due is None else max((due - time.time_ns()) / 1e9, 0.0)
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Release every target's connections."""
        for target in self.targets.values():
            try:
                await target.close()
            except Exception:
                log.exception("closing a notice target failed", target=target.name)
