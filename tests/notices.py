"""Real incident notices for the delivery tests, and the outbox run around a target.

The notices come from the real ``IncidentManager`` fed with detector events, so what a test
mails or posts reads exactly as on a gateway (the sentence in Europe/Paris time, the action,
the lots made meanwhile). ``Running`` is the agent's delivery path without the rest of the
agent: the store (``state_dir/incidents.sqlite``), its writer task, the outbox's watcher and
one worker per target; it can be stopped and started again on the same state dir (a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.backoff import Backoff
from agent.config import config_from_dict
from agent.config.models import AgentConfig
from agent.context import ContextStore
from agent.drift.alerts import AlertEvent, Level
from agent.incidents.manager import IncidentManager
from agent.incidents.model import Notice
from agent.incidents.store import Delivery, IncidentStore, store_path
from agent.metrics import AgentMetrics
from agent.notify.outbox import Outbox, Target
from agent.notify.router import Router
from agent.reading import Channel

PARIS = ZoneInfo("Europe/Paris")
# Tue 17 Nov 2026, 09:42 in Paris: the incidents of the examples open then.
OPENED_AT = int(datetime(2026, 11, 17, 9, 42, tzinfo=PARIS).timestamp() * 1e9)
FAST = Backoff(base=0.05, factor=2.0, cap=0.4)
"""Retries within a test: 50 ms doubling to 0.4 s."""

CHANNELS = {
    "edge_paint.humidity": ("Edge paint room humidity", "%RH", "edge paint drying", "edge_paint"),
    "cutting.humidity": ("Cutting room humidity", "%RH", "leather moisture at cutting", "cutting"),
    "sewing.m05.tension": ("Sewing machine M05 thread tension", "cN", "seam strength", "sewing"),
}


def agent_config(state_dir: Path, notify: dict[str, Any], **extra: Any) -> AgentConfig:
    """A site's config with these notify targets and routes (validated like a file)."""
    data: dict[str, Any] = {
        "site": "atelier-nord",
        "gateway": "gw1",
        "timezone": "Europe/Paris",
        "state_dir": str(state_dir),
        "incidents": {
            "actions": {
                "climate": "check the dehumidifier and that the doors are shut",
                "tension": "check the thread path and the tension discs",
            }
        },
        "notify": notify,
        **extra,
    }
    return config_from_dict(data, env={})


def channel(name: str) -> Channel:
    """One of the workshop's channels."""
    label, unit, affects, zone = CHANNELS[name]
    kind = "tension" if unit == "cN" else "climate"
    return Channel(
        name=name,
        measurement=kind,
        field="value",
        unit=unit,
        kind=kind,
        label=label,
        affects=affects,
        tags={"zone": zone},
    )


class Notices:
    """Incidents opened, escalated and cleared through the real manager; its notices kept."""

    def __init__(self, cfg: AgentConfig, clock: Callable[[], int] | None = None) -> None:
        self.now = OPENED_AT
        self.context = ContextStore(None)
        self.manager = IncidentManager(cfg, self.context, clock or (lambda: self.now), zone=PARIS)
        self.notices: list[Notice] = []
        self.manager.listeners.append(self.notices.append)

    def lot(self, zone: str, lot: str) -> None:
        """The lot made in a zone from now on."""
        self.context.scopes[f"zone:{zone}"] = {"lot": lot}
        self.manager.context_changed()

    def event(
        self,
        name: str,
        level: Level,
        *,
        value: float,
        baseline: float,
        minutes_since: float = 120.0,
        transition: str = "raised",
    ) -> Notice:
        """A baseline-shift event on a channel; the notice it made (if any)."""
        before = len(self.notices)
        delta = value - baseline
        label, unit, affects, _ = CHANNELS[name]
        since = self.now - int(minutes_since * 60e9)
        utc = datetime.fromtimestamp(since / 1e9, UTC).strftime("%Y-%m-%d %H:%M")
        prefix = {Level.WARN: "WARN: ", Level.ALARM: "ALARM: "}.get(level, "")
        message = (  # as the baseline_shift detector words it
            f"{prefix}{label} is now at {value:.1f} {unit} (24 h average), {abs(delta):.1f} "
            f"{unit} {'above' if delta >= 0 else 'below'} its baseline {baseline:.1f} {unit} "
            f"(learned 2026-11-02 to 2026-11-09), since {utc} UTC. This affects {affects}."
        )
        self.manager(
            AlertEvent(
                ts_ns=self.now,
                channel=channel(name),
                detector="baseline_shift",
                transition=transition,
                level=level,
                value=value,
                baseline=baseline,
                delta=delta,
                rate_per_h=math.nan,
                since_ns=since,
                baseline_note="learned 2026-11-02 to 2026-11-09",
                message=message,
            )
        )
        assert len(self.notices) == before + 1, "the event made no notice"
        return self.notices[-1]


def delivery(
    notice: Notice,
    key_suffix: str = "supervisors:email",
    recipient: str = "",
    target: str = "email",
    created_ns: int = 0,
) -> Delivery:
    """A notice as the outbox hands it to a target (no store involved)."""
    body = notice.body()
    body.update(route=key_suffix.split(":", maxsplit=1)[0], recipient=recipient)
    key = f"{notice.incident['id']}:{notice.seq}:{key_suffix}"
    return Delivery(0, key, str(notice.incident["id"]), target, recipient, 0, body, created_ns)


class Recording:
    """A target wrapper that keeps what ``send`` answered each round (for a test to wait on)."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = inner.name
        self.rounds: list[list[BaseException | None]] = []
        self.changed = asyncio.Event()

    async def send(self, deliveries: Sequence[Delivery]) -> Sequence[BaseException | None]:
        results = await self.inner.send(deliveries)
        self.rounds.append(list(results))
        self.changed.set()
        return results

    async def close(self) -> None:
        await self.inner.close()

    async def until(
        self, check: Callable[[list[BaseException | None]], bool], within: float = 30.0
    ) -> list[BaseException | None]:
        """Wait for a round whose results pass ``check`` (from now on)."""
        seen = len(self.rounds)
        async with asyncio.timeout(within):
            while True:
                for results in self.rounds[seen:]:
                    if check(results):
                        return results
                seen = len(self.rounds)
                self.changed.clear()
                await self.changed.wait()


class Running:
    """The delivery path of an agent: store, outbox, one worker per target."""

    def __init__(
        self, cfg: AgentConfig, targets: Sequence[Target], backoff: Backoff = FAST
    ) -> None:
        self.store = IncidentStore(store_path(cfg.state_dir))
        self.router = Router(cfg.notify, PARIS, time.time_ns)
        self.outbox = Outbox(self.store, self.router, targets, AgentMetrics(), backoff=backoff)
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        await self.store.open()
        self.tasks.append(asyncio.create_task(self.store.run(), name="store"))
        self.tasks.append(asyncio.create_task(self.outbox.watch(), name="watch"))
        for name in self.outbox.targets:
            self.tasks.append(asyncio.create_task(self.outbox.work(name), name=f"notify:{name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()
        await self.outbox.close()

    def tell(self, notice: Notice) -> None:
        """What the manager does with a notice: route it into the outbox."""
        self.outbox(notice)

    def poke(self) -> None:
        """Wake the workers as a write would (after a test moved a target's clock)."""
        self.store.written.set()

    async def states(self) -> dict[str, str]:
        """Every delivery's state by key, as stored."""

        def read() -> dict[str, str]:
            import sqlite3

            conn = sqlite3.connect(store_path_of(self.store))
            try:
                return dict(conn.execute("SELECT key, state FROM deliveries ORDER BY id"))
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def until_sent(self, count: int, within: float = 30.0) -> dict[str, str]:
        """Wait until ``count`` deliveries are sent; their states."""
        async with asyncio.timeout(within):
            while True:
                states = await self.states()
                if sum(s == "sent" for s in states.values()) >= count:
                    return states
                await asyncio.sleep(0.05)


def store_path_of(store: IncidentStore) -> Path:
    """The file of a store."""
    return store.path
