"""Smoke tests: each real server from tests/servers.py works, and listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
import serial
from servers import (
    InfluxDB1Server,
    MosquittoServer,
    SerialPair,
    VictoriaMetricsServer,
    free_port,
    http_request,
    port_open,
)

MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"

TS_NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if width == 8:
                    found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add(addr)
    return found


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert not port_open("127.0.0.1", port)


# -- InfluxDB 1.6 ------------------------------------------------------------------------------


def test_influxdb_listens_on_loopback_only(influxdb: InfluxDB1Server) -> None:
    assert influxdb.url == f"http://127.0.0.1:{influxdb.port}"
    assert listening_addresses(influxdb.port) == {"127.0.0.1"}
    assert listening_addresses(influxdb.rpc_port) == {"127.0.0.1"}
    status, body = http_request(f"{influxdb.url}/ping")
    assert (status, body) == (204, b"")
    assert influxdb.start_seconds is not None


def test_influxdb_write_and_read_back_exact(influx_db: tuple[InfluxDB1Server, str]) -> None:
    server, db = influx_db
    status, body = server.write(
        f'leather,line=a,station=3 temp=21.5,count=42i,ok=true,note="hi" {TS_NS}\n', db
    )
    assert (status, body) == (204, b"")

    rows = server.points("leather", db)
    assert rows == [
        {
            "time": TS_NS,
            "count": 42,
            "line": "a",
            "note": "hi",
            "ok": True,
            "station": "3",
            "temp": 21.5,
        }
    ]
    assert isinstance(rows[0]["count"], int)
    rfc = server.points("leather", db, epoch=None)
    assert rfc[0]["time"] == "2023-11-14T22:13:20.123456789Z"
    assert server.count("leather", db) == 1
    assert server.rows(f"SELECT temp FROM leather WHERE time = {TS_NS}", db, epoch="ns") == [
        {"time": TS_NS, "temp": 21.5}
    ]


def test_influxdb_field_type_conflict_is_partial_write(
    influx_db: tuple[InfluxDB1Server, str],
) -> None:
    server, db = influx_db
    assert server.write("m f=1i 1000\n", db)[0] == 204
    status, body = server.write("m f=1.5 2000\nm f=2i 3000\nother g=1 4000\n", db)
    assert status == 400
    error = json.loads(body)["error"]
    assert error == (
        'partial write: field type conflict: input field "f" on measurement "m" is type '
        "float, already exists as type integer dropped=1"
    )
    # The good lines of the batch were written, only the conflicting one dropped.
    assert server.points("m", db) == [{"time": 1000, "f": 1}, {"time": 3000, "f": 2}]
    assert server.points("other", db) == [{"time": 4000, "g": 1}]


def test_influxdb_string_field_newlines(influx_db: tuple[InfluxDB1Server, str]) -> None:
    server, db = influx_db
    # A raw newline inside a quoted string field value is accepted and returned intact.
    assert server.write('s v="line1\nline2" 1000\n', db) == (204, b"")
    assert server.points("s", db) == [{"time": 1000, "v": "line1\nline2"}]
    # Backslash-n is not an escape in line protocol: it stays two characters.
    assert server.write('s2 v="a\\nb",w="q\\"uote" 1000\n', db) == (204, b"")
    assert server.points("s2", db) == [{"time": 1000, "v": "a\\nb", "w": 'q"uote'}]


def test_influxdb_errors(influx_db: tuple[InfluxDB1Server, str]) -> None:
    server, db = influx_db
    assert (
        http_request(f"{server.url}/api/v2/write?bucket={db}&org=o", method="POST", data=b"m f=1")[
            0
        ]
        == 404
    )
    status, body = server.write("m f=1 1\n", "no_such_db")
    assert status == 404
    assert json.loads(body) == {"error": 'database not found: "no_such_db"'}
    status, body = server.write("m f= 1\n", db)
    assert status == 400
    assert "unable to parse" in json.loads(body)["error"]


def test_influxdb_private_restart_and_crash_keep_port_and_data(
    influxdb_private: InfluxDB1Server,
) -> None:
    server = influxdb_private
    port, url = server.port, server.url
    server.create_database("keep")
    assert server.write(f"m f=1 {TS_NS}\n", "keep")[0] == 204

    server.restart()
    assert (server.port, server.url) == (port, url)
    assert server.points("m", "keep") == [{"time": TS_NS, "f": 1}]

    server.stop()
    server.stop()  # idempotent
    assert not port_open("127.0.0.1", port)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        http_request(f"{url}/ping", timeout=1)

    server.start()
    assert server.write(f"m f=2 {TS_NS + 1}\n", "keep")[0] == 204
    server.kill()  # no clean shutdown: the WAL (fsync delay 0) must still have the point
    server.start()
    assert server.count("m", "keep") == 2


# -- VictoriaMetrics -----------------------------------------------------------------------


def test_victoria_listens_on_loopback_only(victoria: VictoriaMetricsServer) -> None:
    assert listening_addresses(victoria.port) == {"127.0.0.1"}
    assert http_request(f"{victoria.url}/health") == (200, b"OK")


def test_victoria_v2_write_and_export(victoria: VictoriaMetricsServer) -> None:
    status, body = victoria.write_v2(
        f"smoke_vm,line=a temp=21.5,count=42i {TS_NS}\nsmoke_vm,line=b temp=-1 {TS_NS + 10**9}\n"
    )
    assert (status, body) == (204, b"")
    series = victoria.export('{__name__=~"smoke_vm_.*"}')
    got = sorted(
        (s["metric"]["__name__"], s["metric"]["line"], s["timestamps"], s["values"]) for s in series
    )
    ms = TS_NS // 10**6  # VictoriaMetrics keeps milliseconds only
    assert got == [
        ("smoke_vm_count", "a", [ms], [42]),
        ("smoke_vm_temp", "a", [ms], [21.5]),
        ("smoke_vm_temp", "b", [ms + 1000], [-1]),
    ]
    assert all(set(s["metric"]) == {"__name__", "line"} for s in series)


def test_victoria_gzip_and_old_points(victoria: VictoriaMetricsServer) -> None:
    status, _ = victoria.write_v2(
        gzip.compress(b"smoke_gz f=3 1000000000\n"), headers={"Content-Encoding": "gzip"}
    )
    assert status == 204
    # Timestamp 1 s after the epoch is kept thanks to -retentionPeriod=100y.
    assert victoria.samples('{__name__="smoke_gz_f"}') == [("smoke_gz_f", 1000, 3)]
    # A body that claims gzip but is not gzip is a 400 with an explanation.
    status, body = victoria.write_v2(b"smoke_gz f=4 1\n", headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert b"cannot read gzipped influx line protocol data" in body


def test_victoria_skips_bad_lines_silently(victoria: VictoriaMetricsServer) -> None:
    # Unlike InfluxDB, a malformed line is logged and skipped, and the request still 204s.
    status, _ = victoria.write_v2(f"smoke_bad f= 1\nsmoke_bad g=2 {TS_NS}\n")
    assert status == 204
    assert victoria.samples('{__name__=~"smoke_bad_.*"}') == [("smoke_bad_g", TS_NS // 10**6, 2)]


def test_victoria_maps_bool_and_string_fields_to_numbers(victoria: VictoriaMetricsServer) -> None:
    # VictoriaMetrics stores only numbers: true -> 1, and a string field becomes 0 (!).
    status, _ = victoria.write_v2(f'smoke_kinds b=true,s="text",n=2i {TS_NS}\n')
    assert status == 204
    ms = TS_NS // 10**6
    assert victoria.samples('{__name__=~"smoke_kinds_.*"}') == [
        ("smoke_kinds_b", ms, 1),
        ("smoke_kinds_n", ms, 2),
        ("smoke_kinds_s", ms, 0),
    ]


# -- Mosquitto -----------------------------------------------------------------------------


def _mqtt(*args: str, timeout: float = 15) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args}: rc={proc.returncode} {proc.stderr}"
    return proc.stdout


def test_mosquitto_round_trip_and_restart(mosquitto: MosquittoServer) -> None:
    host, port = mosquitto.host, str(mosquitto.port)
    assert listening_addresses(mosquitto.port) == {"127.0.0.1"}
    common = ["-h", host, "-p", port]
    sub = [MOSQUITTO_SUB, *common, "-i", "smoke-sub", "-c", "-q", "1", "-t", "smoke/#"]

    # Register a persistent QoS 1 session, go offline, then publish: the broker queues.
    _mqtt(*sub, "-E")
    _mqtt(MOSQUITTO_PUB, *common, "-q", "1", "-t", "smoke/a", "-m", "hello 1")
    out = _mqtt(*sub, "-v", "-C", "1", "-W", "10")
    assert out == "smoke/a hello 1\n"

    # Queue another one, restart the broker: same port, the queued message survives.
    _mqtt(MOSQUITTO_PUB, *common, "-q", "1", "-t", "smoke/b", "-m", "after restart")
    mosquitto.restart()
    assert mosquitto.port == int(port)
    assert listening_addresses(mosquitto.port) == {"127.0.0.1"}
    out = _mqtt(*sub, "-v", "-C", "1", "-W", "10")
    assert out == "smoke/b after restart\n"

    mosquitto.stop()
    mosquitto.stop()  # idempotent
    assert not port_open(host, int(port))


def test_mosquitto_extra_config(tmp_path: Path) -> None:
    with MosquittoServer(tmp_path, extra_config="max_packet_size 100\n") as broker:
        common = ["-h", broker.host, "-p", str(broker.port)]
        small = subprocess.run(
            [MOSQUITTO_PUB, *common, "-q", "1", "-t", "t", "-m", "x" * 10],
            capture_output=True,
            timeout=15,
            check=False,
        )
        big = subprocess.run(
            [MOSQUITTO_PUB, *common, "-q", "1", "-t", "t", "-m", "x" * 500],
            capture_output=True,
            timeout=15,
            check=False,
        )
    assert small.returncode == 0
    assert big.returncode != 0
    assert "max_packet_size 100" in (tmp_path / "mosquitto.conf").read_text()
    assert not broker.running


# -- socat serial pair ---------------------------------------------------------------------


def _write_frames(pair: SerialPair, data: bytes) -> None:
    with open(pair.emulator, "wb", buffering=0) as emu:
        emu.write(data)


def test_serial_pair_both_directions(serial_pair: SerialPair) -> None:
    assert os.path.islink(serial_pair.device)
    assert os.path.islink(serial_pair.emulator)
    with serial.Serial(serial_pair.device, 115200, timeout=1) as dev:
        frame = bytes(range(256)) + b"\r\nT=21.5;H=40\n"
        _write_frames(serial_pair, frame)  # raw: no byte translated, CR LF intact
        assert dev.read(len(frame)) == frame
        # The emulator closing its end is no unplug: the pair keeps working.
        _write_frames(serial_pair, b"second\n")
        assert dev.readline() == b"second\n"
        # And the other way: what the agent writes reaches the emulator.
        with serial.Serial(serial_pair.emulator, 115200, timeout=1) as emu:
            dev.write(b"PING\n")
            assert emu.readline() == b"PING\n"


def test_serial_pair_unplug_and_replug(serial_pair: SerialPair) -> None:
    device = serial_pair.device
    with serial.Serial(device, 115200, timeout=1) as dev:
        _write_frames(serial_pair, b"before\n")
        assert dev.readline() == b"before\n"
        serial_pair.stop()  # unplug
        assert not os.path.exists(device)
        assert not os.path.exists(serial_pair.emulator)
        # The open port now fails like an unplugged USB adapter.
        # (the slave's read() returns EOF at once; pyserial turns that into this error).
        with pytest.raises(serial.SerialException, match="returned no data"):
            dev.read(1)
    with pytest.raises(serial.SerialException):
        serial.Serial(device, 115200, timeout=1)

    serial_pair.stop()  # idempotent
    serial_pair.start()  # replug, same paths
    assert serial_pair.device == device
    with serial.Serial(device, 115200, timeout=1) as dev:
        _write_frames(serial_pair, b"after\n")
        assert dev.readline() == b"after\n"


# -- context managers, missing binaries -----------------------------------------------------


def test_context_managers_start_and_stop(tmp_path: Path) -> None:
    with VictoriaMetricsServer(tmp_path / "vm") as vm, SerialPair(tmp_path / "sp") as sp:
        assert vm.running
        assert sp.running
        assert http_request(f"{vm.url}/health") == (200, b"OK")
        vm_port = vm.port
    assert not vm.running
    assert not sp.running
    assert not port_open("127.0.0.1", vm_port)
    assert not os.path.exists(sp.device)
    assert (tmp_path / "vm" / "victoria-metrics.log").exists()


def test_missing_binary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InfluxDB1Server, "binary", str(tmp_path / "nope" / "influxd"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"apt-get install -y influxdb"):
        InfluxDB1Server(tmp_path / "i")


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    # Two brokers on one port: the second cannot bind and start() says why.
    with MosquittoServer(tmp_path / "a") as first:
        second = MosquittoServer(tmp_path / "b")
        second.port = first.port
        try:
            with pytest.raises(RuntimeError, match=r"(?s)mosquitto exited.*Address already in use"):
                second.start()
            assert not second.running
        finally:
            second.stop()
        assert first.running


# -- asyncio task-leak guard ---------------------------------------------------------------


async def test_guard_allows_tasks_that_finish() -> None:
    task = asyncio.create_task(asyncio.sleep(0.01))
    await task
    assert task.done()


def test_guard_fails_leaking_async_tests(tmp_path: Path) -> None:
    here = Path(__file__).parent
    shutil.copy(here / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(here / "servers.py", tmp_path / "servers.py")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_leaks.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import pytest

            async def forever():
                await asyncio.Event().wait()

            async def test_leaks():
                asyncio.create_task(forever(), name="leaky-one")

            async def test_clean():
                t = asyncio.create_task(forever())
                t.cancel()

            @pytest.fixture
            async def agent():
                task = asyncio.create_task(forever(), name="agent")
                yield task
                task.cancel()

            async def test_fixture_stops_its_task_in_teardown(agent):
                assert not agent.done()

            @pytest.mark.allow_leaked_tasks
            async def test_allowed():
                asyncio.create_task(forever())

            def test_sync_uses_asyncio_run():
                assert asyncio.run(asyncio.sleep(0, result=7)) == 7

            def test_sync_no_loop_installed():
                with pytest.raises(RuntimeError):
                    asyncio.get_running_loop()
            """
        )
    )
    proc = subprocess.run(  # the timeout is the check that leaked tasks do not hang the run
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "6 passed, 1 error" in out, out  # the leaky test passes, its teardown errors
    assert "ERROR test_leaks.py::test_leaks" in out, out
    assert "test left 1 asyncio task(s) running" in out, out
    assert "leaky-one" in out, out
