"""The whole agent end to end against real servers: simulated workshop → spool → forwarder →
InfluxDB 1.6 (v1 /write) or VictoriaMetrics (/api/v2/write), read back and compared point by
point; a SIGKILL during ingest, an InfluxDB outage mid-run, and an unreachable InfluxDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import InfluxDB1Server, VictoriaMetricsServer, free_port
from spoolfile import committed_lines

from agent.config import SelfMetricsConfig, config_from_dict
from agent.metrics import AgentMetrics
from agent.runtime.agent import Agent
from agent.sim.workshop import DAY, Workshop
from agent.store.forwarder import Forwarder, ForwarderSettings
from agent.store.spool import Spool, spool_path

START = "2026-01-01T00:00:00Z"
START_S = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
INTERVAL = 60.0
READING_MEASUREMENTS = ("climate", "tension")

# (measurement, sorted tag items, timestamp ns, field) -> value
Key = tuple[str, tuple[tuple[str, str], ...], int, str]


# -- expected data ---------------------------------------------------------------------------


def simulated_readings(
    *, site: str, gateway: str, seed: int, days: float, start: float = START_S
) -> dict[Key, float]:
    """A second, independent run of the deterministic workshop simulation: every reading the
    agent's simulated source produces for these settings, keyed like InfluxDB stores it."""
    shop = Workshop.build(start, seed=seed, tags={"site": site, "gateway": gateway})
    out: dict[Key, float] = {}
    t = start
    end = start + days * DAY
    while t < end:
        ts_ns = int(t * 1e9)
        for channel, value in shop.sample(t):
            key = (channel.measurement, tuple(sorted(channel.tags.items())), ts_ns, channel.field)
            assert key not in out
            out[key] = value
        t += INTERVAL
    return out


def parse_reading_line(line: str) -> tuple[Key, float]:
    """A reading line (no escapes, one float field) as (key, value)."""
    series, field_set, ts = line.split(" ")
    measurement, *tag_parts = series.split(",")
    tags = tuple(sorted(tuple(part.split("=", 1)) for part in tag_parts))  # type: ignore[misc]
    name, value = field_set.split("=", 1)
    return (measurement, tags, int(ts), name), float(value)


def reading_lines_to_dict(lines: list[str]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for line in lines:
        key, value = parse_reading_line(line)
        assert key not in out, f"duplicate line in the spool: {line}"
        out[key] = value
    return out


# -- reading back ----------------------------------------------------------------------------


def influx_readings(server: InfluxDB1Server, db: str) -> dict[Key, float]:
    """Every reading stored in InfluxDB, with its tags, exact ns timestamp and value."""
    out: dict[Key, float] = {}
    for measurement in READING_MEASUREMENTS:
        tag_keys = [r["tagKey"] for r in server.rows(f"SHOW TAG KEYS FROM {measurement}", db)]
        field_keys = [r["fieldKey"] for r in server.rows(f"SHOW FIELD KEYS FROM {measurement}", db)]
        for row in server.points(measurement, db):
            tags = tuple(sorted((k, row[k]) for k in tag_keys if row.get(k) not in (None, "")))
            for field in field_keys:
                if row.get(field) is not None:
                    out[(measurement, tags, int(row["time"]), field)] = row[field]
    return out


def influx_count(server: InfluxDB1Server, db: str, q: str) -> int:
    rows = server.rows(q, db)
    return int(rows[0]["n"]) if rows else 0


def influx_reading_count(server: InfluxDB1Server, db: str) -> int:
    """Reading lines stored: the two climate lines of a room at one time share a row."""
    return influx_count(
        server, db, "SELECT COUNT(humidity_rh) + COUNT(temperature_c) AS n FROM climate"
    ) + influx_count(server, db, "SELECT COUNT(tension_cn) AS n FROM tension")


def spool_lines(state_dir: Path) -> list[str]:
    """Every line committed in the spool file, read with sqlite3."""
    return committed_lines(state_dir)


def committed_line_count(state_dir: Path) -> int:
    path = spool_path(state_dir)
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            return int(conn.execute("SELECT COALESCE(SUM(n_lines), 0) FROM chunks").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def is_reading(line: str) -> bool:
    return line.startswith(tuple(m + "," for m in READING_MEASUREMENTS))


# -- running -----------------------------------------------------------------------------------


def agent_config(
    state_dir: Path,
    *,
    site: str = "e2e-site",
    gateway: str = "e2e-gw",
    influx: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "site": site,
        "gateway": gateway,
        "state_dir": str(state_dir),
        "log": {"level": "warning"},
        "self_metrics": {"interval": 1},
        "sources": [] if source is None else [{"type": "simulated", "name": "workshop", **source}],
    }
    if influx is not None:
        data["influx"] = {"flush_interval": 0.2, "max_backoff": 0.5, **influx}
    return data


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_agent(cfg: dict[str, Any], workdir: Path, name: str, *extra: str) -> subprocess.Popen:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(path), *extra],
        stdin=subprocess.DEVNULL,
        stdout=(workdir / f"{name}.out").open("w"),
        stderr=(workdir / f"{name}.err").open("w"),
        cwd=workdir,
        env=subprocess_env(),
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    # The agent bounds its own shutdown to 5 s; this generous limit only catches a hang.
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"agent pid {proc.pid} did not exit within {timeout} s of signal {sig}")


# -- v1: InfluxDB 1.6 ------------------------------------------------------------------------


async def test_v1_every_reading_arrives_exactly(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    server, db = influx_db
    days, seed = 2, 7
    cfg = config_from_dict(
        agent_config(
            tmp_path / "state",
            influx={"url": server.url, "api": "v1", "database": db},
            source={"speed": 2e6, "start": START, "days": days, "seed": seed, "interval": 60},
        ),
        env={},
    )
    result = await Agent(cfg).run(drain_at_end=10, handle_signals=False)

    expected = simulated_readings(site="e2e-site", gateway="e2e-gw", seed=seed, days=days)
    assert len(expected) == days * 1440 * 12
    assert result.metrics.readings_in == len(expected)
    assert result.pending_lines == 0
    assert result.dead_letters == 0
    assert result.metrics.forwarded == result.metrics.spool_appended

    stored = await asyncio.to_thread(influx_readings, server, db)
    # Complete set: every reading with its exact tags, ns timestamp and value; nothing else.
    assert stored == expected
    some = next(k for k in expected if k[0] == "tension" and ("station", "m05") in k[1])
    assert dict(some[1]) == {
        "gateway": "e2e-gw", "line": "L2", "sensor": "hx711-m05", "site": "e2e-site",
        "station": "m05", "zone": "sewing",
    }  # fmt: skip
    assert some[2] % 10**9 == 0
    assert some[2] >= int(START_S) * 10**9
    alerts = influx_count(server, db, "SELECT COUNT(transition) AS n FROM drift_alert")
    assert alerts == len(result.events)
    assert influx_count(server, db, "SELECT COUNT(readings_in) AS n FROM driftgate_agent") >= 1
    assert spool_lines(tmp_path / "state") == []


async def test_clean_end_leaves_nothing_behind(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    """Self-metrics written every 10 ms: none may slip in after the final drain (it would sit
    in the spool, unsent, while the run reports 0 waiting)."""
    server, db = influx_db
    state = tmp_path / "state"
    data = agent_config(
        state,
        influx={"url": server.url, "api": "v1", "database": db, "batch_size": 500},
        source={"speed": 2e6, "start": START, "days": 1, "seed": 4, "interval": 60},
    )
    # 10 ms is far below what the config accepts (at least 1 s): set past validation, as a
    # stress that keeps the race between self-metrics and the final drain wide open.
    cfg = config_from_dict(data, env={})
    cfg = cfg.model_copy(update={"self_metrics": SelfMetricsConfig.model_construct(interval=0.01)})
    result = await Agent(cfg).run(drain_at_end=10, handle_signals=False)
    assert result.pending_lines == 0
    assert spool_lines(state) == []
    assert result.metrics.forwarded == result.metrics.spool_appended
    n_self = influx_count(server, db, "SELECT COUNT(readings_in) AS n FROM driftgate_agent")
    assert n_self == result.metrics.spool_appended - result.metrics.readings_in - len(result.events)


async def test_forwarded_count_exact_when_shutdown_cancels_mid_ack(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    """The shutdown cancels the forwarder; if that lands while the spool deletes a sent batch
    (a shielded ack that completes anyway), the batch must still count as forwarded."""
    server, db = influx_db
    metrics = AgentMetrics()
    spool = Spool(tmp_path / "spool.sqlite", metrics=metrics)
    await spool.open()
    spool.extend([f"cancel_ack,t=a f={i}.5 {1_767_225_600_000_000_000 + i}" for i in range(3000)])
    await spool.flush()
    loop = asyncio.get_running_loop()
    acking = asyncio.Event()
    real_ack = spool._store.ack

    def slow_ack(*args: Any) -> Any:  # runs on the spool's thread
        loop.call_soon_threadsafe(acking.set)
        time.sleep(0.3)
        return real_ack(*args)

    spool._store.ack = slow_ack  # type: ignore[method-assign]
    settings = ForwarderSettings(url=server.url, api="v1", database=db, batch_size=1000)
    forwarder = Forwarder(spool, settings, metrics)
    task = asyncio.create_task(forwarder.run())
    try:
        await asyncio.wait_for(acking.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await forwarder.drain(10)
        assert (await spool.stats()).pending_lines == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
    assert await asyncio.to_thread(server.count, "cancel_ack", db) == 3000
    assert metrics.forwarded == 3000


# -- v2: VictoriaMetrics' /api/v2/write ------------------------------------------------------


async def test_v2_every_reading_arrives_in_victoriametrics(
    tmp_path: Path, victoria: VictoriaMetricsServer
) -> None:
    days, seed = 1, 3
    gateway = f"v2-{uuid.uuid4().hex[:10]}"  # victoria is shared: isolate by a unique tag
    cfg = config_from_dict(
        agent_config(
            tmp_path / "state",
            gateway=gateway,
            influx={"url": victoria.url, "api": "v2", "org": "any", "bucket": "any"},
            source={"speed": 2e6, "start": START, "days": days, "seed": seed, "interval": 60},
        ),
        env={},
    )
    result = await Agent(cfg).run(drain_at_end=10, handle_signals=False)
    assert result.pending_lines == 0
    assert result.dead_letters == 0
    assert result.metrics.forwarded == result.metrics.spool_appended

    expected = simulated_readings(site="e2e-site", gateway=gateway, seed=seed, days=days)
    names = {f"{m}_{f}" for m, _, _, f in expected}
    match = f'{{gateway="{gateway}"}}'

    # Delivery is at-least-once: a batch whose write was in flight when the run ended is sent
    # again by the final drain. InfluxDB overwrites such points; VictoriaMetrics keeps both
    # copies, so compare per series and timestamp (and a copy must never disagree).
    series = await asyncio.to_thread(victoria.export, match)
    got: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}
    for s in series:
        name = s["metric"]["__name__"]
        if name not in names:
            continue
        labels = tuple(
            sorted((k, v) for k, v in s["metric"].items() if k not in ("__name__", "db"))
        )
        points = got.setdefault((name, labels), {})
        for ts, value in zip(s["timestamps"], s["values"], strict=True):
            assert points.setdefault(ts, value) == value, f"{name} {labels} {ts}: two values"
    want: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}
    for (m, tags, ts, f), v in expected.items():
        want.setdefault((f"{m}_{f}", tags), {})[ts // 10**6] = v
    # Every reading: its tags as labels, its value and its millisecond timestamp; no others.
    assert got == want

    samples = [s for s in await asyncio.to_thread(victoria.samples, match) if s[0] in names]
    assert set(samples) == {(f"{m}_{f}", ts // 10**6, v) for (m, _, ts, f), v in expected.items()}
    assert len(samples) >= len(expected)


# -- SIGKILL during ingest, then a restart drains the spool -------------------------------------


def test_kill_9_during_ingest_loses_nothing_committed(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    server, db = influx_db
    state = tmp_path / "state"
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: everything stays spooled
    ingest = agent_config(
        state,
        influx={"url": dead_url, "api": "v1", "database": db},
        source={"speed": 100_000, "start": START, "seed": 5, "interval": 60},  # no end
    )
    proc = start_agent(ingest, tmp_path, "ingest")
    try:
        wait_for(lambda: committed_line_count(state) > 0, 20, "the first spool commit")
        time.sleep(2.5)
        assert proc.poll() is None, (tmp_path / "ingest.err").read_text()
    finally:
        proc.kill()  # SIGKILL: no shutdown, no final flush
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    committed = spool_lines(state)  # exactly what SQLite committed before the kill
    readings = reading_lines_to_dict([line for line in committed if is_reading(line)])
    alerts = [line for line in committed if line.startswith("drift_alert,")]
    assert len(readings) > 10_000

    drain = agent_config(state, influx={"url": server.url, "api": "v1", "database": db})
    proc = start_agent(drain, tmp_path, "drain")
    try:
        wait_for(
            lambda: influx_reading_count(server, db) >= len(readings),
            60,
            f"{len(readings)} readings in InfluxDB",
        )
        code = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, (tmp_path / "drain.err").read_text()

    assert influx_reading_count(server, db) == len(readings)
    stored = influx_readings(server, db)
    missing = {k: v for k, v in readings.items() if stored.get(k) != v}
    assert not missing, f"{len(missing)} committed readings missing or different in InfluxDB"
    assert stored == readings
    assert influx_count(server, db, "SELECT COUNT(transition) AS n FROM drift_alert") == len(alerts)
    assert spool_lines(state) == []  # the restarted agent drained it, then stopped cleanly


# -- InfluxDB stopped mid-run and restarted --------------------------------------------------


async def test_influxdb_outage_mid_run_then_everything_arrives(
    tmp_path: Path, influxdb_private: InfluxDB1Server
) -> None:
    server = influxdb_private
    db = "outage"
    server.create_database(db)
    days, seed = 1.5, 11
    cfg = config_from_dict(
        agent_config(
            tmp_path / "state",
            influx={"url": server.url, "api": "v1", "database": db, "timeout": 2},
            # 1.5 simulated days over ~6 s of wall time
            source={"speed": 22_000, "start": START, "days": days, "seed": seed, "interval": 60},
        ),
        env={},
    )
    agent = Agent(cfg)
    m = agent.metrics
    run = asyncio.create_task(agent.run(drain_at_end=20, handle_signals=False))
    try:
        while m.forwarded == 0:
            await asyncio.sleep(0.05)
            assert not run.done()
        await asyncio.to_thread(server.stop)
        down_readings = m.readings_in
        down_pending = m.spool_pending_lines
        await asyncio.sleep(2.0)
        # Still running, still reading, and the spool grows while InfluxDB is down.
        assert not run.done()
        assert m.readings_in > down_readings
        assert m.spool_pending_lines > down_pending
        assert m.forward_retries > 0
        assert m.influx_reachable is False
        forwarded_while_down = m.forwarded
        await asyncio.to_thread(server.start)  # same port, same data directories
        result = await asyncio.wait_for(run, 40)
    finally:
        if not run.done():
            agent.stop_event.set()
            await asyncio.gather(run, return_exceptions=True)
    assert result.stopped_by_signal is False
    assert result.pending_lines == 0
    assert result.metrics.forwarded > forwarded_while_down
    assert result.metrics.forwarded == result.metrics.spool_appended

    expected = simulated_readings(site="e2e-site", gateway="e2e-gw", seed=seed, days=days)
    assert await asyncio.to_thread(influx_reading_count, server, db) == len(expected)
    assert await asyncio.to_thread(influx_readings, server, db) == expected


# -- unreachable InfluxDB at the end of a run ------------------------------------------------


def test_unreachable_influxdb_keeps_everything_and_says_so_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead_url = f"http://127.0.0.1:{free_port()}"
    days, seed = 1, 2
    cfg = agent_config(
        state,
        influx={"url": dead_url, "api": "v1", "database": "nowhere"},
        # ~3 s of wall time: many retries (max_backoff 0.5 s) before the run ends
        source={"speed": 30_000, "start": START, "days": days, "seed": seed, "interval": 60},
    )
    cfg["log"] = {"level": "info", "format": "json"}
    proc = start_agent(cfg, tmp_path, "run")
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "run.err").read_text()
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    # Everything written is still in the spool, nothing was dropped or dead-lettered.
    lines = spool_lines(state)
    expected = simulated_readings(site="e2e-site", gateway="e2e-gw", seed=seed, days=days)
    readings = reading_lines_to_dict([line for line in lines if is_reading(line)])
    assert readings == expected
    stopped = [e for e in events if e.get("event") == "agent stopped"]
    assert len(stopped) == 1, err
    n_alerts = sum(line.startswith("drift_alert,") for line in lines)
    assert stopped[0]["readings"] == len(expected)
    assert stopped[0]["alerts"] == n_alerts
    n_self = sum(line.startswith("driftgate_agent,") for line in lines)
    assert n_self >= 1
    assert len(lines) == len(expected) + n_alerts + n_self
    # the final self-metrics point, written at shutdown, says what the agent counted before it
    fields = dict(part.split("=", 1) for part in lines[-1].split(" ")[1].split(","))
    last_self = {k: v.rstrip("i") for k, v in fields.items()}
    assert lines[-1].startswith("driftgate_agent,")
    assert int(last_self["spool_appended"]) == len(lines) - 1
    assert int(last_self["forwarded"]) == 0
    assert int(last_self["forward_retries"]) >= 2  # it kept retrying ...

    # ... but said so once, with the URL and what happens to the data.
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    assert len(errors) == 1, err
    assert dead_url in errors[0]["event"]
    assert "spool" in errors[0]["event"]
    assert errors[0].get("logger") == "driftgate.forwarder"
