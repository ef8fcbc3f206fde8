"""The durability boundary: line protocol spooled in SQLite (WAL) until InfluxDB accepts it.

The hot path (`Spool.append`, `Spool.extend`) only appends to a list in memory. A background
task (`Spool.run`) commits that list every ``flush_interval`` seconds, or as soon as
``flush_lines`` lines wait, in transactions of a few *chunks* (rows of up to
``CHUNK_MAX_LINES`` lines joined by newlines). Every SQLite call runs on one dedicated
thread with one connection, so the event loop never waits on the disk.

Lines are numbered in the order they are appended (``appended_seq``); after each commit
``durable_seq`` says through which number every line is on disk, and ``durable_listeners`` are
told, so that the MQTT link can acknowledge a message only once its lines are committed.

The forwarder reads the oldest chunks (`Spool.read_batch`) and deletes them only after the
server accepted them (`Spool.ack`). Lines the server rejects for good go to a dead-letter
table with the server's reason.

``max_bytes`` bounds the spool's files on disk, not only the lines in them: the database's
pages in use, with room kept for the write-ahead log (checkpointed and truncated at a size set
from the cap) and its index. Every write transaction ends within it by deleting the oldest
chunks, which are counted (persisted across restarts) and logged: never silently.

When the disk refuses writes (full, or an I/O error) the spool is *failing*
(`Spool.healthy`, `Spool.outage`): lines stay in memory up to ``max_buffered``, beyond which the
oldest are dropped and counted; commits are tried again on the ``SPOOL_WRITE`` backoff, and the
first that succeeds ends the outage with one line saying how long it lasted and what it cost.
Listeners (the agent's alert) hear of both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from agent.backoff import SPOOL_WRITE, Retries
from agent.errors import DiskFullError, SpoolError
from agent.logs import get_logger
from agent.metrics import AgentMetrics
from agent.store.disk import disk_full_hint, disk_words, error_name, is_disk_full, transaction

SPOOL_FILENAME = "spool.sqlite"
CHUNK_MAX_LINES = 500
BUSY_TIMEOUT_MS = 5000
SCHEMA_VERSION = 1
MAX_BUFFERED_LINES_ON_FAILURE = 200_000
"""While the disk refuses writes, lines wait in memory; past this many the oldest are dropped
and counted (``spool_dropped_unwritable``)."""
MAX_DEAD_LETTERS = 100_000
"""Dead letters kept for inspection (``driftgate spool``); beyond it the oldest are deleted and
counted, so a server that rejects everything cannot fill the disk with them."""
MIN_MAX_BYTES = 512 * 1024
"""The smallest cap the spool can keep (the WAL's room and one transaction must fit in it)."""

SLICE_FRACTION = 16
"""One transaction writes at most ``max_bytes / SLICE_FRACTION`` of lines (within
SLICE_MIN_BYTES..SLICE_MAX_BYTES); the WAL is checkpointed when it passes half of that "slice"
and truncated to one slice when it restarts."""
SLICE_MIN_BYTES = 64 * 1024
SLICE_MAX_BYTES = 4 * 1024 * 1024
WAL_SLICES = 3
"""Slices of the cap kept for the WAL: a transaction that deletes the oldest chunks to make room
for a slice of new lines writes up to about two slices of pages, on top of the half slice that
may wait for the checkpoint. The database's pages in use get the rest (less SHM_BYTES)."""
SHM_BYTES = 32 * 1024
"""The WAL index (``spool.sqlite-shm``): 32 KiB per 4096 WAL pages; the WAL here stays far below."""
_SIDE_FILES = ("-wal", "-shm")

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
_Row = tuple[int, int, int, bytes]  # created_ns, n_lines, n_bytes, body


def spool_path(state_dir: Path) -> Path:
    """The spool's database file inside ``state_dir``."""
    return Path(state_dir) / SPOOL_FILENAME


def slice_bytes(max_bytes: int) -> int:
    """The most line bytes one transaction writes, and the WAL's checkpoint size, for a cap."""
    return min(max(max_bytes // SLICE_FRACTION, SLICE_MIN_BYTES), SLICE_MAX_BYTES)


def disk_usage(path: Path) -> int:
    """Bytes the spool's files take: the database, its WAL and the WAL index."""
    total = 0
    for name in (path, *(path.with_name(path.name + s) for s in _SIDE_FILES)):
        with contextlib.suppress(OSError):
            total += os.stat(name).st_size
    return total


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
    oldest_ns: int = 0  # when the oldest waiting chunk was committed (0: none waits)
    disk_bytes: int = 0  # the files on disk: database, WAL, WAL index


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One line the server rejected for good, with its HTTP status and message."""

    line: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Drop:
    """Chunks the cap deleted: how many lines, and when the first and last were spooled."""

    lines: int
    chunks: int
    first_ns: int
    last_ns: int


@dataclass(frozen=True, slots=True)
class _WriteResult:
    counts: SpoolStats
    committed_lines: int = 0
    drop: _Drop | None = None
    error: SpoolError | None = None  # a commit stopped part-way: lines after committed_lines
    redeemed: int = 0  # lines the cap counted as dropped while in flight, then acked


@dataclass(slots=True)
class SpoolOutage:
    """A stretch of time in which the spool could not write: since when, why, what it cost."""

    error: SpoolError
    disk_full: bool
    started_ns: int  # wall clock, for the alert's times
    started: float  # monotonic
    held_lines: int = 0  # lines in memory when it began
    retries: int = 0  # commits tried again since
    dropped_lines: int = 0  # lines dropped from memory at max_buffered
    ended: float | None = None  # monotonic; set when a write succeeded again
    written_lines: int = 0  # lines that waited in memory and were written when it ended

    @property
    def down_s(self) -> float:
        """Seconds it lasted (so far)."""
        end = self.ended if self.ended is not None else time.monotonic()
        return end - self.started


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
        self.slice = slice_bytes(max_bytes)
        # Room for the WAL and its index; the database's pages in use must fit in the rest.
        self.budget = max_bytes - WAL_SLICES * self.slice - SHM_BYTES
        self.max_dead = max_dead
        self.page_size = 4096
        self.dead_letters_dropped = 0
        self.conn: sqlite3.Connection | None = None
        self.pending_lines = 0
        self.pending_bytes = 0
        self.chunks = 0
        self.dropped_total = 0
        self.dead_letters = 0
        self.oldest_ns = 0
        self.disk_bytes = 0
        self.commits = 0
        self.inflight: set[int] = (
            set()
        )  # chunks read for sending and not acked: the cap spares them
        self.inflight_dropped: dict[int, int] = {}  # in flight, deleted by the cap: id -> lines
        self._txn_inflight_dropped: dict[int, int] = {}
        self._drops: list[_Drop] = []  # deleted by the cap in the transaction under way
        self._unreported: list[_Drop] = []  # deleted by committed transactions, not logged yet

    def counts(self) -> SpoolStats:
        return SpoolStats(
            self.pending_lines,
            self.pending_bytes,
            self.chunks,
            self.dropped_total,
            self.dead_letters,
            self.dead_letters_dropped,
            self.oldest_ns,
            self.disk_bytes,
        )

    def _load(self, counts: SpoolStats) -> None:
        """Put the counters back to ``counts`` (what a rolled-back transaction left)."""
        self.pending_lines = counts.pending_lines
        self.pending_bytes = counts.pending_bytes
        self.chunks = counts.chunks
        self.dropped_total = counts.dropped_total
        self.dead_letters = counts.dead_letters
        self.dead_letters_dropped = counts.dead_letters_dropped
        self.oldest_ns = counts.oldest_ns

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
            if version < SCHEMA_VERSION:  # an existing spool opens without a write (full disk)
                conn.executescript(
                    f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            # The WAL is truncated to one slice when it restarts, and checkpointed whenever it
            # passes half a slice: it is part of the disk max_bytes bounds (SQLite's default,
            # 1000 pages never truncated, kept a 4 MB WAL beside a 1 MiB cap).
            conn.execute(f"PRAGMA journal_size_limit = {self.slice}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, self.slice // 2 // self.page_size)}")
            with contextlib.suppress(sqlite3.Error):  # a WAL left large by an older run
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            lines, size, chunks = conn.execute(
                "SELECT COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), COUNT(*) FROM chunks"
            ).fetchone()
            dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            dead_dropped = conn.execute(
                "SELECT value FROM meta WHERE key = 'dead_letters_dropped'"
            ).fetchone()
            oldest = self._oldest(conn)
        except sqlite3.Error as exc:
            conn.close()
            if is_disk_full(exc, self.path):
                raise DiskFullError(
                    f"disk full: cannot open the spool {self.path}: {error_name(exc)}; "
                    f"{disk_words(self.path)}. {disk_full_hint(self.path)}."
                ) from None
            raise SpoolError(f"cannot open the spool {self.path}: {exc}. {what_to_do}") from None
        self.conn = conn
        self.pending_lines, self.pending_bytes, self.chunks = int(lines), int(size), int(chunks)
        self.dropped_total = int(dropped[0])
        self.dead_letters = int(dead)
        self.dead_letters_dropped = int(dead_dropped[0])
        self.oldest_ns = oldest
        self.disk_bytes = disk_usage(self.path)
        return self.counts()

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise SpoolError(f"the spool {self.path} is closed")
        return self.conn

    # -- writing -------------------------------------------------------------------------------
    def _write(self, what: str, body: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``body`` in one write transaction that ends within the cap; on failure the
        counters are those of what SQLite kept, and the error names a full disk as such."""
        conn = self._conn()
        before = self.counts()
        self._drops = []
        self._txn_inflight_dropped = {}
        try:
            with transaction(conn):
                body(conn)
                self._fit(conn)
        except sqlite3.Error as exc:
            self._load(before)
            raise self._error(what, exc) from None
        except BaseException:
            self._load(before)
            raise
        self._unreported += self._drops
        self.inflight_dropped.update(self._txn_inflight_dropped)
        self.disk_bytes = disk_usage(self.path)

    def _error(self, what: str, exc: sqlite3.Error) -> SpoolError:
        if is_disk_full(exc, self.path):
            return DiskFullError(
                f"disk full: cannot {what} the spool {self.path}: {error_name(exc)}; "
                f"{disk_words(self.path)}"
            )
        return SpoolError(
            f"cannot {what} the spool {self.path}: {error_name(exc)}. Check the disk under "
            "state_dir (`dmesg` for I/O errors) and that driftgate's user may write there"
        )

    def commit(self, lines: Sequence[str], chunk_lines: int) -> _WriteResult:
        """Write lines in order, in transactions of at most one slice of bytes each; a failed
        transaction stops the rest (``error``), the ones before it stay committed."""
        if not lines:
            return _WriteResult(self.counts())
        now = time.time_ns()
        rows: list[_Row] = []
        for i in range(0, len(lines), chunk_lines):
            self._chunk(rows, now, lines[i : i + chunk_lines])
        committed = 0
        error: SpoolError | None = None
        for group in self._transactions(rows):
            try:
                self._write("write to", partial(self._insert, group))
            except SpoolError as exc:
                error = exc
                break
            committed += sum(r[1] for r in group)
            self.commits += 1
        return _WriteResult(self.counts(), committed, self._take_drop(), error)

    def _chunk(self, rows: list[_Row], now: int, part: Sequence[str]) -> None:
        """Append ``part`` as one chunk, or as several if it is over half a slice of bytes
        (long lines): a transaction's size, and so the WAL's, must not follow line length."""
        body = "\n".join(part).encode()
        if len(body) > self.slice // 2 and len(part) > 1:
            mid = len(part) // 2
            self._chunk(rows, now, part[:mid])
            self._chunk(rows, now, part[mid:])
            return
        rows.append((now, len(part), len(body), body))

    def _transactions(self, rows: list[_Row]) -> Iterable[list[_Row]]:
        """Consecutive rows, grouped so that no group passes one slice (at least one row)."""
        group: list[_Row] = []
        size = 0
        for row in rows:
            if group and size + row[2] > self.slice:
                yield group
                group, size = [], 0
            group.append(row)
            size += row[2]
        if group:
            yield group

    def _insert(self, rows: list[_Row], conn: sqlite3.Connection) -> None:
        # Make room first, so the new rows reuse the freed pages instead of growing the file.
        self._fit(conn, incoming=sum(self._pages(r[2]) for r in rows) * self.page_size)
        conn.executemany(
            "INSERT INTO chunks (created_ns, n_lines, n_bytes, body) VALUES (?, ?, ?, ?)", rows
        )
        if self.chunks == 0:
            self.oldest_ns = rows[0][0]
        self.pending_lines += sum(r[1] for r in rows)
        self.pending_bytes += sum(r[2] for r in rows)
        self.chunks += len(rows)

    def _pages(self, n_bytes: int) -> int:
        """Pages a chunk of n_bytes takes (overflow pages hold page_size - 4 bytes each)."""
        return n_bytes // (self.page_size - 4) + 2

    def _live_bytes(self, conn: sqlite3.Connection) -> int:
        """The database's pages in use (its free pages are reused before the file grows)."""
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def _fit(self, conn: sqlite3.Connection, incoming: int = 0) -> None:
        """Delete the oldest chunks until the pages in use (plus ``incoming`` bytes about to be
        written) fit the budget; counted in meta's dropped_total.

        Chunks the forwarder is sending are spared while others can go: deleted and counted as
        dropped, they could still arrive. If they must go too, they are remembered, and an ack
        that finds them gone takes them off the dropped count again (they did arrive).
        """
        spare = True
        while self.chunks:
            excess = self._live_bytes(conn) + incoming - self.budget
            if excess <= 0:
                return
            spared = tuple(self.inflight) if spare else ()
            others = f"id NOT IN ({','.join('?' * len(spared))})" if spared else "1"
            freed = lines = n_bytes = n = 0
            first_ns = last_ns = last_id = 0
            cur = conn.execute(
                f"SELECT id, created_ns, n_lines, n_bytes FROM chunks WHERE {others} ORDER BY id",
                spared,
            )
            try:
                for chunk_id, created_ns, chunk_lines, chunk_bytes in cur:
                    if n == 0:
                        first_ns = created_ns
                    last_id, last_ns = chunk_id, created_ns
                    freed += self._pages(chunk_bytes) * self.page_size
                    lines += chunk_lines
                    n_bytes += chunk_bytes
                    n += 1
                    if chunk_id in self.inflight:
                        self._txn_inflight_dropped[chunk_id] = chunk_lines
                    if freed >= excess:
                        break
            finally:
                cur.close()
            if n == 0:
                if not spare:
                    return
                spare = False  # only chunks in flight are left
                continue
            conn.execute(f"DELETE FROM chunks WHERE id <= ? AND {others}", (last_id, *spared))
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (lines,))
            self.pending_bytes -= n_bytes
            self.pending_lines -= lines
            self.chunks -= n
            self.dropped_total += lines
            self.oldest_ns = self._oldest(conn)
            self._drops.append(_Drop(lines, n, first_ns, last_ns))

    @staticmethod
    def _oldest(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT created_ns FROM chunks ORDER BY id LIMIT 1").fetchone()
        return int(row[0]) if row is not None else 0

    def _take_drop(self) -> _Drop | None:
        drops, self._unreported = self._unreported, []
        if not drops:
            return None
        return _Drop(
            sum(d.lines for d in drops),
            sum(d.chunks for d in drops),
            drops[0].first_ns,
            drops[-1].last_ns,
        )

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
        # A read from the start means nothing older is in flight any more (the forwarder reads
        # ahead with ``after`` only while a batch is in flight).
        if after == 0:
            self.inflight = set(ids)
            self.inflight_dropped.clear()  # never acked: they did not arrive, dropped it is
        else:
            self.inflight.update(ids)
        if not ids:
            return None
        return SpoolBatch(tuple(ids), lines)

    def ack(self, chunk_ids: Sequence[int], dead: Sequence[DeadLetter]) -> _WriteResult:
        marks = ",".join("?" * len(chunk_ids))
        # Chunks the cap deleted while they were being sent: they arrived after all.
        redeemed = sum(self.inflight_dropped.get(i, 0) for i in chunk_ids)

        def body(conn: sqlite3.Connection) -> None:
            lines, size, chunks = conn.execute(
                "SELECT COALESCE(SUM(n_lines), 0), COALESCE(SUM(n_bytes), 0), COUNT(*) "
                f"FROM chunks WHERE id IN ({marks})",
                tuple(chunk_ids),
            ).fetchone()
            conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", tuple(chunk_ids))
            if redeemed:
                conn.execute(
                    "UPDATE meta SET value = value - ? WHERE key = 'dropped_total'", (redeemed,)
                )
                self.dropped_total -= redeemed
            trimmed = self._insert_dead(conn, dead)
            self.pending_lines -= int(lines)
            self.pending_bytes -= int(size)
            self.chunks -= int(chunks)
            self.oldest_ns = self._oldest(conn)
            self._count_dead(len(dead), trimmed)

        self._write("delete sent lines from", body)
        self.inflight.difference_update(chunk_ids)
        for i in chunk_ids:
            self.inflight_dropped.pop(i, None)
        return _WriteResult(self.counts(), drop=self._take_drop(), redeemed=redeemed)

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

    def dead_letter(self, dead: Sequence[DeadLetter]) -> _WriteResult:
        def body(conn: sqlite3.Connection) -> None:
            self._count_dead(len(dead), self._insert_dead(conn, dead))

        self._write("write dead letters to", body)
        return _WriteResult(self.counts(), drop=self._take_drop())

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


OutageListener = Callable[[SpoolOutage], None]


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
        if max_bytes < MIN_MAX_BYTES:
            raise SpoolError(
                f"spool max_bytes must be at least {MIN_MAX_BYTES} bytes, not {max_bytes}: the "
                "cap includes SQLite's write-ahead log; raise spool.max_bytes"
            )
        self.path = Path(path)
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.committed = asyncio.Event()
        """Set after every commit that added lines; the forwarder clears it and waits."""
        self.max_buffered = MAX_BUFFERED_LINES_ON_FAILURE
        """Lines kept in memory while the spool cannot write; beyond, the oldest are dropped."""
        self.outage: SpoolOutage | None = None
        """The write failure under way (None while writes succeed)."""
        self.listeners: list[OutageListener] = []
        """Called when an outage begins, and again when it ends (``outage.ended`` set)."""
        self.lost_lines = 0
        """Lines appended but never written (dropped from memory, or left at close), this run."""
        self.lost_at_close = 0
        """Of those, the lines still in memory when the spool closed."""
        self._flush_interval = flush_interval
        self._flush_lines = flush_lines
        self._chunk_lines = min(flush_lines, CHUNK_MAX_LINES)
        self._store = _Store(self.path, _SYNCHRONOUS[synchronous], max_bytes, max_dead_letters)
        self._counts = SpoolStats(0, 0, 0, 0, 0)
        self._told_dead_cap = False
        self._dead_dropped_in_memory = 0
        self._buffer: list[str] = []
        self._full = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._retries: Retries | None = None
        # Line numbers, for the MQTT link's acknowledgements (`durable_seq`). The buffer is
        # the lines put back by failed commits (`_held`: segments [first number, count], oldest
        # first) followed by one run of lines appended since, numbered up to `_seq`; each
        # commit under way holds its own segments (`_inflight`, in commit order).
        self.durable_listeners: list[Callable[[int], None]] = []
        """Called on the event loop with ``durable_seq`` each time it advances."""
        self._seq = 0
        self._durable = 0
        self._held: list[list[int]] = []
        self._held_lines = 0
        self._inflight: list[list[list[int]]] = []

    # -- hot path ----------------------------------------------------------------------------
    def append(self, line: str) -> None:
        """Queue one line for the next commit (never blocks)."""
        buffer = self._buffer
        buffer.append(line)
        self._seq += 1
        self.metrics.spool_appended += 1
        if len(buffer) >= self._flush_lines:
            self._full.set()
            # Trimmed a flush's worth at a time while writes fail: dropping one line per
            # append would move the whole buffer in memory for every reading.
            if self.outage is not None and len(buffer) > self.max_buffered + self._flush_lines:
                self._trim()

    def extend(self, lines: Iterable[str]) -> None:
        """Queue several lines for the next commit (never blocks)."""
        buffer = self._buffer
        before = len(buffer)
        buffer.extend(lines)
        added = len(buffer) - before
        self._seq += added
        self.metrics.spool_appended += added
        if len(buffer) >= self._flush_lines:
            self._full.set()
            if self.outage is not None and len(buffer) > self.max_buffered + self._flush_lines:
                self._trim()

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

    @property
    def healthy(self) -> bool:
        """Whether writes succeed (False from a failed write until one succeeds again)."""
        return self.outage is None

    @property
    def failing_since(self) -> float | None:
        """When writes began to fail (time.monotonic()), None while they succeed."""
        return self.outage.started if self.outage is not None else None

    @property
    def disk_full(self) -> bool:
        """Whether writes fail because the disk under the spool is full."""
        return self.outage is not None and self.outage.disk_full

    @property
    def oldest_ns(self) -> int:
        """When the oldest line waiting on disk was committed (0 when none waits)."""
        return self._counts.oldest_ns

    @property
    def max_bytes(self) -> int:
        """The cap on the spool's files on disk."""
        return self._store.max_bytes

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
                    disk_bytes=counts.disk_bytes,
                    max_bytes=self._store.max_bytes,
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
        """Commit buffered lines every flush_interval, or at once when flush_lines wait; while
        writes fail, on the SPOOL_WRITE backoff instead (never a tight loop)."""
        await self.open()
        while True:
            retries = self._retries
            if retries is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._full.wait()
            else:
                await asyncio.sleep(retries.next_delay())
            self._full.clear()
            # a failed commit starts (or continues) the outage; its lines stay in memory
            with contextlib.suppress(SpoolError):
                await self.flush()

    async def flush(self) -> None:
        """Commit everything appended so far (and wait for commits already under way).

        Raises SpoolError (DiskFullError for a full disk) if a transaction failed; the lines
        it did not write stay in memory for the next try.
        """
        await self.open()
        lines, self._buffer = self._buffer, []
        segments = self._take_segments(len(lines))
        self._inflight.append(segments)
        fut = self._submit(self._store.commit, lines, self._chunk_lines)
        fut.add_done_callback(partial(self._after_commit, lines, segments))
        result = await asyncio.shield(fut)
        if result.error is not None:
            raise result.error

    async def close(self) -> None:
        """Commit what is buffered, then close the database; idempotent. Lines that cannot be
        written then are lost: counted and logged, not raised."""
        if self._closed:
            return
        try:
            if self._opened:
                with contextlib.suppress(SpoolError):
                    await self.flush()
                    if self._buffer:  # an outage's end appended its alert lines
                        await self.flush()
        finally:
            self._closed = True
            if self._executor is not None:
                executor, self._executor = self._executor, None
                fut = asyncio.get_running_loop().run_in_executor(executor, self._store.close)
                await asyncio.shield(fut)
                executor.shutdown(wait=False)
            if self._buffer:
                lost, self._buffer = len(self._buffer), []
                self._count_lost(lost)
                self.lost_at_close = lost
                outage = self.outage
                _log.error(
                    "spool closed: lines that could not be written are lost",
                    path=str(self.path),
                    lines=lost,
                    lost_this_run=self.lost_lines,
                    reason=_reason(outage),
                    error=str(outage.error) if outage is not None else None,
                )

    # -- forwarder side ----------------------------------------------------------------------
    async def read_batch(self, max_lines: int, after: int = 0) -> SpoolBatch | None:
        """The oldest whole chunks, up to max_lines lines (at least one chunk); None if empty.

        ``after``: only chunks with a larger id (the forwarder reads ahead of a batch in flight).
        """
        await self.open()
        return await self._call(self._store.read, max_lines, after)

    async def ack(self, batch: SpoolBatch, dead: Sequence[DeadLetter] = ()) -> None:
        """Delete exactly the batch's chunks, storing its rejected lines in the same transaction.

        Raises SpoolError (DiskFullError) if the disk refused: the chunks stay, nothing is lost.
        """
        await self.open()
        fut = self._submit(self._store.ack, batch.chunk_ids, tuple(dead))
        fut.add_done_callback(self._after_write)
        await asyncio.shield(fut)

    async def dead_letter(self, lines: list[str], status: int, reason: str) -> None:
        """Store lines the server rejected for good, with its status and message."""
        await self.open()
        dead = tuple(DeadLetter(line, status, reason) for line in lines)
        fut = self._submit(self._store.dead_letter, dead)
        fut.add_done_callback(self._after_write)
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

    def count_dead_dropped(self, n: int) -> None:
        """Count rejected frames dropped before they reached the dead-letter table (kept in
        memory while the spool could not write, beyond their bound)."""
        self._dead_dropped_in_memory += n
        self.metrics.dead_letters_dropped += n

    # -- internals ---------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        if self._executor is None:
            raise SpoolError(f"the spool {self.path} is closed")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        # shield: a cancelled caller must not cancel SQLite work queued behind it
        return await asyncio.shield(self._submit(fn, *args))

    def _publish(self, counts: SpoolStats) -> None:
        self._counts = counts
        m = self.metrics
        m.spool_pending_lines = counts.pending_lines
        m.spool_pending_bytes = counts.pending_bytes
        m.spool_disk_bytes = counts.disk_bytes
        m.spool_dropped = counts.dropped_total + self.lost_lines
        m.dead_letters_dropped = counts.dead_letters_dropped + self._dead_dropped_in_memory
        if counts.dead_letters_dropped and not self._told_dead_cap:
            self._told_dead_cap = True
            _log.warning(
                "dead-letter table full: deleting the oldest dead letters",
                path=str(self.path),
                max_dead_letters=self._store.max_dead,
                dropped_total=counts.dead_letters_dropped,
                hint="InfluxDB keeps refusing lines: see `driftgate spool` for its reasons",
            )

    def _report(self, result: _WriteResult) -> None:
        """Publish a write's counts and log what the cap deleted."""
        self.metrics.spool_committed += result.committed_lines
        self._publish(result.counts)
        drop = result.drop
        if drop is not None:
            _log.warning(
                "spool full: dropped oldest lines",
                path=str(self.path),
                lines=drop.lines,
                chunks=drop.chunks,
                spooled_from=_iso(drop.first_ns),
                spooled_to=_iso(drop.last_ns),
                max_bytes=self._store.max_bytes,
                disk_bytes=result.counts.disk_bytes,
                dropped_total=result.counts.dropped_total,
                hint="InfluxDB has not taken data for a long time; raise spool.max_bytes "
                "or fix the connection",
            )
        if result.redeemed:
            _log.info(
                "lines dropped at the cap while being sent arrived after all",
                path=str(self.path),
                lines=result.redeemed,
                dropped_total=result.counts.dropped_total,
            )
        if result.committed_lines and result.counts.pending_lines:
            self.committed.set()

    def _after_commit(
        self, lines: list[str], segments: list[list[int]], fut: asyncio.Future[_WriteResult]
    ) -> None:
        # Callbacks run in commit order (one worker thread): this batch is _inflight[0].
        self._inflight.remove(segments)
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            error = exc if isinstance(exc, SpoolError) else SpoolError(f"commit failed: {exc!r}")
            self._hold(_skip(segments, 0))
            self._keep(lines, error)
            return
        result = fut.result()
        self._report(result)
        if result.error is not None:
            self._hold(_skip(segments, result.committed_lines))
            self._keep(lines[result.committed_lines :], result.error)
        else:
            if result.committed_lines:
                self._recovered(result.committed_lines)
            self._advance_durable()

    # -- line numbers: what is on disk ---------------------------------------------------------
    def _take_segments(self, taken: int) -> list[list[int]]:
        """The numbered segments of the whole buffer, which a commit is taking."""
        run = taken - self._held_lines
        segments, self._held, self._held_lines = self._held, [], 0
        if run > 0:
            segments.append([self._seq - run + 1, run])
        return segments

    def _hold(self, segments: list[list[int]]) -> None:
        """Lines a commit did not write go back in front of the buffer: older than the rest."""
        self._held[:0] = segments
        self._held_lines += sum(n for _, n in segments)

    def _drop_oldest(self, n: int) -> None:
        """The oldest ``n`` buffered lines were dropped (counted): they count as done."""
        while n > 0 and self._held:
            first = self._held[0]
            k = min(n, first[1])
            first[0] += k
            first[1] -= k
            self._held_lines -= k
            n -= k
            if not first[1]:
                self._held.pop(0)
        self._advance_durable()

    def _advance_durable(self) -> None:
        """Every line numbered below the oldest one not yet on disk (or counted as dropped)."""
        oldest = self._seq + 1
        for segments in self._inflight:  # put-back lines can be older than a commit under way
            if segments:
                oldest = min(oldest, segments[0][0])
        if self._held:
            oldest = min(oldest, self._held[0][0])
        run = len(self._buffer) - self._held_lines
        if run > 0:
            oldest = min(oldest, self._seq - run + 1)
        durable = oldest - 1
        if durable > self._durable:
            self._durable = durable
            for listener in self.durable_listeners:
                listener(durable)

    def _after_write(self, fut: asyncio.Future[_WriteResult]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, SpoolError):
                self._failed(exc)
            return
        self._report(fut.result())
        if not self._buffer:  # nothing waits to be committed: this write proves the disk
            self._recovered(0)

    def _keep(self, lines: list[str], error: SpoolError) -> None:
        """Put lines a failed commit did not write back in front of the buffer."""
        self._failed(error)
        self._buffer[:0] = lines
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest lines beyond max_buffered (only while the spool cannot write)."""
        excess = len(self._buffer) - self.max_buffered
        if excess <= 0:
            return
        del self._buffer[:excess]
        self._drop_oldest(excess)
        self._count_lost(excess)
        outage = self.outage
        if outage is not None:
            outage.dropped_lines += excess
        _log.error(
            "spool unwritable and memory buffer full: dropped the oldest lines",
            path=str(self.path),
            lines=excess,
            dropped_this_outage=outage.dropped_lines if outage is not None else excess,
            max_buffered=self.max_buffered,
            reason=_reason(outage),
        )

    def _count_lost(self, n: int) -> None:
        self.lost_lines += n
        self.metrics.spool_dropped += n
        self.metrics.spool_dropped_unwritable += n

    def _failed(self, error: SpoolError) -> None:
        """A write failed: begin the outage (once), or count the retry."""
        if self.outage is not None:
            self.outage.retries += 1
            return
        disk_full = isinstance(error, DiskFullError)
        outage = self.outage = SpoolOutage(
            error, disk_full, time.time_ns(), time.monotonic(), held_lines=len(self._buffer)
        )
        self._retries = Retries(SPOOL_WRITE)
        self.metrics.spool_healthy = False
        self.metrics.disk_full = disk_full
        _log.error(
            "disk full: the spool cannot be written" if disk_full else "spool unwritable",
            path=str(self.path),
            error=str(error),
            max_buffered=self.max_buffered,
            hint=(disk_full_hint(self.path) if disk_full else "check the disk under state_dir")
            + f"; new lines wait in memory (up to {self.max_buffered:,}, then the oldest are "
            "dropped and counted) and are written when the disk takes writes again",
        )
        self._tell(outage)

    def _recovered(self, written: int) -> None:
        """A write succeeded: end the outage, with what it cost."""
        outage = self.outage
        if outage is None:
            return
        self.outage = None
        self._retries = None
        outage.ended = time.monotonic()
        outage.written_lines = written
        self.metrics.spool_healthy = True
        self.metrics.disk_full = False
        (_log.warning if outage.dropped_lines else _log.info)(
            "spool writable again",
            path=str(self.path),
            down_s=round(outage.down_s, 1),
            written_lines=written,
            dropped_lines=outage.dropped_lines,
            retries=outage.retries,
            reason=_reason(outage),
        )
        self._tell(outage)

    def _tell(self, outage: SpoolOutage) -> None:
        for listener in self.listeners:
            try:
                listener(outage)
            except Exception:  # a listener's bug must not stop the spool's bookkeeping
                _log.exception("spool outage listener failed")


def _reason(outage: SpoolOutage | None) -> str:
    if outage is None:
        return "write error"
    return "disk full" if outage.disk_full else "write error"


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
        oldest_ns=int(oldest) if oldest is not None else 0,
        disk_bytes=disk_usage(path),
    )
    dead = [DeadLetter(line, int(status), reason) for status, reason, line in rows]
    return stats, oldest, dead


def _skip(segments: list[list[int]], n: int) -> list[list[int]]:
    """The segments without their first ``n`` lines (those a partial commit wrote)."""
    out = []
    for first, count in segments:
        if n >= count:
            n -= count
            continue
        out.append([first + n, count - n])
        n = 0
    return out
