"""The durability boundary: line protocol spooled in SQLite (WAL) until InfluxDB accepts it.

The hot path (`Spool.append`, `Spool.extend`) only appends to a list in memory. A background
task (`Spool.run`) commits that list every ``flush_interval`` seconds, or as soon as
``flush_lines`` lines wait, in one transaction of a few *chunks* (rows of up to
``CHUNK_MAX_LINES`` lines joined by newlines). Every SQLite call runs on one dedicated
thread with one connection, so the event loop never waits on the disk.

Lines are numbered in the order they are appended (``appended_seq``); after each commit
``durable_seq`` says through which number every line is on disk, and ``durable_listeners`` are
told, so that the MQTT link can acknowledge a message only once its lines are committed.

The forwarder reads the oldest chunks (`Spool.read_batch`) and deletes them only after the
server accepted them (`Spool.ack`). Lines the server rejects for good go to a dead-letter
table with the server's reason. When the stored bytes pass ``max_bytes`` the oldest chunks
are deleted, counted (persisted across restarts) and logged: never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from agent.errors import SpoolError
from agent.logs import get_logger
from agent.metrics import AgentMetrics

SPOOL_FILENAME = "spool.sqlite"
CHUNK_MAX_LINES = 500
BUSY_TIMEOUT_MS = 5000
SCHEMA_VERSION = 1
# While the disk refuses writes, lines wait in memory; past this many the oldest are dropped.
MAX_BUFFERED_LINES_ON_FAILURE = 200_000
MAX_DEAD_LETTERS = 100_000
"""Dead letters kept for inspection (``driftgate spool``); beyond it the oldest are deleted and
counted, so a server that rejects everything cannot fill the disk with them."""

_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    n_lines INTEGER NOT NULL,
    n_bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    at_ns INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped_total', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dead_letters_dropped', 0);
"""

_log = get_logger("driftgate.spool")
_T = TypeVar("_T")


def spool_path(state_dir: Path) -> Path:
    """The spool's database file inside ``state_dir``."""
    return Path(state_dir) / SPOOL_FILENAME


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Whole chunks read for sending, oldest first; ack it to delete exactly these chunks."""

    chunk_ids: tuple[int, ...]
    lines: list[str]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds on disk (committed lines only) and its lifetime counters."""

    pending_lines: int
    pending_bytes: int
    chunks: int
    dropped_total: int
    dead_letters: int
    dead_letters_dropped: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One line the server rejected for good, with its HTTP status and message."""

    line: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class _CommitResult:
    committed_lines: int
    counts: SpoolStats
    dropped_lines: int = 0
    dropped_chunks: int = 0
    dropped_first_ns: int = 0
    dropped_last_ns: int = 0


def split_body(body: str, n_lines: int) -> list[str]:
    """Split a chunk body back into its lines (a string field may hold a raw newline)."""
    if body.count("\n") == n_lines - 1:
        return body.split("\n")
    return _split_quoted(body)


def _split_quoted(body: str) -> list[str]:
    """Split on newlines outside string field values (slow path, only for such lines)."""
    lines: list[str] = []
    start = 0
    i = 0
    n = len(body)
    while i < n:
        # measurement and tags: up to the first unescaped space (no raw newline possible)
        while i < n and body[i] not in " \n":
            i += 2 if body[i] == "\\" else 1
        if i < n and body[i] == " ":
            i += 1
            in_string = False
            while i < n:
                c = body[i]
                if in_string:
                    if c == "\\":
                        i += 1
                    elif c == '"':
                        in_string = False
                elif c == '"':
                    in_string = True
                elif c == "\n":
                    break
                i += 1
        lines.append(body[start:i])
        i += 1
        start = i
    return lines


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


class _Store:
    """The SQLite side: one connection, used only from the spool's single worker thread."""

    def __init__(
        self, path: Path, synchronous: str, max_bytes: int, max_dead: int = MAX_DEAD_LETTERS
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.max_bytes = max_bytes
        self.max_dead = max_dead
        self.dead_letters_dropped = 0
        self.conn: sqlite3.Connection | None = None
        self.pending_lines = 0
        self.pending_bytes = 0
        self.chunks = 0
        self.dropped_total = 0
        self.dead_letters = 0
        self.commits = 0

    def counts(self) -> SpoolStats:
        return SpoolStats(
            self.pending_lines,
            self.pending_bytes,
            self.chunks,
            self.dropped_total,
            self.dead_letters,
            self.dead_letters_dropped,
        )

    def open(self) -> SpoolStats:
        what_to_do = (
            f"If the file is damaged, stop driftgate and move it aside "
            f"(mv {self.path} {self.path}.broken): an empty spool is created at the next start, "
            f"and the old file's lines can be recovered with `sqlite3 {self.path}.broken .recover`."
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot create the spool directory {self.path.parent}: {exc}. "
                "Check state_dir and that driftgate's user may write there."
            ) from None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SpoolError(
                f"cannot open the spool {self.path}: {exc}. "
                "Check state_dir and that driftgate's user may write there."
            ) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL was refused")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                conn.close()
                raise SpoolError(
                    f"the spool {self.path} was written by a newer driftgate (schema "
                    f"{version}, this one knows {SCHEMA_VERSION}): upgrade driftgate, or move "
                    "the file aside to start an empty spool."
                )
            conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            lines, size, chunks = conn.execute(
                "SELECT COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), COUNT(*) FROM chunks"
            ).fetchone()
            dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            dead_dropped = conn.execute(
                "SELECT value FROM meta WHERE key = 'dead_letters_dropped'"
            ).fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"cannot open the spool {self.path}: {exc}. {what_to_do}") from None
        self.conn = conn
        self.pending_lines, self.pending_bytes, self.chunks = int(lines), int(size), int(chunks)
        self.dropped_total = int(dropped[0])
        self.dead_letters = int(dead)
        self.dead_letters_dropped = int(dead_dropped[0])
        return self.counts()

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise SpoolError(f"the spool {self.path} is closed")
        return self.conn

    def commit(self, lines: Sequence[str], chunk_lines: int) -> _CommitResult:
        if not lines:
            return _CommitResult(0, self.counts())
        conn = self._conn()
        now = time.time_ns()
        rows = []
        for i in range(0, len(lines), chunk_lines):
            part = lines[i : i + chunk_lines]
            body = "\n".join(part).encode()
            rows.append((now, len(part), len(body), body))
        added_bytes = sum(r[2] for r in rows)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO chunks (created_ns, n_lines, n_bytes, body) VALUES (?, ?, ?, ?)",
                    rows,
                )
                self.pending_lines += len(lines)
                self.pending_bytes += added_bytes
                self.chunks += len(rows)
                result = self._enforce_cap(conn, len(lines))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._recount(conn)
            raise SpoolError(
                f"cannot write to the spool {self.path}: {exc}. Check free disk space and "
                "permissions under state_dir; the lines are kept in memory and retried."
            ) from None
        self.commits += 1
        return result

    def _enforce_cap(self, conn: sqlite3.Connection, committed: int) -> _CommitResult:
        excess = self.pending_bytes - self.max_bytes
        if excess <= 0:
            return _CommitResult(committed, self.counts())
        last_id = 0
        freed = dropped = n_chunks = 0
        first_ns = last_ns = 0
        for chunk_id, created_ns, n_lines, n_bytes in conn.execute(
            "SELECT id, created_ns, n_lines, n_bytes FROM chunks ORDER BY id"
        ):
            if freed >= excess:
                break
            if n_chunks == 0:
                first_ns = created_ns
            last_id, last_ns = chunk_id, created_ns
            freed += n_bytes
            dropped += n_lines
            n_chunks += 1
        conn.execute("DELETE FROM chunks WHERE id <= ?", (last_id,))
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (dropped,))
        self.pending_bytes -= freed
        self.pending_lines -= dropped
        self.chunks -= n_chunks
        self.dropped_total += dropped
        return _CommitResult(committed, self.counts(), dropped, n_chunks, first_ns, last_ns)

    def _recount(self, conn: sqlite3.Connection) -> None:
        try:
            lines, size, chunks = conn.execute(
                "SELECT COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), COUNT(*) FROM chunks"
            ).fetchone()
            dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
        except sqlite3.Error:
            return
        self.pending_lines, self.pending_bytes, self.chunks = int(lines), int(size), int(chunks)
        self.dropped_total = int(dropped[0])

    def read(self, max_lines: int, after: int = 0) -> SpoolBatch | None:
        conn = self._conn()
        ids: list[int] = []
        lines: list[str] = []
        try:
            for chunk_id, n_lines, body in conn.execute(
                "SELECT id, n_lines, body FROM chunks WHERE id > ? ORDER BY id", (after,)
            ):
                if ids and len(lines) + n_lines > max_lines:
                    break
                ids.append(chunk_id)
                lines.extend(split_body(bytes(body).decode(), n_lines))
                if len(lines) >= max_lines:
                    break
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the spool {self.path}: {exc}") from None
        if not ids:
            return None
        return SpoolBatch(tuple(ids), lines)

    def ack(self, chunk_ids: Sequence[int], dead: Sequence[DeadLetter]) -> SpoolStats:
        conn = self._conn()
        marks = ",".join("?" * len(chunk_ids))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                lines, size, chunks = conn.execute(
                    "SELECT COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), COUNT(*) "
                    f"FROM chunks WHERE id IN ({marks})",
                    tuple(chunk_ids),
                ).fetchone()
                conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", tuple(chunk_ids))
                trimmed = self._insert_dead(conn, dead)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(
                f"cannot delete sent lines from the spool {self.path}: {exc}"
            ) from None
        self.pending_lines -= int(lines)
        self.pending_bytes -= int(size)
        self.chunks -= int(chunks)
        self._count_dead(len(dead), trimmed)
        return self.counts()

    def _insert_dead(self, conn: sqlite3.Connection, dead: Sequence[DeadLetter]) -> int:
        """Store dead letters, deleting the oldest beyond max_dead; how many were deleted."""
        now = time.time_ns()
        conn.executemany(
            "INSERT INTO dead_letters (at_ns, status, reason, line) VALUES (?, ?, ?, ?)",
            [(now, d.status, d.reason, d.line) for d in dead],
        )
        excess = self.dead_letters + len(dead) - self.max_dead
        if excess <= 0:
            return 0
        conn.execute(
            "DELETE FROM dead_letters WHERE id IN "
            "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
            (excess,),
        )
        conn.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'dead_letters_dropped'", (excess,)
        )
        return excess

    def _count_dead(self, added: int, trimmed: int) -> None:
        self.dead_letters += added - trimmed
        self.dead_letters_dropped += trimmed

    def dead_letter(self, dead: Sequence[DeadLetter]) -> SpoolStats:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                trimmed = self._insert_dead(conn, dead)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write dead letters to the spool {self.path}: {exc}") from None
        self._count_dead(len(dead), trimmed)
        return self.counts()

    def dead_letter_rows(self) -> list[tuple[int, str, str]]:
        conn = self._conn()
        return [
            (int(s), str(r), str(line))
            for s, r, line in conn.execute(
                "SELECT status, reason, line FROM dead_letters ORDER BY id"
            )
        ]

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


class Spool:
    """Durable FIFO of line-protocol lines: sync appends, async batched commits, ack on send."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1 << 30,
        synchronous: Literal["normal", "full"] = "normal",
        flush_interval: float = 0.2,
        flush_lines: int = 2000,
        max_dead_letters: int = MAX_DEAD_LETTERS,
        metrics: AgentMetrics | None = None,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise SpoolError(f"spool synchronous must be 'normal' or 'full', not {synchronous!r}")
        if max_bytes <= 0 or flush_lines <= 0 or flush_interval <= 0:
            raise SpoolError("spool max_bytes, flush_lines and flush_interval must be positive")
        self.path = Path(path)
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.committed = asyncio.Event()
        """Set after every commit that added lines; the forwarder clears it and waits."""
        self._flush_interval = flush_interval
        self._flush_lines = flush_lines
        self._chunk_lines = min(flush_lines, CHUNK_MAX_LINES)
        self._store = _Store(self.path, _SYNCHRONOUS[synchronous], max_bytes, max_dead_letters)
        self._told_dead_cap = False
        self._buffer: list[str] = []
        self._full = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._failing = False
        self._lost_in_memory = 0
        self.durable_listeners: list[Callable[[int], None]] = []
        """Called on the event loop with ``durable_seq`` each time a commit advances it."""
        self._seq = 0  # lines appended by this process: the newest line's number
        self._durable = 0
        self._swaps = 0  # buffers taken by a commit so far
        self._refilled_at = 0  # ``_swaps`` when a failed commit last put its lines back

    # -- hot path ----------------------------------------------------------------------------
    def append(self, line: str) -> None:
        """Queue one line for the next commit (never blocks)."""
        self._buffer.append(line)
        self._seq += 1
        self.metrics.spool_appended += 1
        if len(self._buffer) >= self._flush_lines:
            self._full.set()

    def extend(self, lines: Iterable[str]) -> None:
        """Queue several lines for the next commit (never blocks)."""
        before = len(self._buffer)
        self._buffer.extend(lines)
        added = len(self._buffer) - before
        self._seq += added
        self.metrics.spool_appended += added
        if len(self._buffer) >= self._flush_lines:
            self._full.set()

    @property
    def buffered(self) -> int:
        """Lines appended but not committed yet."""
        return len(self._buffer)

    @property
    def appended_seq(self) -> int:
        """The number of the newest line appended (lines are numbered 1, 2, … per process)."""
        return self._seq

    @property
    def durable_seq(self) -> int:
        """Every line numbered up to this one is committed (or dropped and counted)."""
        return self._durable

    def commit_soon(self) -> None:
        """Commit now rather than at the next ``flush_interval`` (acknowledgements wait)."""
        self._full.set()

    @property
    def commits(self) -> int:
        """Transactions that committed new lines since this spool was opened."""
        return self._store.commits

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> SpoolStats:
        """Open (or create) the database and load its counters; idempotent."""
        async with self._open_lock:
            if self._closed:
                raise SpoolError(f"the spool {self.path} is closed")
            if not self._opened:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="driftgate-spool")
                try:
                    counts = await self._call(self._store.open)
                except BaseException:
                    self._executor.shutdown(wait=False)
                    self._executor = None
                    raise
                self._opened = True
                self._publish(counts)
                if counts.pending_lines:
                    self.committed.set()
                _log.info(
                    "spool opened",
                    path=str(self.path),
                    pending_lines=counts.pending_lines,
                    pending_bytes=counts.pending_bytes,
                    dropped_total=counts.dropped_total,
                    dead_letters=counts.dead_letters,
                )
        return self._store.counts()

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Commit buffered lines every flush_interval, or at once when flush_lines wait."""
        await self.open()
        while True:
            try:
                async with asyncio.timeout(self._flush_interval):
                    await self._full.wait()
            except TimeoutError:
                pass
            self._full.clear()
            # a failed commit is logged once and its lines stay buffered for the next round
            with contextlib.suppress(SpoolError):
                await self.flush()

    async def flush(self) -> None:
        """Commit everything appended so far (and wait for commits already under way)."""
        await self.open()
        lines, self._buffer = self._buffer, []
        self._swaps += 1
        fut = self._submit(self._store.commit, lines, self._chunk_lines)
        fut.add_done_callback(partial(self._after_commit, lines))
        fut.add_done_callback(partial(self._advance_durable, self._swaps, self._seq))
        await asyncio.shield(fut)

    async def close(self) -> None:
        """Commit what is buffered, then close the database; idempotent."""
        if self._closed:
            return
        try:
            if self._opened:
                await self.flush()
        finally:
            self._closed = True
            if self._executor is not None:
                executor, self._executor = self._executor, None
                fut = asyncio.get_running_loop().run_in_executor(executor, self._store.close)
                await asyncio.shield(fut)
                executor.shutdown(wait=False)
            if self._buffer:
                _log.error(
                    "spool closed with uncommitted lines",
                    path=str(self.path),
                    lines=len(self._buffer),
                )

    # -- forwarder side ----------------------------------------------------------------------
    async def read_batch(self, max_lines: int, after: int = 0) -> SpoolBatch | None:
        """The oldest whole chunks, up to max_lines lines (at least one chunk); None if empty.

        ``after``: only chunks with a larger id (the forwarder reads ahead of a batch in flight).
        """
        await self.open()
        return await self._call(self._store.read, max_lines, after)

    async def ack(self, batch: SpoolBatch, dead: Sequence[DeadLetter] = ()) -> None:
        """Delete exactly the batch's chunks, storing its rejected lines in the same transaction."""
        await self.open()
        fut = self._submit(self._store.ack, batch.chunk_ids, tuple(dead))
        fut.add_done_callback(self._after_counts)
        await asyncio.shield(fut)

    async def dead_letter(self, lines: list[str], status: int, reason: str) -> None:
        """Store lines the server rejected for good, with its status and message."""
        await self.open()
        dead = tuple(DeadLetter(line, status, reason) for line in lines)
        fut = self._submit(self._store.dead_letter, dead)
        fut.add_done_callback(self._after_counts)
        await asyncio.shield(fut)

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead-lettered line, oldest first."""
        await self.open()
        rows = await self._call(self._store.dead_letter_rows)
        return [DeadLetter(line, status, reason) for status, reason, line in rows]

    async def stats(self) -> SpoolStats:
        """Committed lines and bytes waiting, chunk count, lines dropped, dead letters."""
        await self.open()
        return await self._call(self._store.counts)

    # -- internals ---------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        if self._executor is None:
            raise SpoolError(f"the spool {self.path} is closed")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        # shield: a cancelled caller must not cancel SQLite work queued behind it
        return await asyncio.shield(self._submit(fn, *args))

    def _publish(self, counts: SpoolStats) -> None:
        self.metrics.spool_pending_lines = counts.pending_lines
        self.metrics.spool_pending_bytes = counts.pending_bytes
        self.metrics.spool_dropped = counts.dropped_total + self._lost_in_memory
        self.metrics.dead_letters_dropped = counts.dead_letters_dropped
        if counts.dead_letters_dropped and not self._told_dead_cap:
            self._told_dead_cap = True
            _log.warning(
                "dead-letter table full: deleting the oldest dead letters",
                path=str(self.path),
                max_dead_letters=self._store.max_dead,
                dropped_total=counts.dead_letters_dropped,
                hint="InfluxDB keeps refusing lines: see `driftgate spool` for its reasons",
            )

    def _after_counts(self, fut: asyncio.Future[SpoolStats]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._publish(fut.result())

    def _after_commit(self, lines: list[str], fut: asyncio.Future[_CommitResult]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self._keep_for_retry(lines, exc)
            return
        result = fut.result()
        if self._failing:
            self._failing = False
            _log.info("spool writable again", path=str(self.path))
        if not result.committed_lines:
            return
        self.metrics.spool_committed += result.committed_lines
        self._publish(result.counts)
        if result.dropped_lines:
            _log.warning(
                "spool full: dropped oldest lines",
                path=str(self.path),
                lines=result.dropped_lines,
                chunks=result.dropped_chunks,
                spooled_from=_iso(result.dropped_first_ns),
                spooled_to=_iso(result.dropped_last_ns),
                max_bytes=self._store.max_bytes,
                dropped_total=result.counts.dropped_total,
                hint="InfluxDB has not taken data for a long time; raise spool.max_bytes "
                "or fix the connection",
            )
        if result.counts.pending_lines:
            self.committed.set()

    def _advance_durable(self, swap: int, seq: int, fut: asyncio.Future[_CommitResult]) -> None:
        """After a commit (callbacks run in commit order: one worker thread): a commit takes
        the whole buffer, so it made every line up to ``seq`` durable, unless a commit that
        failed before it was taken put older lines back into the buffer."""
        if fut.cancelled() or fut.exception() is not None:
            self._refilled_at = self._swaps  # later buffers hold the lines put back
            return
        if swap <= self._refilled_at or seq <= self._durable:
            return
        self._durable = seq
        for listener in self.durable_listeners:
            listener(seq)

    def _keep_for_retry(self, lines: list[str], exc: BaseException | None) -> None:
        self._buffer[:0] = lines
        excess = len(self._buffer) - MAX_BUFFERED_LINES_ON_FAILURE
        if excess > 0:
            del self._buffer[:excess]
            self._lost_in_memory += excess
            self.metrics.spool_dropped += excess
            _log.error(
                "spool unwritable and memory buffer full: dropped oldest lines",
                path=str(self.path),
                lines=excess,
            )
        if not self._failing:
            self._failing = True
            _log.error("spool commit failed", path=str(self.path), error=str(exc))


def inspect(path: Path, dead_limit: int = 10) -> tuple[SpoolStats, int | None, list[DeadLetter]]:
    """Read a spool without writing to it (a running agent may own it): its stats, the
    oldest pending line's spool time in ns (None when empty) and the newest dead letters."""
    if not path.exists():
        raise SpoolError(f"no spool at {path}: check state_dir (or -c / --state-dir)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool {path}: {exc}") from None
    try:
        chunks, lines, size, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), "
            "MIN(created_ns) FROM chunks"
        ).fetchone()
        dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
        dead_dropped = conn.execute(
            "SELECT value FROM meta WHERE key = 'dead_letters_dropped'"
        ).fetchone()
        (dead_count,) = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        rows = conn.execute(
            "SELECT status, reason, line FROM dead_letters ORDER BY id DESC LIMIT ?",
            (dead_limit,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot read the spool {path}: {exc}") from None
    finally:
        conn.close()
    stats = SpoolStats(
        pending_lines=int(lines),
        pending_bytes=int(size),
        chunks=int(chunks),
        dropped_total=int(dropped[0]) if dropped else 0,
        dead_letters=int(dead_count),
        dead_letters_dropped=int(dead_dropped[0]) if dead_dropped else 0,
    )
    dead = [DeadLetter(line, int(status), reason) for status, reason, line in rows]
    return stats, oldest, dead
