"""Disk faults: the disk under the state dir fills up and frees again, the agent is stopped
while it is full, and the spool's cap bounds what its files take on disk.

A real agent (the simulated workshop as its source: a device that cannot be told to wait)
forwards to a real InfluxDB 1.6; the state dir lives on a size-limited tmpfs this module
mounts (it needs root; without it the disk-full tests skip and say why). Every test checks
exact counts: what arrived in InfluxDB plus what the agent counted as dropped equals every
line it took in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ledger import FaultRow
from servers import InfluxDB1Server
from test_agent_e2e import (
    START,
    START_S,
    agent_config,
    influx_count,
    influx_reading_count,
    influx_readings,
    spool_lines,
    start_agent,
    stop,
)

from agent.config import config_from_dict
from agent.logs import configure_logging
from agent.runtime.agent import Agent, RunResult
from agent.sim.workshop import Workshop
from agent.store.spool import SLICE_FRACTION, disk_usage, spool_path

SITE, GATEWAY = "e2e-site", "e2e-gw"
MEASUREMENTS = {"climate", "tension", "drift_alert", "driftgate_agent"}
"""Everything this agent writes: readings, alert events, self-metrics."""


# -- a small disk --------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A size-limited tmpfs mounted for one test, and a file that fills it up."""

    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        """Grow the filler until the disk refuses another byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                block = b"\0" * size
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the space back."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 24 MiB tmpfs, unmounted after the test whatever happened."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a size-limited tmpfs ({done.stderr.strip() or done.returncode}): "
            "the disk-full tests need root (or CAP_SYS_ADMIN) to fill a disk of their own"
        )
    try:
        yield SmallDisk(mount)
    finally:
        for attempt in range(20):
            done = subprocess.run(["umount", str(mount)], capture_output=True, check=False)
            if done.returncode == 0:
                break
            if attempt == 19:  # something still holds a file there: detach it all the same
                subprocess.run(["umount", "-l", str(mount)], check=True)
            time.sleep(0.25)


# -- helpers -------------------------------------------------------------------------------


def json_logs(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def spool_errors(stream: io.StringIO) -> list[dict[str, Any]]:
    return [
        e for e in json_logs(stream) if e["logger"] == "driftgate.spool" and e["level"] == "error"
    ]


def file_logs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


async def until(predicate: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def influx_lines(server: InfluxDB1Server, db: str, gateway: str = GATEWAY) -> int:
    """Lines of one agent stored in InfluxDB: readings (one field each), alert events and
    self-metrics points (the InfluxDB keeps one point per series and time: a batch sent
    twice counts once)."""
    measurements = {r["name"] for r in server.rows("SHOW MEASUREMENTS", db)}
    assert measurements <= MEASUREMENTS, measurements
    return (
        influx_reading_count(server, db)
        + influx_count(server, db, "SELECT COUNT(transition) AS n FROM drift_alert")
        + influx_count(
            server,
            db,
            f"SELECT COUNT(readings_in) AS n FROM driftgate_agent WHERE gateway = '{gateway}'",
        )
    )


def workshop_readings(frames: int, seed: int) -> dict[tuple[Any, ...], float]:
    """The readings of the first ``frames`` sample times of the simulated workshop."""
    shop = Workshop.build(START_S, seed=seed, tags={"site": SITE, "gateway": GATEWAY})
    out: dict[tuple[Any, ...], float] = {}
    t = START_S
    for _ in range(frames):
        for channel, value in shop.sample(t):
            key = (channel.measurement, tuple(sorted(channel.tags.items())), int(t * 1e9),
                   channel.field)  # fmt: skip
            out[key] = value
        t += 60.0
    return out


def end_source(agent: Agent) -> int:
    """Let the simulated source finish where it is now; how many sample times it produced."""
    source = agent.sources[0]
    source.end = source.sim_time  # type: ignore[attr-defined]
    return int(source.frames)  # type: ignore[attr-defined]


# -- 1. disk full, then space returns --------------------------------------------------------


@pytest.mark.timeout(600)  # the --soak variant holds the disk full for two minutes
async def test_disk_full_is_named_alerted_survived_and_counted_exactly(
    small_disk: SmallDisk,
    influxdb_private: InfluxDB1Server,
    fault_report: Callable[[FaultRow], None],
    soak: bool,
) -> None:
    """The disk under the spool fills while InfluxDB is down, InfluxDB comes back while it is
    still full, then space returns. Before: the failed COMMIT was reported as "cannot rollback
    - no transaction is active", the forwarder died on the first batch it could not delete,
    60,076 lines stayed unsent until a restart and acknowledged lines were lost uncounted."""
    server = influxdb_private
    db = "diskfull"
    server.create_database(db)
    seed = 7
    cfg = config_from_dict(
        agent_config(
            small_disk.path / "state",
            influx={"url": server.url, "api": "v1", "database": db, "timeout": 2},
            source={"speed": 6000, "start": START, "seed": seed, "interval": 60},
        ),
        env={},
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(cfg)
    agent.spool.max_buffered = 3000  # memory's bound, reached within seconds at this speed
    m = agent.metrics
    run = asyncio.create_task(agent.run(drain_at_end=60, handle_signals=False))
    try:
        await until(lambda: m.forwarded > 0 or run.done(), "the first forwarded batch")
        assert not run.done()

        # InfluxDB goes away, so the spool must grow; then the disk fills up.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(small_disk.fill)
        await until(lambda: bool(spool_errors(stream)), "the spool to say it cannot write")
        named = spool_errors(stream)
        assert [e["event"] for e in named] == ["disk full: the spool cannot be written"], named
        outage = agent.spool.outage
        assert outage is not None
        assert agent.spool.disk_full
        assert m.disk_full
        assert not m.spool_healthy
        assert str(spool_path(cfg.state_dir)) in named[0]["error"]
        assert "SQLITE_FULL" in named[0]["error"]
        assert " free on the disk holding " in named[0]["error"]
        assert "free space on the disk holding" in named[0]["hint"]
        raised = [e for e in agent.events if e.detector == "disk_full"]
        assert [e.transition for e in raised] == ["raised"]
        assert "disk is full" in raised[0].message

        # InfluxDB is back but the disk is still full: the forwarder sends what is committed
        # and keeps trying to delete it, the source keeps reading into memory up to its
        # bound, and the commits are retried on a backoff, not in a tight loop.
        await asyncio.to_thread(server.start)
        full_since = time.monotonic()
        hold = 8.0 if not soak else 120.0
        reached: float | None = None
        while reached is None or time.monotonic() - reached < hold:
            await asyncio.to_thread(small_disk.fill)  # what the agent freed is taken again
            await asyncio.sleep(0.2)
            assert not run.done()
            assert agent.spool.outage is outage, "the spool wrote to a full disk"
            if reached is None and m.spool_dropped_unwritable:
                reached = time.monotonic()
            assert time.monotonic() - full_since < 120, "memory's bound never reached"
        elapsed = time.monotonic() - full_since
        # SPOOL_WRITE waits 0.25 s doubling to 5 s: a slow machine tries less often, never more
        assert outage.retries <= 8 + elapsed / 4, (outage.retries, elapsed)
        assert agent.supervisor.restarts == 0
        assert m.spool_buffered <= agent.spool.max_buffered + cfg.spool.flush_lines
        assert m.spool_dropped_unwritable > 0

        # Space returns: commits succeed again, by themselves.
        small_disk.release()
        await until(lambda: agent.spool.healthy, "the spool to write again", within=30)
        assert m.spool_healthy
        assert not m.disk_full
        back = [e for e in json_logs(stream) if e["event"] == "spool writable again"]
        assert len(back) == 1
        assert back[0]["dropped_lines"] == m.spool_dropped_unwritable
        assert back[0]["written_lines"] > 0
        assert back[0]["down_s"] > 0
        assert back[0]["reason"] == "disk full"
        dropped_while_full = m.spool_dropped_unwritable
        cleared = [e for e in agent.events if e.detector == "disk_full"]
        assert [e.transition for e in cleared] == ["raised", "cleared"]
        assert f"{m.spool_dropped_unwritable:,} lines were lost" in cleared[1].message

        await until(lambda: m.spool_pending_lines < 5000, "the backlog to drain", within=60)
        frames = end_source(agent)
        result: RunResult = await asyncio.wait_for(run, 90)
    finally:
        if not run.done():
            agent.stop_event.set()
            await asyncio.gather(run, return_exceptions=True)

    assert result.failure is None
    assert result.pending_lines == 0
    logs = json_logs(stream)
    assert not [e for e in logs if e["event"].endswith((" crashed", " ended unexpectedly"))]
    assert agent.supervisor.restarts == 0, [e for e in logs if "supervisor" in e["logger"]]
    assert not [e for e in logs if "cannot rollback" in json.dumps(e)]
    # Nothing was lost after space returned: every drop happened while the disk was full.
    assert m.spool_dropped_unwritable == dropped_while_full
    assert m.spool_dropped == m.spool_dropped_unwritable  # the cap dropped nothing
    stopped = [e for e in logs if e["event"] == "agent stopped"]
    assert stopped[0]["level"] == "warning"  # lines were lost during the run, none at the stop
    assert stopped[0]["lost_lines"] == m.spool_dropped_unwritable
    assert stopped[0]["lost_at_stop"] == 0

    arrived = await asyncio.to_thread(influx_lines, server, db)
    # The alert events made it too, the raised one spooled once space returned.
    alerts = await asyncio.to_thread(
        server.rows, "SELECT transition FROM drift_alert WHERE detector = 'disk_full'", db
    )
    assert sorted(r["transition"] for r in alerts) == ["cleared", "raised"]
    # Every reading that arrived is one the source produced, with its value.
    expected = workshop_readings(frames, seed)
    stored = await asyncio.to_thread(influx_readings, server, db)
    assert all(expected.get(k) == v for k, v in stored.items())
    assert len(stored) <= len(expected)
    fault_report(
        FaultRow(
            "disk full on a size-limited tmpfs, then space returned",
            sent=m.spool_appended,
            acknowledged=m.spool_appended,
            arrived=arrived,
            dropped={
                "disk full": m.spool_dropped_unwritable,
                "spool cap": m.spool_dropped - m.spool_dropped_unwritable,
            },
        )
    )


# -- 2. SIGTERM while the disk is full ---------------------------------------------------------


def test_sigterm_while_the_disk_is_full_exits_0_and_says_what_was_lost(
    small_disk: SmallDisk,
    influxdb_private: InfluxDB1Server,
    tmp_path: Path,
    fault_report: Callable[[FaultRow], None],
) -> None:
    """Before: SIGTERM during disk full exited 1 after the shutdown budget, and the last word
    was "the lines are kept in memory and retried" while they were being lost uncounted."""
    server = influxdb_private
    db = "sigterm"
    server.create_database(db)
    state = small_disk.path / "state"
    cfg = agent_config(
        state,
        influx={"url": server.url, "api": "v1", "database": db, "timeout": 2},
        source={"speed": 6000, "start": START, "seed": 3, "interval": 60},
    )
    cfg["log"] = {"level": "info", "format": "json"}
    proc = start_agent(cfg, tmp_path, "full")
    err = tmp_path / "full.err"
    try:
        deadline = time.monotonic() + 60
        while influx_count(server, db, "SELECT COUNT(tension_cn) AS n FROM tension") == 0:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "nothing forwarded"
            time.sleep(0.2)
        server.stop()
        time.sleep(1.5)  # lines pile up in the spool, committed, while InfluxDB is away
        small_disk.fill()
        deadline = time.monotonic() + 60
        while not [
            e for e in file_logs(err)
            if e.get("logger") == "driftgate.spool" and e.get("level") == "error"
        ]:  # fmt: skip
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the spool never said it cannot write"
            time.sleep(0.2)
        time.sleep(1.0)  # readings keep arriving into memory
        small_disk.fill()
        signalled = time.monotonic()
        code = stop(proc, signal.SIGTERM)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = file_logs(err)
    print(f"SIGTERM during disk full: exit {code} after {took:.2f} s")
    assert code == 0, err.read_text()
    assert not [e for e in logs if e.get("level") == "critical"]
    assert not [e for e in logs if "kept in memory and retried" in json.dumps(e)]
    assert not [e for e in logs if e.get("event") == "spool did not close in time; SQLite's "
                "WAL keeps what was committed"]  # fmt: skip
    closed = [e for e in logs if e.get("event") == "spool closed: lines that could not be "
              "written are lost"]  # fmt: skip
    assert len(closed) == 1, err.read_text()
    assert closed[0]["reason"] == "disk full"
    stopped = [e for e in logs if e.get("event") == "agent stopped"]
    assert len(stopped) == 1
    assert stopped[0]["level"] == "error"
    lost = stopped[0]["lost_lines"]
    assert lost == stopped[0]["lost_at_stop"] == closed[0]["lines"] > 0  # none dropped earlier
    appended = stopped[0]["spooled"] + lost
    kept = len(spool_lines(state))  # committed before the disk filled, not yet forwarded
    assert kept > 0

    # Space returns and InfluxDB too: a fresh agent forwards what the spool kept.
    small_disk.release()
    server.start()
    drain = agent_config(
        state, gateway="drain", influx={"url": server.url, "api": "v1", "database": db}
    )
    proc = start_agent(drain, tmp_path, "drain")
    try:
        deadline = time.monotonic() + 60
        while any(f",gateway={GATEWAY}," in line for line in spool_lines(state)):
            assert proc.poll() is None, (tmp_path / "drain.err").read_text()
            assert time.monotonic() < deadline, "the spool was not drained"
            time.sleep(0.2)
        assert stop(proc) == 0, (tmp_path / "drain.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(f",gateway={GATEWAY}," in line for line in spool_lines(state))
    arrived = influx_lines(server, db)
    fault_report(
        FaultRow(
            "SIGTERM while the disk is full (then a restart drains)",
            sent=appended,
            acknowledged=appended,
            arrived=arrived,
            dropped={"disk full, lost at shutdown": lost},
        )
    )


# -- 3. the spool's cap is what its files take on disk ----------------------------------------


class DiskWatch:
    """Samples the spool's files on disk from a thread, as often as it can: the largest
    size seen, including in the middle of a transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_usage(self.path))
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(600)
async def test_spool_files_stay_within_max_bytes_while_influxdb_is_down(
    tmp_path: Path,
    influxdb_private: InfluxDB1Server,
    fault_report: Callable[[FaultRow], None],
    soak: bool,
) -> None:
    """Before: with max_bytes 1MiB the spool's files took 5.4 MB, 4.1 MB of it the WAL."""
    server = influxdb_private
    db = "cap"
    server.create_database(db)
    max_bytes = 1 << 20
    data = agent_config(
        tmp_path / "state",
        influx={"url": server.url, "api": "v1", "database": db, "timeout": 2},
        source={"speed": 30_000, "start": START, "seed": 9, "interval": 60},
    )
    data["spool"] = {"max_bytes": "1MiB"}
    cfg = config_from_dict(data, env={})
    agent = Agent(cfg)
    m = agent.metrics
    server.stop()  # down from the start: everything ingested must wait in the spool
    path = spool_path(cfg.state_dir)
    run = asyncio.create_task(agent.run(drain_at_end=60, handle_signals=False))
    try:
        with DiskWatch(path) as watch:
            # Until the cap has deleted several times what it holds (or a minute with --soak).
            goal = 60.0 if soak else 0.0
            started = time.monotonic()
            while m.spool_dropped < 30_000 or time.monotonic() - started < goal:
                assert not run.done()
                await asyncio.sleep(0.1)
        print(f"spool files: peak {watch.peak:,} bytes in {watch.samples:,} samples")
        # The documented margin: a transaction in progress may pass the cap by one slice.
        assert watch.peak <= max_bytes + max_bytes // SLICE_FRACTION, watch.peak
        assert disk_usage(path) <= max_bytes
        assert m.spool_disk_bytes <= max_bytes
        await asyncio.to_thread(server.start)
        end_source(agent)
        result = await asyncio.wait_for(run, 90)
    finally:
        if not run.done():
            agent.stop_event.set()
            await asyncio.gather(run, return_exceptions=True)
    assert result.pending_lines == 0
    assert m.spool_dropped_unwritable == 0
    arrived = await asyncio.to_thread(influx_lines, server, db)
    fault_report(
        FaultRow(
            "spool cap reached (1 MiB on disk, InfluxDB down): oldest dropped",
            sent=m.spool_appended,
            acknowledged=m.spool_appended,
            arrived=arrived,
            dropped={"spool cap": m.spool_dropped},
        )
    )
