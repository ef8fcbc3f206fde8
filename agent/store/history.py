"""Local history: per channel and minute, the count, mean, M2, min and max of the readings;
and per channel and context value (a lot, an operator), that value's sample of first readings.

The spool deletes what it forwarded, so it cannot answer "what did this channel look like while
the sample was approved?". This small table can: `driftgate baseline capture` pools its minute
aggregates exactly (the parallel-variance formula), over up to `history.days` of data. The
``samples`` table keeps every finished comparison sample for as long, so `driftgate report`
and `driftgate lot approve` find lots older than the two the agent keeps in memory.

Aggregation runs per channel micro-batch (Pipeline._detect), never per reading on the hot path;
the writes go to SQLite every few seconds on a worker thread of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.drift.compare import StoredSample
from agent.errors import DriftgateError
from agent.logs import get_logger
from agent.reading import Channel
from agent.store.disk import disk_full_hint, disk_words, error_name, is_disk_full, transaction

log = get_logger("driftgate.history")

MINUTE_NS = 60_000_000_000
FLUSH_INTERVAL = 5.0  # seconds between writes of the in-memory aggregates
PRUNE_INTERVAL = 3600.0  # wall seconds between retention passes
SMALL_BATCH = 32  # below this a plain loop beats NumPy's per-call overheads
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS minutes (
    channel TEXT NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    mean REAL NOT NULL,
    m2 REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (channel, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    n INTEGER NOT NULL,
    meta TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (channel, key, value)
) WITHOUT ROWID;
"""

_PUT_SAMPLE = """
INSERT OR REPLACE INTO samples (channel, key, value, first_ns, last_ns, n, meta, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
SampleRow = tuple[str, str, str, int, int, int, str, bytes]

# Merge a minute split across writes: in SQLite's UPDATE every right-hand side sees the old row.
_UPSERT = """
INSERT INTO minutes (channel, minute, n, mean, m2, min, max) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (channel, minute) DO UPDATE SET
    n = n + excluded.n,
    mean = mean + (excluded.mean - mean) * excluded.n / (n + excluded.n),
    m2 = m2 + excluded.m2
        + (excluded.mean - mean) * (excluded.mean - mean) * n * excluded.n / (n + excluded.n),
    min = MIN(min, excluded.min),
    max = MAX(max, excluded.max)
"""


class HistoryError(DriftgateError):
    """The history cannot answer (no file, no data for the channel or span)."""


def history_path(state_dir: Path) -> Path:
    """Where the history lives under a state dir."""
    return Path(state_dir) / "history.sqlite"


Agg = list[float]  # [n, mean, m2, min, max]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A span of a channel's minutes pooled: readings, mean, lowest and highest."""

    start_ns: int
    n: int
    mean: float
    low: float
    high: float


def merge(into: Agg, n: float, mean: float, m2: float, lo: float, hi: float) -> None:
    """Pool a group (n, mean, M2, min, max) into ``into`` (Chan et al.'s parallel formula)."""
    na = into[0]
    total = na + n
    d = mean - into[1]
    into[1] += d * n / total
    into[2] += m2 + d * d * na * n / total
    into[0] = total
    into[3] = min(into[3], lo)
    into[4] = max(into[4], hi)


class History:
    """Minute aggregates per channel: added per batch, written every few seconds, pruned hourly."""

    def __init__(self, path: Path, days: float = 30.0, flush_interval: float = FLUSH_INTERVAL):
        self.path = Path(path)
        self.days = days
        self.flush_interval = flush_interval
        self._pending: dict[tuple[str, int], Agg] = {}
        self._samples: dict[tuple[str, str, str], SampleRow] = {}
        self._newest_minute = -(2**62)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_prune = -math.inf
        self._broken = False  # could not open: aggregate nothing rather than grow without bound

    # -- per batch (event loop) --------------------------------------------------------------
    def add(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> None:
        """Aggregate a batch of one channel's readings (NaN = an invalid reading, skipped)."""
        self.add_named(channel.name, ns, values)

    def add_named(self, channel: str, ns: Sequence[int], values: Sequence[float]) -> None:
        """``add`` by channel name."""
        m = len(ns)
        if not m or self._broken:
            return
        pending = self._pending
        if m <= SMALL_BATCH:
            newest = self._newest_minute
            for ts, x in zip(ns, values, strict=True):
                if math.isnan(x):
                    continue
                minute = ts // MINUTE_NS
                if minute > newest:  # noqa: PLR1730 (cheaper than max() per reading)
                    newest = minute
                agg = pending.get((channel, minute))
                if agg is None:
                    pending[(channel, minute)] = [1.0, x, 0.0, x, x]
                else:
                    merge(agg, 1.0, x, 0.0, x, x)
            self._newest_minute = newest
            return
        ts_a = np.asarray(ns, dtype=np.int64)
        x_a = np.asarray(values, dtype=np.float64)
        ok = ~np.isnan(x_a)
        if not ok.all():
            ts_a, x_a = ts_a[ok], x_a[ok]
            if not len(ts_a):
                return
        minutes = ts_a // MINUTE_NS
        if bool(np.any(minutes[1:] < minutes[:-1])):
            order = np.argsort(minutes, kind="stable")
            minutes, x_a = minutes[order], x_a[order]
        starts = np.concatenate(([0], np.flatnonzero(minutes[1:] != minutes[:-1]) + 1))
        counts = np.diff(np.append(starts, len(x_a)))
        means = np.add.reduceat(x_a, starts) / counts
        dev = x_a - np.repeat(means, counts)
        m2s = np.add.reduceat(dev * dev, starts)
        los = np.minimum.reduceat(x_a, starts)
        his = np.maximum.reduceat(x_a, starts)
        keys = minutes[starts].tolist()
        self._newest_minute = max(self._newest_minute, int(keys[-1]))
        for minute, n, mean, m2, lo, hi in zip(
            keys, counts.tolist(), means.tolist(), m2s.tolist(), los.tolist(), his.tolist(),
            strict=True,
        ):  # fmt: skip
            agg = pending.get((channel, minute))
            if agg is None:
                pending[(channel, minute)] = [float(n), mean, m2, lo, hi]
            else:
                merge(agg, float(n), mean, m2, lo, hi)

    def add_sample(self, sample: StoredSample) -> None:
        """Keep a finished comparison sample (written at the next flush, on the worker thread)."""
        if self._broken:
            return
        data = np.asarray(sample.values, dtype="<f8").tobytes()
        self._samples[(sample.channel, sample.key, sample.value)] = (
            sample.channel, sample.key, sample.value, sample.first_ns, sample.last_ns,
            len(sample.values), json.dumps(sample.meta, sort_keys=True), data,
        )  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (or create) the database on the history's own worker thread; idempotent."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="driftgate-history")
        try:
            await self._call(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def run(self) -> None:
        """Write the aggregates every flush_interval (and prune hourly) until cancelled."""
        try:
            await self.open()
        except HistoryError as exc:
            self._broken = True
            self._pending = {}
            self._samples = {}
            log.error("local history unavailable: baseline capture has no data", error=str(exc))
            return
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except HistoryError as exc:
                log.error("cannot write the local history", path=str(self.path), error=str(exc))

    async def flush(self) -> None:
        """Write what was aggregated so far; prune when an hour has passed since the last time."""
        await self.open()
        rows = [(ch, minute, int(a[0]), a[1], a[2], a[3], a[4]) for (ch, minute), a in
                self._pending.items()]  # fmt: skip
        self._pending = {}
        samples, self._samples = self._samples, {}
        prune_before: int | None = None
        now = time.monotonic()
        if now - self._last_prune >= PRUNE_INTERVAL and self._newest_minute > -(2**62):
            self._last_prune = now
            prune_before = self._newest_minute - int(self.days * 1440)
        if rows or samples or prune_before is not None:
            try:
                await self._call(self._write, rows, prune_before, list(samples.values()))
            except BaseException:
                for key, row in samples.items():  # newer ones taken meanwhile win
                    self._samples.setdefault(key, row)
                for ch, minute, n, mean, m2, lo, hi in rows:  # keep them for the next round
                    agg = self._pending.get((ch, minute))
                    if agg is None:
                        self._pending[(ch, minute)] = [float(n), mean, m2, lo, hi]
                    else:
                        merge(agg, float(n), mean, m2, lo, hi)
                raise

    async def close(self) -> None:
        """Write what is pending and close the database; idempotent."""
        if self._executor is None or self._broken:
            return
        try:
            await self.flush()
        finally:
            executor, self._executor = self._executor, None
            with contextlib.suppress(sqlite3.Error):
                await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown(wait=False)

    async def series(
        self, channels: Sequence[str], start_ns: int, end_ns: int, bucket_s: float
    ) -> dict[str, list[Bucket]]:
        """Each channel's minutes in [start_ns, end_ns) pooled into buckets of ``bucket_s``
        (for the status page's sparklines and charts); read on the history's own thread, so
        the event loop never waits on the disk. Empty while the history is not open."""
        executor = self._executor
        if executor is None or self._broken:
            return {}
        lo, hi = start_ns // MINUTE_NS, -(-end_ns // MINUTE_NS)
        width = max(int(bucket_s // 60), 1)
        fut = asyncio.get_running_loop().run_in_executor(
            executor, self._series, list(channels), lo, hi, width
        )
        return await asyncio.shield(fut)

    def _series(self, channels: list[str], lo: int, hi: int, width: int) -> dict[str, list[Bucket]]:
        conn = self._conn
        if conn is None:
            return {}
        out: dict[str, list[Bucket]] = {}
        # One indexed range per channel: the table is clustered by (channel, minute).
        query = (
            "SELECT (minute - ?1) / ?2 AS b, SUM(n), SUM(n * mean) / SUM(n), MIN(min), MAX(max) "
            "FROM minutes WHERE channel = ?3 AND minute >= ?1 AND minute < ?4 GROUP BY b ORDER BY b"
        )
        try:
            for channel in channels:
                rows = conn.execute(query, (lo, width, channel, hi)).fetchall()
                if rows:
                    out[channel] = [
                        Bucket((lo + int(b) * width) * MINUTE_NS, int(n), mean, low, high)
                        for b, n, mean, low, high in rows
                    ]
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the local history {self.path}: {exc}") from None
        return out

    # -- worker thread -----------------------------------------------------------------------
    async def _call(self, fn: Callable[..., None], *args: object) -> None:
        assert self._executor is not None
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        await asyncio.shield(fut)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT MAX(minute) FROM minutes").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(
                f"cannot open the local history {self.path}: {exc}. If the file is damaged, "
                "move it aside (baseline capture then has data from the next start on)."
            ) from None
        if row[0] is not None:
            self._newest_minute = max(self._newest_minute, int(row[0]))
        self._conn = conn

    def _write(self, rows: list[tuple[str, int, int, float, float, float, float]],
               prune_before: int | None, samples: Sequence[SampleRow] = ()) -> None:  # fmt: skip
        conn = self._conn
        if conn is None:
            raise HistoryError(f"the local history {self.path} is closed")
        try:
            with transaction(conn, "BEGIN"):
                conn.executemany(_UPSERT, rows)
                conn.executemany(_PUT_SAMPLE, samples)
                if prune_before is not None:
                    conn.execute("DELETE FROM minutes WHERE minute < ?", (prune_before,))
                    conn.execute(
                        "DELETE FROM samples WHERE last_ns < ?", (prune_before * MINUTE_NS,)
                    )
        except sqlite3.Error as exc:
            if is_disk_full(exc, self.path):
                raise HistoryError(
                    f"disk full: cannot write the local history {self.path}: {error_name(exc)}; "
                    f"{disk_words(self.path)}. The minutes are kept in memory and written when "
                    f"space returns: {disk_full_hint(self.path)}"
                ) from None
            raise HistoryError(f"cannot write the local history {self.path}: {exc}") from None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True, slots=True)
class Pooled:
    """A channel's readings over a span, pooled exactly from its minute aggregates."""

    channel: str
    n: int
    mean: float
    std: float
    minimum: float
    maximum: float
    start_ns: int  # start of the first minute with data
    end_ns: int  # end of the last minute with data


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise HistoryError(
            f"no local history at {path}: it is written by a running agent (driftgate run) "
            "with this state_dir; start it and let it collect readings first"
        )
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def channel_span(path: Path, channel: str) -> tuple[int, int]:
    """The first and last minute (minutes since the epoch) with data for a channel."""
    with contextlib.closing(_read_only(path)) as conn:
        first, last = conn.execute(
            "SELECT MIN(minute), MAX(minute) FROM minutes WHERE channel = ?", (channel,)
        ).fetchone()
        if first is None:
            names = [r[0] for r in conn.execute("SELECT DISTINCT channel FROM minutes")]
    if first is None:
        known = ", ".join(sorted(names)) or "none yet"
        raise HistoryError(f"no history for channel {channel!r}; channels with history: {known}")
    return int(first), int(last)


def pooled(path: Path, channel: str, start_ns: int, end_ns: int) -> Pooled | None:
    """Pool the minutes that start in [start_ns, end_ns); None when there are none."""
    lo = -(-start_ns // MINUTE_NS)  # minutes that start at or after start_ns...
    hi = -(-end_ns // MINUTE_NS)  # ...and before end_ns
    with contextlib.closing(_read_only(path)) as conn:
        rows = conn.execute(
            "SELECT minute, n, mean, m2, min, max FROM minutes "
            "WHERE channel = ? AND minute >= ? AND minute < ? ORDER BY minute",
            (channel, lo, hi),
        ).fetchall()
    if not rows:
        return None
    a = np.asarray(rows, dtype=np.float64)
    n = a[:, 1]
    total = float(n.sum())
    mean = float((n * a[:, 2]).sum() / total)
    m2 = float(a[:, 3].sum() + (n * (a[:, 2] - mean) ** 2).sum())
    return Pooled(
        channel=channel,
        n=int(total),
        mean=mean,
        std=math.sqrt(m2 / (total - 1)) if total > 1 else 0.0,
        minimum=float(a[:, 4].min()),
        maximum=float(a[:, 5].max()),
        start_ns=int(rows[0][0]) * MINUTE_NS,
        end_ns=(int(rows[-1][0]) + 1) * MINUTE_NS,
    )


def read_samples(
    path: Path, *, key: str | None = None, value: str | None = None, channel: str | None = None
) -> list[StoredSample]:
    """The comparison samples kept in the history, oldest first (an older file: none)."""
    where, args = [], []
    for column, wanted in (("key", key), ("value", value), ("channel", channel)):
        if wanted is not None:
            where.append(f"{column} = ?")
            args.append(wanted)
    sql = "SELECT channel, key, value, first_ns, last_ns, meta, data FROM samples"
    if where:
        sql += " WHERE " + " AND ".join(where)
    with contextlib.closing(_read_only(path)) as conn:
        try:
            rows = conn.execute(sql + " ORDER BY first_ns, channel", args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # written by a version without samples
                return []
            raise HistoryError(f"cannot read the local history {path}: {exc}") from None
    return [
        StoredSample(
            channel=ch, key=k, value=v, first_ns=int(first), last_ns=int(last),
            values=tuple(np.frombuffer(data, dtype="<f8").tolist()), meta=json.loads(meta),
        )
        for ch, k, v, first, last, meta, data in rows
    ]  # fmt: skip
