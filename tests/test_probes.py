"""`check-config --online` against the real servers: InfluxDB 1.6 (open, and with logins), a
Mosquitto whose dynamic-security plugin refuses logins and subscriptions, and socat ptys.
Each thing the agent needs is reported ok, or what is wrong and what to do."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import (
    InfluxDB1Server,
    MosquittoServer,
    SerialPair,
    http_request,
    mosquitto_logins,
)

from agent.cli import main as cli_main
from agent.config import SerialSourceConfig
from agent.runtime.probes import Probe, probe_serial

ADMIN = ("admin", "admin-secret")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f"site: s1\ngateway: gw1\nstate_dir: {tmp_path / 'state'}\n{text}")
    return path


def online(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli_main(["check-config", "-c", str(path), "--online"])
    out = capsys.readouterr().out.splitlines()
    return code, [line for line in out if line.startswith(("online: ", "OK: ", "NOT OK: "))]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DRIFTGATE_INFLUX_PASSWORD", "DRIFTGATE_INFLUX_TOKEN", "DRIFTGATE_MQTT_PASSWORD",
                 "CREDENTIALS_DIRECTORY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_everything_reachable_is_ok(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    influx_db: tuple[InfluxDB1Server, str],
    mosquitto: MosquittoServer,
    serial_pair: SerialPair,
) -> None:
    server, db = influx_db
    path = write_config(
        tmp_path,
        f"influx: {{url: '{server.url}', database: {db}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
        "sources:\n"
        "  - {type: mqtt, name: tasmota, profile: tasmota-sht3x, zone: finishing}\n"
        f"  - {{type: serial, name: probe, profile: sht4x-serial, port: '{serial_pair.device}'}}\n",
    )
    code, lines = online(path, capsys)
    assert lines == [
        f"online: influx {server.url} database {db}: ok: without a login may write to "
        f"database '{db}'",
        f"online: mqtt 127.0.0.1:{mosquitto.port}: ok: anonymous logged in; 4 subscriptions "
        "granted: tele/+/SENSOR, driftgate/s1/context/#, driftgate/s1/gw1/incidents/+/ack, "
        "$SYS/broker/publish/messages/dropped",
        f"online: serial probe {serial_pair.device}: ok: user {_me()} may open it",
        f"OK: 2 sources, 0 channels, influx v1 → {server.url}",
    ]
    assert code == 0
    assert server.count("driftgate_agent", db) == 0  # the empty write wrote nothing


@pytest.fixture
def influx_with_logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """An InfluxDB with authentication: an admin, and `gw` who may write to `plant` only."""
    server = InfluxDB1Server(tmp_path_factory.mktemp("influx-auth"), admin=ADMIN).start()
    server.create_database("plant")
    server.create_database("office")
    server.query("CREATE USER gw WITH PASSWORD 'right'")
    server.query('GRANT WRITE ON "plant" TO "gw"')
    yield server
    server.stop()


@pytest.fixture
def broker_with_logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A Mosquitto where gw1 may subscribe to Tasmota's topics and driftgate's, nothing else."""
    workdir = tmp_path_factory.mktemp("mosquitto-logins")
    logins = mosquitto_logins(
        workdir, {"gw1": ("mqtt-secret", ["tele/+/SENSOR", "driftgate/#", "$SYS/#"])}
    )
    server = MosquittoServer(workdir, logins).start()
    yield server
    server.stop()


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("database", "user", "password", "create", "expected"),
    [
        ("plant", "gw", "right", False, "ok: user 'gw' may write to database 'plant'"),
        ("plant", "gw", "wrong", False,
         "NOT OK: InfluxDB refused user 'gw' (authorization failed): check the password "
         "(password_file, DRIFTGATE_INFLUX_PASSWORD or the influx_password credential) and the "
         "user (SHOW USERS)"),
        ("office", "gw", "right", False,
         "NOT OK: user 'gw' may not write to database 'office': as an InfluxDB admin, GRANT "
         "WRITE ON \"office\" TO \"gw\""),
        ("missing", "admin", "admin-secret", False,
         "NOT OK: database 'missing' does not exist: create it with influx -host 127.0.0.1 "
         "-port {port} -execute 'CREATE DATABASE missing', or set influx.create_database: true"),
        ("missing", "admin", "admin-secret", True,
         "ok: database 'missing' does not exist yet: the agent creates it at its first write "
         "(influx.create_database; the user must be an InfluxDB admin, else run influx -host "
         "127.0.0.1 -port {port} -execute 'CREATE DATABASE missing')"),
    ],
)  # fmt: skip
def test_influxdb_login_permission_and_database(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    influx_with_logins: InfluxDB1Server,
    database: str,
    user: str,
    password: str,
    create: bool,
    expected: str,
) -> None:
    server = influx_with_logins
    secret = tmp_path / "influx-password"
    secret.write_text(password)
    secret.chmod(0o600)
    path = write_config(
        tmp_path,
        f"influx:\n  url: {server.url}\n  database: {database}\n  username: {user}\n"
        f"  password_file: {secret}\n  create_database: {str(create).lower()}\n",
    )
    code, lines = online(path, capsys)
    assert lines[0] == f"online: influx {server.url} database {database}: " + expected.format(
        port=server.port
    )
    assert code == (0 if expected.startswith("ok") else 1)
    assert "missing" not in server.databases()  # a check creates nothing


@pytest.mark.usefixtures("clean_env")
def test_the_broker_refuses_a_subscription_and_a_login(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broker_with_logins: MosquittoServer
) -> None:
    broker = broker_with_logins
    secret = tmp_path / "mqtt-password"
    secret.write_text("mqtt-secret")
    secret.chmod(0o600)
    path = write_config(
        tmp_path,
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw1, password_file: {secret}}}\n"
        "sources:\n"
        "  - {type: mqtt, name: tasmota, profile: tasmota-sht3x, zone: finishing}\n"
        "  - {type: mqtt, name: esphome, profile: sht4x-esphome, zone: drying}\n",
    )
    code, lines = online(path, capsys)
    where = f"online: mqtt 127.0.0.1:{broker.port}"
    assert lines[0] == f"{where}: ok: user 'gw1' logged in"
    assert lines[1] == (
        f"{where} subscribe +/sensor/+/state: NOT OK: the broker refused user 'gw1' the "
        "subscription for source esphome: Not authorized (135); allow it in the broker's ACL "
        "(read access to the topic)"
    )
    assert len(lines) == 3, lines  # driftgate/# and $SYS/# are allowed: nothing else refused
    assert lines[-1].startswith("NOT OK: 1 of 2 online checks failed; the file itself is valid")
    assert code == 1

    secret.write_text("not-the-password")
    code, lines = online(path, capsys)
    assert lines[0] == (
        f"{where}: NOT OK: the broker refused the login of user 'gw1': [code:135] Not "
        "authorized; check mqtt.username and the password (password_file, "
        "DRIFTGATE_MQTT_PASSWORD or the mqtt_password credential) and the broker's password file"
    )
    assert code == 1


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _probe_as_nobody(sc: SerialSourceConfig) -> Probe:
    """probe_serial as an unprivileged user (root may open anything): in a forked child."""
    if os.geteuid() != 0:
        return probe_serial(sc)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, probe, report, exit without cleanup
        try:
            os.setgid(65534)
            os.setuid(65534)
            probe = probe_serial(sc)
            os.write(write, json.dumps([probe.target, probe.ok, probe.detail]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    os.waitpid(pid, 0)
    target, ok, detail = json.loads(data)
    return Probe(target, ok, detail)


def test_serial_ports(tmp_path: Path, serial_pair: SerialPair) -> None:
    def source(port: str) -> SerialSourceConfig:
        return SerialSourceConfig(type="serial", name="probe", profile="sht4x-serial", port=port)

    assert probe_serial(source(serial_pair.device)).ok
    missing = probe_serial(source(str(tmp_path / "ttyUSB9")))
    assert not missing.ok
    assert missing.detail.startswith("no such device: unplugged, or the path is wrong (")
    assert missing.detail.endswith("); fix sources[].port")
    plain = tmp_path / "not-a-port"
    plain.write_text("")
    assert str(probe_serial(source(str(plain)))) == (
        f"serial probe {plain}: NOT OK: not a serial device: fix sources[].port"
    )
    pty = Path(os.path.realpath(serial_pair.device))  # /dev/pts/N: the test's tmp dir is private
    mode = pty.stat().st_mode
    pty.chmod(0o600)
    try:
        denied = _probe_as_nobody(source(str(pty)))
    finally:
        pty.chmod(stat.S_IMODE(mode))
    assert not denied.ok
    user = "nobody" if os.geteuid() == 0 else _me()
    assert denied.detail.startswith(f"user {user} may not open it (crw-------")
    assert "sudo usermod -aG " in denied.detail
    assert denied.detail.endswith(f" {user}, then restart the service")


def test_http_request_helper_logs_in(influx_with_logins: InfluxDB1Server) -> None:
    """The test servers' own helper: with auth on, an anonymous query is refused."""
    status, _ = http_request(f"{influx_with_logins.url}/query?q=SHOW%20DATABASES")
    assert status == 401
    assert "plant" in influx_with_logins.databases()


async def test_modbus_buses(tmp_path: Path, serial_pair: SerialPair) -> None:
    """A Modbus bus is probed as what it runs on: an RTU bus's serial port, a TCP device's
    connection (the emulator on the loopback; a closed port after it stops)."""
    from servers import free_port

    from agent.config.models import ModbusSourceConfig
    from agent.ingest.registers import load_register_map
    from agent.runtime.probes import probe_modbus_tcp
    from agent.sim.modbus import ModbusEmulator, fixed_slave

    device = {"slave": 1, "profile": "xy-md02"}
    rtu = ModbusSourceConfig.model_validate(
        {"type": "modbus", "name": "bus1", "port": serial_pair.device, "devices": [device]}
    )
    assert str(probe_serial(rtu)).startswith(f"modbus bus1 {serial_pair.device}: ok: user ")
    port = free_port()
    tcp = ModbusSourceConfig.model_validate(
        {"type": "modbus", "name": "bus2", "host": "127.0.0.1", "tcp_port": port,
         "devices": [device]}
    )  # fmt: skip
    slave = fixed_slave(load_register_map("xy-md02"), 1, {"temperature": 21.0, "humidity": 50.0})
    async with ModbusEmulator([slave], host="127.0.0.1", tcp_port=port):
        assert str(await probe_modbus_tcp(tcp)) == (
            f"modbus bus2 127.0.0.1:{port}: ok: takes a connection"
        )
    refused = await probe_modbus_tcp(tcp)
    assert str(refused) == (
        f"modbus bus2 127.0.0.1:{port}: NOT OK: cannot connect (Connection refused): is the "
        "device on, and sources[].host and tcp_port right?"
    )
