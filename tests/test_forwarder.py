"""The forwarder against real InfluxDB 1.6 and VictoriaMetrics (and, only where those cannot
produce the answer under test, an in-process fake HTTP server named as such)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from servers import InfluxDB1Server, VictoriaMetricsServer, free_port
from structlog.testing import capture_logs
from waiting import until

from agent.metrics import AgentMetrics
from agent.store.forwarder import (
    NO_ANSWER,
    Action,
    Forwarder,
    ForwarderSettings,
    V2Writer,
    WriteResult,
    classify,
    parse_retry_after,
)
from agent.store.spool import DeadLetter, Spool

TS = 1_700_000_000_123_456_789  # ns; the sub-millisecond digits must survive the v1 path


async def spooled(tmp_path: Path, lines: list[str], metrics: AgentMetrics | None = None) -> Spool:
    spool = Spool(tmp_path / "spool.sqlite", metrics=metrics)
    await spool.open()
    spool.extend(lines)
    await spool.flush()
    return spool


def v1(url: str, db: str, **kw: Any) -> ForwarderSettings:
    kw.setdefault("max_backoff", 0.2)
    return ForwarderSettings(url=url, api="v1", database=db, **kw)


# -- policy as data ------------------------------------------------------------------------


def test_status_table() -> None:
    assert classify(WriteResult(204)) is Action.ACCEPTED
    assert classify(WriteResult(NO_ANSWER, "connection refused")) is Action.RETRY
    for status in (408, 429, 500, 502, 503, 504):
        assert classify(WriteResult(status)) is Action.RETRY
    assert classify(WriteResult(413)) is Action.SPLIT
    assert classify(WriteResult(400, "partial write: field type conflict")) is (
        Action.REJECTED_LINES
    )
    assert classify(WriteResult(400, 'unable to parse "m f= 1"')) is Action.REJECTED_LINES
    assert classify(WriteResult(400, "cannot parse field value")) is Action.REJECTED_LINES
    assert classify(WriteResult(422, "partial write has occurred")) is Action.REJECTED_LINES
    assert classify(WriteResult(400, "invalid precision")) is Action.HOLD
    for status in (401, 403, 404, 418):
        assert classify(WriteResult(status)) is Action.HOLD


def test_retry_after_header() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_ten = parse_retry_after(formatdate(time.time() + 10, usegmt=True))
    assert in_ten is not None
    assert 8 < in_ten <= 10
    assert parse_retry_after(formatdate(time.time() - 100, usegmt=True)) == 0.0
    assert parse_retry_after("-5") == 0.0
    # float() reads these, but they are no delay: "inf" would have held writes for an hour.
    assert parse_retry_after("inf") is None
    assert parse_retry_after("nan") is None


def test_backoff_is_full_jitter_capped_by_max_backoff(tmp_path: Path) -> None:
    forwarder = Forwarder(Spool(tmp_path / "spool.sqlite"), v1("http://x", "db", max_backoff=3))
    policy = forwarder.backoff
    top = [policy.delay(n, rand=lambda: 0.0) for n in range(5)]
    assert top == [0.5, 1, 2, 3, 3]
    assert policy.delay(3, rand=lambda: 0.999) == pytest.approx(0.003)  # full jitter
    assert policy.delay(0, server_min=9, rand=lambda: 0.0) == 9  # Retry-After past the cap
    assert policy.delay(30, server_min=10**6) == 3600  # ... up to an hour
    assert 0 < policy.delay(3) <= 3


# -- InfluxDB 1.6, v1 API --------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [True, False])
async def test_v1_writes_exact_values_tags_and_ns_times(
    influx_db: tuple[InfluxDB1Server, str], tmp_path: Path, gzip: bool
) -> None:
    server, db = influx_db
    lines = [
        f"climate,site=paris,zone=edge\\ paint humidity_rh=48.25,temperature_c=21 {TS + i}"
        for i in range(25)
    ] + [f'drift_alert,zone=edge\\ paint state="warn",value=61.5,count=3i,acked=true {TS}']
    metrics = AgentMetrics()
    spool = Spool(tmp_path / "spool.sqlite", metrics=metrics)
    await spool.open()
    for start in range(0, len(lines), 10):  # three commits: three chunks
        spool.extend(lines[start : start + 10])
        await spool.flush()
    try:
        forwarder = Forwarder(spool, v1(server.url, db, gzip=gzip, batch_size=10), metrics)
        assert await forwarder.drain(10)
    finally:
        await spool.close()

    points = server.points("climate", db)
    assert points == [
        {
            "time": TS + i,
            "humidity_rh": 48.25,
            "temperature_c": 21,
            "site": "paris",
            "zone": "edge paint",
        }
        for i in range(25)
    ]
    assert server.points("drift_alert", db) == [
        {
            "time": TS,
            "state": "warn",
            "value": 61.5,
            "count": 3,
            "acked": True,
            "zone": "edge paint",
        }
    ]
    assert metrics.forwarded == 26
    assert metrics.forward_batches == 3
    assert metrics.forward_errors == metrics.forward_retries == metrics.dead_letters == 0
    assert metrics.influx_reachable
    assert metrics.forward_latency_ms > 0
    assert metrics.spool_pending_lines == 0


async def test_field_type_conflict_dead_letters_only_bad_lines(
    influx_db: tuple[InfluxDB1Server, str], tmp_path: Path
) -> None:
    server, db = influx_db
    assert server.write(f"m,t=a f=1i {TS}\n", db)[0] == 204
    good = [f"m,t=a g={i}.5 {TS + 10 + i}" for i in range(20)]
    conflicting = [f"m,t=a f=2.5 {TS + 100}", f"m,t=b f=3.5 {TS + 101}"]
    unparsable = "m,t=a f= 1"
    batch = [*good[:7], conflicting[0], *good[7:15], unparsable, conflicting[1], *good[15:]]
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, batch, metrics)
    try:
        with capture_logs() as logs:
            assert await Forwarder(spool, v1(server.url, db), metrics).drain(20)
        dead = await spool.dead_letters()
        stats = await spool.stats()
    finally:
        await spool.close()

    assert [d.line for d in dead] == [conflicting[0], unparsable, conflicting[1]]
    assert all(d.status == 400 for d in dead)
    assert dead[0].reason == (
        'partial write: field type conflict: input field "f" on measurement "m" is type float, '
        "already exists as type integer dropped=1"
    )
    assert "unable to parse" in dead[1].reason
    assert "field type conflict" in dead[2].reason
    assert stats.dead_letters == 3
    assert stats.pending_lines == 0
    assert metrics.dead_letters == 3
    assert metrics.forwarded == len(good)
    rows = server.points("m", db)
    assert [(r["time"], r["g"]) for r in rows if r["g"] is not None] == [
        (TS + 10 + i, i + 0.5) for i in range(20)
    ]
    assert [(r["time"], r["f"]) for r in rows if r["f"] is not None] == [(TS, 1)]
    assert any("dead_letters" in e["event"] for e in logs)


async def test_missing_database_keeps_data_with_actionable_error(
    influx_db: tuple[InfluxDB1Server, str], tmp_path: Path
) -> None:
    server, db = influx_db
    missing = db + "_later"
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, [f"m f={i} {TS + i}" for i in range(5)], metrics)
    try:
        forwarder = Forwarder(spool, v1(server.url, missing, max_backoff=0.05), metrics)
        with capture_logs() as logs:
            assert not await forwarder.drain(0.5)
        assert (await spool.stats()).pending_lines == 5
        errors = [e for e in logs if e["log_level"] == "error"]
        port = server.url.rsplit(":", 1)[1]
        assert [e["event"] for e in errors] == [
            f"database '{missing}' not found: create it with influx -host 127.0.0.1 -port "
            f"{port} -execute 'CREATE DATABASE {missing}', or set influx.create_database: true"
        ]
        assert errors[0]["status"] == 404
        assert metrics.forward_retries >= 2  # retried, but logged once
        assert not metrics.influx_reachable

        server.create_database(missing)
        try:
            with capture_logs() as logs:
                assert await forwarder.drain(10)
            assert [e["event"] for e in logs if e["log_level"] == "info"] == [
                "InfluxDB is taking writes again"
            ]
            assert server.count("m", missing) == 5
        finally:
            server.drop_database(missing)
    finally:
        await spool.close()


async def test_create_database_makes_the_missing_database_at_start(
    influx_db: tuple[InfluxDB1Server, str], tmp_path: Path
) -> None:
    """influx.create_database: the forwarder's first act is an empty write, and a 404 for the
    database is answered with CREATE DATABASE (before: the agent only logged the 404)."""
    server, db = influx_db
    missing = db + "_new"
    spool = await spooled(tmp_path, [f"m f={i} {TS + i}" for i in range(5)])
    forwarder = Forwarder(spool, v1(server.url, missing, create_database=True))
    try:
        with capture_logs() as logs:
            run = asyncio.create_task(forwarder.run())
            await until(lambda: missing in server.databases(), within=10)
            await until(lambda: server.count("m", missing) == 5, within=10)
            forwarder.stop()
            await run
        assert [e["event"] for e in logs if e["log_level"] in ("info", "error")] == [
            "created the InfluxDB database"
        ]
    finally:
        await spool.close()
        server.drop_database(missing)


async def test_create_database_refused_says_who_may(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A user without admin rights cannot CREATE DATABASE: said once, with the command an admin
    runs; the data stays in the spool."""
    server = InfluxDB1Server(tmp_path_factory.mktemp("influx-auth"), admin=("admin", "pw")).start()
    try:
        server.query("CREATE USER gw WITH PASSWORD 'gw-pw'")
        spool = await spooled(tmp_path, [f"m f={i} {TS + i}" for i in range(3)])
        settings = v1(server.url, "plant", username="gw", password="gw-pw", create_database=True)
        try:
            forwarder = Forwarder(spool, settings)
            with capture_logs() as logs:
                assert not await forwarder.drain(0.5)
            refused = [e for e in logs if e["event"] == "cannot create the InfluxDB database"]
            assert len(refused) >= 1
            assert refused[0]["status"] == 403
            assert "requires admin privilege" in refused[0]["server_message"]
            assert refused[0]["hint"] == (
                "creating a database takes an InfluxDB admin: create it with influx -host "
                f"127.0.0.1 -port {server.port} -execute 'CREATE DATABASE plant' (add -username "
                "<admin> -password '')"
            )
            assert (await spool.stats()).pending_lines == 3
            assert "plant" not in server.databases()
        finally:
            await spool.close()
    finally:
        server.stop()


async def test_influxdb_stopped_mid_run_loses_nothing(
    influxdb_private: InfluxDB1Server, tmp_path: Path
) -> None:
    server = influxdb_private
    server.create_database("floor")
    metrics = AgentMetrics()
    spool = Spool(tmp_path / "spool.sqlite", flush_interval=0.02, metrics=metrics)
    settings = v1(server.url, "floor", batch_size=200, flush_interval=0.05, timeout=2.0)
    forwarder = Forwarder(spool, settings, metrics)
    total = 3000
    tasks = [asyncio.create_task(spool.run()), asyncio.create_task(forwarder.run())]
    try:
        with capture_logs() as logs:
            for i in range(total):
                spool.append(f"climate,zone=a humidity_rh={i} {TS + i}")
                if i % 100 == 99:
                    await asyncio.sleep(0.01)
                if i == 1000:
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(0.5)
                if i == 2000:
                    assert not metrics.influx_reachable
                    assert (await spool.stats()).pending_lines > 0
                    await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 30
            while spool.buffered or (await spool.stats()).pending_lines:
                assert time.monotonic() < deadline, "the spool did not drain"
                await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await spool.close()

    rows = server.rows("SELECT COUNT(humidity_rh), SUM(humidity_rh) FROM climate", "floor")
    assert rows[0]["count"] == total
    assert rows[0]["sum"] == total * (total - 1) / 2
    assert metrics.forwarded >= total
    assert metrics.forward_retries > 0
    assert metrics.influx_reachable
    events = [e["event"] for e in logs if e["log_level"] in ("error", "info")]
    assert events.count("InfluxDB is taking writes again") == 1
    assert sum(1 for e in events if e.startswith("cannot reach InfluxDB")) == 1


# -- VictoriaMetrics, v2 API through influxdb-client ------------------------------------------


async def test_v2_writes_through_influxdb_client_to_victoria(
    victoria: VictoriaMetricsServer, tmp_path: Path
) -> None:
    name = f"fwd_v2_{time.time_ns()}"
    lines = [f"{name},zone=z{i % 2} humidity_rh={40 + i}.5 {TS + i * 10**6}" for i in range(50)]
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, lines, metrics)
    settings = ForwarderSettings(
        url=victoria.url, api="v2", org="factory", bucket="floor", token="t0ken", batch_size=20
    )
    try:
        assert await Forwarder(spool, settings, metrics).drain(10)
    finally:
        await spool.close()
    got = sorted(
        (s["metric"]["__name__"], s["metric"]["zone"], ts, v)
        for s in victoria.export(f'{{__name__="{name}_humidity_rh"}}')
        for ts, v in zip(s["timestamps"], s["values"], strict=True)
    )
    assert got == sorted(
        (f"{name}_humidity_rh", f"z{i % 2}", TS // 10**6 + i, 40 + i + 0.5) for i in range(50)
    )
    assert metrics.forwarded == 50


async def test_v2_writer_translates_http_and_network_errors(
    influx_db: tuple[InfluxDB1Server, str],
) -> None:
    server, db = influx_db
    # InfluxDB 1.6 has no /api/v2/write: the client's ApiException becomes a 404 result.
    writer = V2Writer(ForwarderSettings(url=server.url, api="v2", org="o", bucket=db, token="x"))
    try:
        result = await writer.write(b"m f=1 1")
    finally:
        await writer.close()
    assert result.status == 404
    assert classify(result) is Action.HOLD

    closed = f"http://127.0.0.1:{free_port()}"
    writer = V2Writer(ForwarderSettings(url=closed, api="v2", org="o", bucket="b", timeout=2))
    try:
        result = await writer.write(b"m f=1 1")
    finally:
        await writer.close()
    assert result.status == NO_ANSWER
    assert result.message


# -- In-process FAKE InfluxDB (aiohttp), only for answers InfluxDB 1.6 cannot be made to give:
#    413 with a size limit per request, 429 + Retry-After, 401 on demand, a stalled response.


@dataclass
class FakeInflux:
    """In-process fake of InfluxDB's /write (NOT a real server), on 127.0.0.1."""

    url: str = ""
    max_lines: int = 10**9
    answers: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    stall: asyncio.Event | None = None  # while set to an Event, answers wait until it is set
    got_request: asyncio.Event = field(default_factory=asyncio.Event)
    stored: list[str] = field(default_factory=list)
    requests: list[tuple[float, int, dict[str, str]]] = field(default_factory=list)
    decide: Callable[[web.Request], tuple[int, dict[str, str], str] | None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        lines = [x for x in body.split("\n") if x]
        self.requests.append((time.monotonic(), len(lines), dict(request.headers)))
        self.got_request.set()
        if self.stall is not None:
            await self.stall.wait()
        if self.decide is not None and (answer := self.decide(request)) is not None:
            status, headers, text = answer
            return web.Response(status=status, headers=headers, text=text)
        if self.answers:
            status, headers, text = self.answers.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        if len(lines) > self.max_lines or any("HUGE" in x for x in lines):
            return web.Response(status=413, text='{"error":"Request Entity Too Large"}')
        self.stored.extend(lines)
        return web.Response(status=204)


@pytest_asyncio.fixture
async def fake_influx() -> AsyncIterator[FakeInflux]:
    fake = FakeInflux()
    app = web.Application()
    app.router.add_post("/write", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    await runner.cleanup()


async def test_413_splits_and_dead_letters_a_single_oversized_line(
    fake_influx: FakeInflux, tmp_path: Path
) -> None:
    fake_influx.max_lines = 4
    lines = [f"m f={i} {i}" for i in range(20)]
    lines[13] = "m HUGE=1 13"
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, lines, metrics)
    try:
        assert await Forwarder(spool, v1(fake_influx.url, "db"), metrics).drain(10)
        dead = await spool.dead_letters()
    finally:
        await spool.close()
    assert sorted(fake_influx.stored) == sorted(x for x in lines if "HUGE" not in x)
    assert len(fake_influx.stored) == 19  # nothing lost, nothing twice
    assert [(d.line, d.status) for d in dead] == [("m HUGE=1 13", 413)]
    assert dead[0].reason.startswith("line too large for the server")
    assert fake_influx.requests[0][2]["Content-Encoding"] == "gzip"


async def test_429_retry_after_is_honoured(fake_influx: FakeInflux, tmp_path: Path) -> None:
    fake_influx.answers = [
        (429, {"Retry-After": "1"}, '{"error":"too many requests"}'),
        (503, {"Retry-After": formatdate(time.time() + 3, usegmt=True)}, "overloaded"),
    ]
    lines = [f"m f={i} {i}" for i in range(10)]
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, lines, metrics)
    try:
        forwarder = Forwarder(spool, v1(fake_influx.url, "db", max_backoff=0.01), metrics)
        assert await forwarder.drain(10)
    finally:
        await spool.close()
    times = [t for t, _, _ in fake_influx.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.99  # max_backoff alone would allow 0.01 s
    # an HTTP date about 2 s after the second request (formatdate drops the fraction)
    assert times[2] - times[1] >= 0.9
    assert fake_influx.stored == lines
    assert metrics.forward_retries == 2
    assert metrics.forwarded == 10


async def test_401_keeps_data_logs_once_and_recovers(
    fake_influx: FakeInflux, tmp_path: Path
) -> None:
    accept = False
    expected = "Basic " + base64.b64encode(b"gateway7:s3cret").decode()

    def auth(request: web.Request) -> tuple[int, dict[str, str], str] | None:
        if accept and request.headers.get("Authorization") == expected:
            return None
        return 401, {}, '{"error":"authorization failed"}'

    fake_influx.decide = auth
    lines = [f"m f={i} {i}" for i in range(30)]
    metrics = AgentMetrics()
    spool = await spooled(tmp_path, lines, metrics)
    settings = v1(fake_influx.url, "db", username="gateway7", password="s3cret", max_backoff=0.05)
    forwarder = Forwarder(spool, settings, metrics)
    task = asyncio.create_task(forwarder.run())
    try:
        with capture_logs() as logs:
            await asyncio.sleep(0.6)
            assert (await spool.stats()).pending_lines == 30
            assert len(fake_influx.requests) >= 3
            accept = True
            deadline = time.monotonic() + 10
            while (await spool.stats()).pending_lines:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == [
        "InfluxDB refused the credentials for user 'gateway7': check password_file / token"
    ]
    assert errors[0]["server_message"] == "authorization failed"
    assert "s3cret" not in repr(logs) + repr(settings)
    assert sorted(fake_influx.stored) == sorted(lines)
    assert metrics.forwarded == 30
    assert metrics.forward_retries >= 3


async def test_cancel_mid_batch_loses_nothing(fake_influx: FakeInflux, tmp_path: Path) -> None:
    fake_influx.stall = release = asyncio.Event()
    lines = [f"m f={i} {i}" for i in range(10)]
    spool = await spooled(tmp_path, lines)
    try:
        forwarder = Forwarder(spool, v1(fake_influx.url, "db"))
        task = asyncio.create_task(forwarder.run())
        await asyncio.wait_for(fake_influx.got_request.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (await spool.stats()).pending_lines == 10
        fake_influx.stall = None
        release.set()  # the cancelled request's handler may finish now; nothing was acked
        assert await forwarder.drain(10)
    finally:
        await spool.close()
    # the un-acked batch was sent again whole (the first, cancelled copy may land too: the
    # server overwrites identical points)
    assert [n for _, n, _ in fake_influx.requests] == [10, 10]
    assert set(fake_influx.stored) == set(lines)


async def test_drain_gives_up_at_timeout_without_losing(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    spool = await spooled(tmp_path, ["m f=1 1"])
    try:
        forwarder = Forwarder(spool, v1(closed, "db", max_backoff=0.05, timeout=1))
        with capture_logs() as logs:
            assert not await forwarder.drain(0.3)
        assert (await spool.stats()).pending_lines == 1
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            f"cannot reach InfluxDB at {closed}: readings stay in the spool and are retried"
        ]
    finally:
        await spool.close()
    assert DeadLetter  # imported for the spool API used by the forwarder
