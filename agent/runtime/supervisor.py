"""The supervisor: every long-running task of the agent is owned here, and none can die unseen.

A task that raises is logged once with its traceback and started again after a backoff. A
task that keeps failing (``max_failures`` crashes within ``window`` seconds) makes the
supervisor give up: ``wait`` returns the reason and the agent shuts down with a non-zero exit,
so systemd restarts the whole process rather than leave it running half-dead. A task may also
be finite (a bounded simulation): it then simply ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from agent.backoff import TASK_RESTART, Backoff, Retries
from agent.logs import get_logger

log = get_logger("driftgate.supervisor")

MAX_FAILURES = 5
"""Crashes of one task within FAILURE_WINDOW that end the agent."""
FAILURE_WINDOW = 600.0


@dataclass(slots=True)
class Supervised:
    """One owned task: how to start it, whether it may end, and its crash record."""

    name: str
    start: Callable[[], Awaitable[None]]
    retries: Retries
    finite: bool = False  # may end on its own (a bounded simulation); else ending is a fault
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    done: bool = False


class Supervisor:
    """Starts, watches and restarts the agent's tasks; stops them in the order asked."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        backoff: Backoff = TASK_RESTART,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.backoff = backoff
        self.tasks: dict[str, Supervised] = {}
        self.failed: str | None = None  # why the supervisor gave up
        self._changed = asyncio.Event()

    @property
    def restarts(self) -> int:
        """Restarts of all tasks so far (a self-metric)."""
        return sum(s.restarts for s in self.tasks.values())

    def start(
        self, name: str, start: Callable[[], Awaitable[None]], *, finite: bool = False
    ) -> None:
        """Own and start a task; ``start`` is called again for each restart."""
        if name in self.tasks and not self.tasks[name].done:
            raise ValueError(f"task {name!r} is already supervised")
        spec = Supervised(name, start, Retries(self.backoff), finite)
        self.tasks[name] = spec
        spec.task = asyncio.create_task(self._guard(spec), name=name)

    async def _guard(self, spec: Supervised) -> None:
        while True:
            spec.retries.up()
            try:
                await spec.start()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The task's name is in the event text: identical lines are summarised per burst.
                log.exception(f"task {spec.name} crashed", task=spec.name, restarts=spec.restarts)
            else:
                if spec.finite:
                    spec.done = True
                    self._changed.set()
                    return
                log.error(
                    f"task {spec.name} ended unexpectedly", task=spec.name, restarts=spec.restarts
                )
            now = time.monotonic()
            crashes = spec.crashes
            crashes.append(now)
            while crashes and now - crashes[0] > self.window:
                crashes.popleft()
            if len(crashes) >= self.max_failures:
                self.failed = (
                    f"task {spec.name} failed {len(crashes)} times within "
                    f"{self.window:g} s; giving up so that the service manager restarts driftgate"
                )
                log.critical("agent giving up", task=spec.name, reason=self.failed)
                spec.done = True
                self._changed.set()
                return
            delay = spec.retries.next_delay()
            log.warning(f"task {spec.name} restarting", task=spec.name, in_s=round(delay, 2))
            await asyncio.sleep(delay)
            spec.restarts += 1

    async def wait(self, stop: asyncio.Event, finite: Iterable[str] = ()) -> str | None:
        """Return when ``stop`` is set (None), when the supervisor gave up (the reason), or
        when every task named in ``finite`` has ended on its own (None)."""
        names = list(finite)
        while True:
            if self.failed is not None:
                return self.failed
            if stop.is_set():
                return None
            if names and all(self.tasks[n].done for n in names):
                return None
            self._changed.clear()
            stopper = asyncio.ensure_future(stop.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({stopper, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (stopper, changed):
                    waiter.cancel()
                await asyncio.gather(stopper, changed, return_exceptions=True)

    def may_end(self, name: str) -> None:
        """From now on the task may return on its own (asked to stop gracefully): its end is
        neither a fault nor a reason to start it again."""
        spec = self.tasks.get(name)
        if spec is not None:
            spec.finite = True

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The running asyncio task of a supervised name (None once stopped)."""
        spec = self.tasks.get(name)
        return spec.task if spec is not None else None

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Cancel these tasks (all when None) and wait until they have ended."""
        chosen = (
            [self.tasks[n] for n in names if n in self.tasks]
            if names is not None
            else list(self.tasks.values())
        )
        tasks = [s.task for s in chosen if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for spec in chosen:
            spec.task = None
            spec.done = True

    def names(self, prefix: str = "") -> list[str]:
        """The supervised task names starting with ``prefix``."""
        return [n for n in self.tasks if n.startswith(prefix)]
