"""Incidents and their deliveries, durable: ``state_dir/incidents.sqlite``.

One SQLite file holds the incidents (so a restart knows what is open and who acknowledged it),
the outbox (every delivery of every notice to every recipient, until it went out), and the
acknowledgements the CLI asks for. Like the spool, every call runs on one worker thread with
one connection: the event loop never waits on the disk. A delivery's ``key`` is unique, so
each notice reaches each recipient of each route exactly once, across crashes and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.backoff import SPOOL_WRITE, Retries
from agent.errors import DriftgateError
from agent.incidents.model import CLOSED, Incident
from agent.logs import get_logger
from agent.store.disk import disk_full_hint, disk_words, error_name, is_disk_full, transaction

log = get_logger("driftgate.incidents")

FILENAME = "incidents.sqlite"
BUSY_TIMEOUT_MS = 5000
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    incident TEXT NOT NULL,
    target TEXT NOT NULL,
    recipient TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    due_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, target, due_ns);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL,
    by TEXT NOT NULL,
    note TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
"""


def store_path(state_dir: Path) -> Path:
    """The incidents file inside a state dir."""
    return Path(state_dir) / FILENAME


class IncidentStoreError(DriftgateError):
    """The incidents file cannot be read or written."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notice on its way to one recipient through one target."""

    id: int
    key: str
    incident: str
    target: str
    recipient: str
    attempts: int
    body: dict[str, Any]
    created_ns: int = 0  # when it was queued (wall clock); 0: unknown (a test notice)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to queue (the outbox makes these from a notice and the routes)."""

    key: str
    incident: str
    target: str
    recipient: str
    due_ns: int
    body: dict[str, Any]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    return conn


class IncidentStore:
    """The agent's side of incidents.sqlite: writes queued on the loop, done on a thread."""

    def __init__(self, path: Path, timezone: str | None = None) -> None:
        self.path = path
        self.timezone = timezone or ""  # the site's, for `driftgate alerts list`; "" = gateway's
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._incidents: dict[str, Incident] = {}
        self._deliveries: list[NewDelivery] = []
        # Marks of deliveries and CLI acknowledgements the file would not take (a full disk):
        # applied with the next write that succeeds, hidden from due() and pending_acks() so
        # nothing is sent or applied twice meanwhile.
        self._marks: dict[int, tuple[int, str, int, str, int]] = {}
        self._acks_done: set[int] = set()
        self.failing_since: float | None = None  # monotonic time of the first failed write
        self.wake = asyncio.Event()  # set when writes wait
        self.written = asyncio.Event()  # set after every write that added deliveries

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> list[Incident]:
        """Open (create) the file; the incidents that are not cleared, and the cleared recent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="driftgate-incidents")
            try:
                self._conn = await self._call(_connect, self.path)
            except sqlite3.Error as exc:
                raise IncidentStoreError(f"cannot open {self.path}: {exc}") from None
        rows = await self._call(self._load)
        return [Incident.from_json(json.loads(body)) for body in rows]

    def _load(self) -> list[str]:
        conn = self._db()
        with contextlib.suppress(sqlite3.Error), transaction(conn):  # only for `alerts list`
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('timezone', ?)", (self.timezone,)
            )
        return [row[0] for row in conn.execute("SELECT body FROM incidents ORDER BY id")]

    async def run(self) -> None:
        """Write what was queued as soon as it is queued (a notice should leave at once). A
        write the disk refuses is kept in memory and tried again on the SPOOL_WRITE backoff."""
        await self.open()
        retries = Retries(SPOOL_WRITE)
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.flush()
            except sqlite3.Error as exc:
                self._failed(exc)
                await asyncio.sleep(retries.next_delay())
                self.wake.set()
                continue
            retries.attempt = 0
            self._recovered()

    async def flush(self) -> None:
        """Write the queued incident states, deliveries and marks in one transaction."""
        incidents, self._incidents = self._incidents, {}
        deliveries, self._deliveries = self._deliveries, []
        marks, acks = dict(self._marks), set(self._acks_done)
        if not incidents and not deliveries and not marks and not acks:
            return
        try:
            await self._call(self._write, list(incidents.values()), deliveries, marks, acks)
        except BaseException:
            # Keep them for the next round; newer states of the same incidents win.
            self._incidents = {**incidents, **self._incidents}
            self._deliveries[:0] = deliveries
            raise
        for row, mark in marks.items():
            if self._marks.get(row) == mark:
                del self._marks[row]
        self._acks_done -= acks
        if deliveries:
            self.written.set()

    def _failed(self, exc: sqlite3.Error) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if is_disk_full(exc, self.path.parent):
            log.error(
                "disk full: cannot write incidents and notices; they wait in memory",
                path=str(self.path),
                error=error_name(exc),
                disk=disk_words(self.path.parent),
                hint=disk_full_hint(self.path.parent),
            )
        else:
            log.error("cannot write incidents and notices; they wait in memory",
                      path=str(self.path), error=str(exc))  # fmt: skip

    def _recovered(self) -> None:
        if self.failing_since is not None:
            down = time.monotonic() - self.failing_since
            self.failing_since = None
            log.info("incidents file writable again", path=str(self.path), down_s=round(down, 1))

    async def _write_or_keep(self, fn: Callable[..., None], *args: object) -> bool:
        """A small write; False when the file refused it (the caller keeps it in memory)."""
        try:
            await self._call(fn, *args)
        except sqlite3.Error as exc:
            self._failed(exc)
            self.wake.set()  # run() retries with the next flush
            return False
        return True

    async def close(self) -> None:
        """Write what is queued and close the file."""
        if self._executor is None:
            return
        try:
            await self.flush()
        finally:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- on the loop ---------------------------------------------------------------------------

    def save(self, incident: Incident) -> None:
        """Queue an incident's new state (a manager listener: never blocks)."""
        self._incidents[incident.id] = incident
        self.wake.set()

    def queue(self, deliveries: Iterable[NewDelivery]) -> None:
        """Queue deliveries (never blocks)."""
        self._deliveries.extend(deliveries)
        self.wake.set()

    async def due(self, target: str, now_ns: int, limit: int = 100) -> list[Delivery]:
        """Pending deliveries of a target whose time has come, oldest first."""
        rows = await self._call(self._due, target, now_ns, limit + len(self._marks))
        return [d for d in rows if d.id not in self._marks][:limit]

    async def done(self, delivery: Delivery) -> None:
        """It went out."""
        await self._mark_soon((delivery.id, "sent", 0, "", 0))

    async def retry(
        self, delivery: Delivery, due_ns: int, error: str, *, tried: bool = True
    ) -> None:
        """It failed (or was not tried): try again at ``due_ns``."""
        await self._mark_soon((delivery.id, "pending", due_ns, error[:500], int(tried)))

    async def give_up(self, delivery: Delivery, error: str) -> None:
        """It failed for good (notify.max_attempts): kept, marked failed, with the reason."""
        await self._mark_soon((delivery.id, "failed", 0, error[:500], 1))

    async def _mark_soon(self, mark: tuple[int, str, int, str, int]) -> None:
        if self._marks or not await self._write_or_keep(self._mark, *mark):
            self._marks[mark[0]] = mark  # in order: after the ones still waiting
            self.wake.set()

    async def next_due(self, target: str, after_ns: int = -1) -> int | None:
        """When the target's next pending delivery falls due (ns), if any; ``after_ns``: the
        next one due later than that (those due already are being held by the target)."""
        return await self._call(self._next_due, target, after_ns)

    async def pending_acks(self) -> list[tuple[int, str, str, str]]:
        """Acknowledgements the CLI asked for: (row id, incident, by, note)."""
        return [a for a in await self._call(self._acks) if a[0] not in self._acks_done]

    async def ack_done(self, row: int) -> None:
        """An acknowledgement from the CLI was applied."""
        if self._acks_done or not await self._write_or_keep(self._ack_done, row):
            self._acks_done.add(row)

    # -- on the thread -------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IncidentStoreError(f"{self.path} is closed")
        return self._conn

    def _write(
        self,
        incidents: Sequence[Incident],
        deliveries: Sequence[NewDelivery],
        marks: dict[int, tuple[int, str, int, str, int]],
        acks: set[int],
    ) -> None:
        conn = self._db()
        now = time.time_ns()
        with transaction(conn):
            conn.executemany(
                "INSERT INTO incidents (id, key, state, updated_ns, body) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
                "updated_ns = excluded.updated_ns, body = excluded.body",
                [(i.id, i.key, i.state, now, json.dumps(i.to_json())) for i in incidents],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries "
                "(key, incident, target, recipient, created_ns, due_ns, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.key, d.incident, d.target, d.recipient, now, d.due_ns, json.dumps(d.body))
                    for d in deliveries
                ],
            )
            for mark in marks.values():
                self._update(conn, *mark)
            conn.executemany("UPDATE acks SET done = 1 WHERE id = ?", [(r,) for r in acks])

    def _due(self, target: str, now_ns: int, limit: int) -> list[Delivery]:
        rows = self._db().execute(
            "SELECT id, key, incident, target, recipient, attempts, body, created_ns "
            "FROM deliveries WHERE state = 'pending' AND target = ? AND due_ns <= ? "
            "ORDER BY id LIMIT ?",
            (target, now_ns, limit),
        )
        return [
            Delivery(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), int(r[7])) for r in rows
        ]

    def _next_due(self, target: str, after_ns: int) -> int | None:
        row = (
            self._db()
            .execute(
                "SELECT MIN(due_ns) FROM deliveries WHERE state = 'pending' AND target = ? "
                "AND due_ns > ?",
                (target, after_ns),
            )
            .fetchone()
        )
        return None if row[0] is None else int(row[0])

    def _mark(self, row: int, state: str, due_ns: int, error: str, tried: int) -> None:
        conn = self._db()
        with transaction(conn):
            self._update(conn, row, state, due_ns, error, tried)

    @staticmethod
    def _update(
        conn: sqlite3.Connection, row: int, state: str, due_ns: int, error: str, tried: int
    ) -> None:
        conn.execute(
            "UPDATE deliveries SET state = ?, due_ns = CASE WHEN ? > 0 THEN ? ELSE due_ns "
            "END, last_error = ?, attempts = attempts + ? WHERE id = ?",
            (state, due_ns, due_ns, error, tried, row),
        )

    def _acks(self) -> list[tuple[int, str, str, str]]:
        rows = self._db().execute(
            "SELECT id, incident, by, note FROM acks WHERE done = 0 ORDER BY id"
        )
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def _ack_done(self, row: int) -> None:
        conn = self._db()
        with transaction(conn):
            conn.execute("UPDATE acks SET done = 1 WHERE id = ?", (row,))

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._executor is None:
            raise IncidentStoreError(f"{self.path} is closed")
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await asyncio.shield(fut)


# -- the CLI's side: read, and ask for an acknowledgement --------------------------------------


def read_incidents(path: Path) -> list[Incident]:
    """Every stored incident, newest first (read-only: safe beside the running agent)."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT body FROM incidents ORDER BY id DESC").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise IncidentStoreError(f"cannot read {path}: {exc}") from None
    return [Incident.from_json(json.loads(r[0])) for r in rows]


def read_timezone(path: Path) -> str | None:
    """The site's time zone the agent last ran with (None: the gateway's own)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'timezone'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # an older file without the table, or none yet
    return row[0] or None if row else None


def read_deliveries(path: Path, incident: str) -> list[dict[str, Any]]:
    """The deliveries of one incident: where each notice went, or why it did not yet."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT target, recipient, state, attempts, last_error, body FROM deliveries "
                "WHERE incident = ? ORDER BY id",
                (incident,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise IncidentStoreError(f"cannot read {path}: {exc}") from None
    return [
        {"target": t, "recipient": r, "state": s, "attempts": a, "last_error": e,
         "transition": json.loads(b).get("transition", "")}
        for t, r, s, a, e, b in rows
    ]  # fmt: skip


def request_ack(path: Path, incident: str, by: str, note: str) -> None:
    """Ask the running agent to acknowledge an incident (it applies it within a second)."""
    try:
        conn = _connect(path)
        try:
            with conn:
                conn.execute(
                    "INSERT INTO acks (incident, by, note, at_ns) VALUES (?, ?, ?, ?)",
                    (incident, by, note, time.time_ns()),
                )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise IncidentStoreError(f"cannot write {path}: {exc}") from None


def is_open(incident: Incident) -> bool:
    """Not cleared (open or acknowledged)."""
    return incident.state != CLOSED
