"""The SQLite spool: batched commits, restart, byte cap, batch reads, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.metrics import AgentMetrics
from agent.store.spool import (
    CHUNK_MAX_LINES,
    MIN_MAX_BYTES,
    DeadLetter,
    Spool,
    disk_usage,
    split_body,
    spool_path,
)

TS = 1_700_000_000_000_000_000


def lines(n: int, start: int = 0, measurement: str = "climate") -> list[str]:
    return [f"{measurement},zone=a humidity_rh={i}.5 {TS + i}" for i in range(start, start + n)]


def chunk_rows(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, n_lines FROM chunks ORDER BY id").fetchall()


async def test_many_lines_one_transaction_few_chunks(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    path = spool_path(tmp_path / "state")
    async with Spool(path, flush_lines=100_000, metrics=metrics) as spool:
        for line in lines(10_000):
            spool.append(line)
        assert spool.buffered == 10_000
        assert spool.commits == 0  # appends never touch SQLite
        await spool.flush()
        assert spool.commits == 1
        assert spool.buffered == 0
        stats = await spool.stats()
    rows = chunk_rows(path)
    assert len(rows) == 10_000 // CHUNK_MAX_LINES
    assert {n for _, n in rows} == {CHUNK_MAX_LINES}
    assert stats.pending_lines == 10_000
    assert stats.chunks == len(rows)
    assert stats.pending_bytes == sum(len(x.encode()) for x in lines(10_000)) + 10_000 - len(rows)
    assert metrics.spool_appended == metrics.spool_committed == 10_000
    assert metrics.spool_pending_lines == 10_000
    assert metrics.spool_pending_bytes == stats.pending_bytes


async def test_run_commits_on_flush_lines_and_interval(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", flush_lines=50, flush_interval=30.0)
    task = asyncio.create_task(spool.run())
    try:
        await spool.open()
        spool.committed.clear()
        spool.extend(lines(49))
        await asyncio.sleep(0.2)
        assert spool.commits == 0  # below flush_lines, long interval: nothing committed yet
        spool.append(lines(1, start=49)[0])  # reaching flush_lines wakes the flusher
        await asyncio.wait_for(spool.committed.wait(), 5)
        assert spool.commits == 1
        assert (await spool.stats()).pending_lines == 50
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spool.close()

    fast = Spool(tmp_path / "t.sqlite", flush_lines=1000, flush_interval=0.05)
    task = asyncio.create_task(fast.run())
    try:
        fast.extend(lines(3))
        await asyncio.sleep(0.5)
        assert fast.buffered == 0
        assert (await fast.stats()).pending_lines == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fast.close()


async def test_close_flushes_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path)
    await spool.open()
    spool.extend(lines(7))
    await spool.close()
    await spool.close()
    assert sum(n for _, n in chunk_rows(path)) == 7


async def test_restart_resumes_data_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "spool.sqlite"
    async with Spool(path, max_bytes=MIN_MAX_BYTES) as spool:
        for i in range(0, 5000, 100):
            spool.extend(lines(100, start=i))
            await spool.flush()
        first = await spool.stats()
        assert first.dropped_total > 0
        await spool.dead_letter(["bad line"], 400, "unable to parse")
        batch = await spool.read_batch(10)
        assert batch is not None
        await spool.ack(batch)
        before = await spool.stats()

    metrics = AgentMetrics()
    async with Spool(path, max_bytes=MIN_MAX_BYTES, metrics=metrics) as again:
        after = await again.stats()
        # the same lines and counters (the files shrank: closing checkpointed the WAL)
        assert replace(after, disk_bytes=0) == replace(before, disk_bytes=0)
        assert after.disk_bytes <= MIN_MAX_BYTES
        assert after.dead_letters == 1
        assert metrics.spool_dropped == before.dropped_total
        assert metrics.spool_pending_lines == before.pending_lines
        assert again.committed.is_set()  # pending data from the last run wakes the forwarder
        batch = await again.read_batch(10**6)
        assert batch is not None
        # the newest lines survived, in order
        assert batch.lines == lines(5000)[-before.pending_lines :]


async def test_byte_cap_bounds_the_files_on_disk_drops_oldest_counts_and_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = AgentMetrics()
    all_lines = lines(20_000)
    path = tmp_path / "s.sqlite"
    cap = MIN_MAX_BYTES
    peak = 0
    async with Spool(path, max_bytes=cap, metrics=metrics) as spool:
        for i in range(0, 20_000, 500):  # 40 commits, ~1.1 MB of lines in all
            spool.extend(all_lines[i : i + 500])
            await spool.flush()
            peak = max(peak, disk_usage(path))
        stats = await spool.stats()
        batch = await spool.read_batch(10**6)
    # What is on disk (database, WAL, WAL index) stays within the cap after every commit.
    assert peak <= cap
    assert stats.disk_bytes == metrics.spool_disk_bytes <= cap
    assert stats.pending_lines + stats.dropped_total == 20_000
    assert stats.dropped_total == metrics.spool_dropped > 0
    assert metrics.spool_pending_lines == stats.pending_lines > 0
    assert batch is not None
    assert batch.lines == all_lines[-stats.pending_lines :]  # the newest survived, in order
    out = capsys.readouterr().out
    assert "spool full: dropped oldest lines" in out
    assert "spooled_from=" in out
    assert "spooled_to=" in out


async def test_read_batch_order_whole_chunks_and_ack(tmp_path: Path) -> None:
    async with Spool(tmp_path / "s.sqlite") as spool:
        assert await spool.read_batch(10) is None
        for size in (3, 4, 5):  # three commits, one chunk each
            spool.extend(lines(size, start=100 * size))
            await spool.flush()
        small = await spool.read_batch(2)  # at least one chunk even if bigger than asked
        assert small is not None
        assert small.lines == lines(3, start=300)
        two = await spool.read_batch(8)  # 3 + 4 fit, 3 + 4 + 5 would not
        assert two is not None
        assert two.lines == lines(3, start=300) + lines(4, start=400)
        assert len(two.chunk_ids) == 2
        await spool.ack(two, [DeadLetter(two.lines[0], 400, "field type conflict")])
        rest = await spool.read_batch(100)
        assert rest is not None
        assert rest.lines == lines(5, start=500)
        stats = await spool.stats()
        assert (stats.pending_lines, stats.chunks, stats.dead_letters) == (5, 1, 1)
        assert await spool.dead_letters() == [
            DeadLetter(lines(1, start=300)[0], 400, "field type conflict")
        ]
        await spool.ack(rest)
        await spool.ack(rest)  # acking twice deletes nothing more
        assert await spool.read_batch(100) is None
        assert (await spool.stats()).pending_lines == 0
        assert spool.metrics.spool_pending_bytes == 0


async def test_lines_with_raw_newlines_in_strings_survive(tmp_path: Path) -> None:
    tricky = [
        'drift_alert,zone=a message="humidity high\nedge paint dries slower",value=71.5 1',
        'drift_alert,zone=b message="quote \\" and\nnewline\n" 2',
        'drift_alert,zone=c message="no newline" 3',
        'we\\ ird,t="x message="a\nb" 4',  # a quote in a tag value is not a string
    ]
    async with Spool(tmp_path / "s.sqlite") as spool:
        spool.extend(tricky)
        await spool.flush()
        batch = await spool.read_batch(100)
    assert batch is not None
    assert batch.lines == tricky
    assert split_body("a f=1 1\nb f=2 2", 2) == ["a f=1 1", "b f=2 2"]


async def test_cancelled_flush_still_commits(tmp_path: Path) -> None:
    async with Spool(tmp_path / "s.sqlite") as spool:
        spool.extend(lines(1000))
        task = asyncio.create_task(spool.flush())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spool.flush()  # waits behind the cancelled caller's commit
        assert (await spool.stats()).pending_lines == 1000


async def test_corrupt_file_is_a_spool_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    spool = Spool(path)
    with pytest.raises(SpoolError) as info:
        await spool.open()
    message = str(info.value)
    assert str(path) in message
    assert "move it aside" in message
    await spool.close()


async def test_synchronous_full_and_bad_options(tmp_path: Path) -> None:
    async with Spool(tmp_path / "s.sqlite", synchronous="full") as spool:
        spool.append("m f=1 1")
        await spool.flush()
        assert (await spool.stats()).pending_lines == 1
    with pytest.raises(SpoolError):
        Spool(tmp_path / "x.sqlite", synchronous="off")  # type: ignore[arg-type]


async def test_cli_spool_reports_pending_dropped_and_dead_letters(tmp_path: Path) -> None:
    """`driftgate spool` reads the file read-only: safe beside a running agent."""
    import sys

    async def cli(state: Path) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "spool", "--state-dir", str(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    spool = Spool(spool_path(tmp_path))
    await spool.open()
    spool.extend([f"m f={i}.0 {TS + i}" for i in range(1234)])
    await spool.flush()
    await spool.dead_letter(['m f="x" 1'], 400, "partial write: field type conflict")
    code, out, _ = await cli(tmp_path)
    await spool.close()
    assert code == 0
    assert "waiting: 1,234 lines" in out
    assert " MB (the files spool.max_bytes caps)" in out
    assert "dead letters (refused by InfluxDB or out of range): 1" in out
    assert "[HTTP 400] partial write: field type conflict" in out
    code, _, err = await cli(tmp_path / "none")
    assert code == 1
    assert "no spool at" in err


async def test_dead_letters_are_capped_oldest_first_counted_and_logged_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the dead-letter table grew without bound (a server refusing every line would
    fill the disk with copies of them)."""
    from agent.logs import configure_logging

    configure_logging("info", "console", sys.stdout)
    metrics = AgentMetrics()
    path = spool_path(tmp_path / "state")
    async with Spool(path, max_dead_letters=150, metrics=metrics) as spool:
        for batch in range(4):
            await spool.dead_letter(lines(100, start=batch * 100), 400, f"refused {batch}")
        stats = await spool.stats()
    assert stats.dead_letters == 150
    assert stats.dead_letters_dropped == 250
    assert metrics.dead_letters_dropped == 250
    with sqlite3.connect(path) as conn:
        kept = [row[0] for row in conn.execute("SELECT line FROM dead_letters ORDER BY id")]
    assert kept == lines(400)[250:]  # the newest
    out = capsys.readouterr().out
    assert out.count("dead-letter table full") == 1
    async with Spool(path, max_dead_letters=150) as again:  # the count survives a restart
        assert (await again.stats()).dead_letters_dropped == 250


async def test_the_cap_spares_chunks_in_flight_so_nothing_is_counted_twice(
    tmp_path: Path,
) -> None:
    """A chunk the forwarder is sending, deleted at the cap and counted as dropped, still
    arrives: it was counted twice (the fault suite's ledger was 312 lines over)."""
    metrics = AgentMetrics()
    all_lines = lines(30_000)
    async with Spool(tmp_path / "s.sqlite", max_bytes=MIN_MAX_BYTES, metrics=metrics) as spool:
        spool.extend(all_lines[:2000])
        await spool.flush()
        sending = await spool.read_batch(500)  # the oldest chunk, on the wire
        assert sending is not None
        for i in range(2000, 30_000, 500):  # the cap deletes many times over
            spool.extend(all_lines[i : i + 500])
            await spool.flush()
        stats = await spool.stats()
        assert stats.dropped_total > 2000
        await spool.ack(sending)
        after = await spool.stats()
        rest = await spool.read_batch(10**6)
    assert rest is not None
    # The chunk in flight survived the cap; the next oldest went instead.
    assert sending.lines == all_lines[:500]
    assert after.pending_lines == stats.pending_lines - 500
    assert after.dropped_total == stats.dropped_total == metrics.spool_dropped
    assert rest.lines == all_lines[-after.pending_lines :]
    # Every line is in exactly one place: delivered, dropped, or still waiting.
    assert 500 + after.dropped_total + after.pending_lines == 30_000


async def test_chunks_in_flight_the_cap_had_to_delete_come_off_the_dropped_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When what is in flight is more than the cap holds, it goes too (the cap is the cap);
    the ack that finds it gone takes it off the dropped count: it arrived."""
    metrics = AgentMetrics()
    all_lines = lines(16_000)
    async with Spool(tmp_path / "s.sqlite", max_bytes=MIN_MAX_BYTES, metrics=metrics) as spool:
        for i in range(0, 8000, 500):
            spool.extend(all_lines[i : i + 500])
            await spool.flush()
        sending = await spool.read_batch(10**6)  # everything the spool holds
        assert sending is not None
        for i in range(8000, 16_000, 500):
            spool.extend(all_lines[i : i + 500])
            await spool.flush()
        gone = await spool.stats()
        await spool.ack(sending)
        after = await spool.stats()
        rest = await spool.read_batch(10**6)
    assert disk_usage(tmp_path / "s.sqlite") <= MIN_MAX_BYTES
    assert after.dropped_total < gone.dropped_total  # some in flight was deleted, then arrived
    assert rest is not None
    assert rest.lines == all_lines[-after.pending_lines :]
    assert after.dropped_total == metrics.spool_dropped
    assert len(sending.lines) + after.dropped_total + after.pending_lines == 16_000
    assert "lines dropped at the cap while being sent arrived after all" in capsys.readouterr().out
