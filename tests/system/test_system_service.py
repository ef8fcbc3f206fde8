"""driftgate as a systemd service on a real (containerised) bookworm gateway: installed by
install.sh, enabled, ready, restarted without loss, watched by the watchdog, never restarted
into a bad config, and sandboxed (systemd-analyze security)."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from container import Container
from floor import (
    CONFIG,
    SERIAL_DEVICES,
    STATE,
    STATUS_PORT,
    config,
    drop_in,
    humidity_in_influx,
    probe,
    start_probe,
    wait_connected,
    write_config,
)
from servers import InfluxDB1Server, MosquittoServer
from spoolfile import committed_lines
from test_mqtt import PUB, TASMOTA, retained
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.timeout(1800),  # the first test may build the cached root (minutes)
    # One worker under pytest-xdist runs them all, one after another: the session's one
    # install.sh run and the cached root are shared, and the machine boots one gateway at a time.
    pytest.mark.xdist_group("system"),
]


def start(gw: Container, text: str) -> None:
    write_config(gw, text)
    start_probe(gw)
    drop_in(gw, "pty", SERIAL_DEVICES)
    gw.sh("systemctl enable --now driftgate", timeout=120)
    wait_connected(gw)


def test_the_service_runs_as_driftgate_and_readings_reach_influxdb(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    start(gateway, config(influx.url, db))
    # Type=notify: `enable --now` returned after READY=1, so the unit is active at once.
    assert gateway.show("driftgate", "ActiveState") == "active"
    assert gateway.show("driftgate", "SubState") == "running"
    assert gateway.show("driftgate", "Type") == "notify"
    main = gateway.show("driftgate", "MainPID")
    uid = gateway.sh(f"stat -c %U /proc/{main}").stdout.strip()
    assert uid == "driftgate"
    groups = gateway.sh(f"grep ^Groups: /proc/{main}/status").stdout
    dialout = gateway.sh("getent group dialout | cut -d: -f3").stdout.strip()
    assert dialout in groups.split()

    sent = probe(gateway).send(20)
    wait_for(lambda: humidity_in_influx(influx, db) == sent, 30, "20 readings in InfluxDB")
    # STATUS= lines: what `systemctl status` shows under the unit.
    wait_for(lambda: "readings/s" in gateway.show("driftgate", "StatusText"), 15, "STATUS=")
    status = gateway.show("driftgate", "StatusText")
    assert "InfluxDB ok" in status, status
    assert gateway.show("driftgate", "WatchdogUSec") == "30s"
    # The status page inside the sandbox: /healthz from the host (the same loopback), and
    # `driftgate status` as the operate.md says to run it.
    with urllib.request.urlopen(f"http://127.0.0.1:{STATUS_PORT}/healthz", timeout=10) as page:
        assert page.status == 200
    shown = gateway.sh(f"runuser -u driftgate -- driftgate status -c {CONFIG}").stdout
    assert "driftgate lab / gw-system" in shown, shown
    assert "source probe (serial)" in shown, shown


def test_mqtt_readings_reach_influxdb_through_the_sandbox(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str], mosquitto: MosquittoServer
) -> None:
    """RestrictAddressFamilies= and the system call filter leave the broker reachable: a
    Tasmota plug's message (QoS 1) reaches InfluxDB, and the agent says it is online."""
    influx, db = influx_db
    mqtt = f"""\
mqtt:
  host: {mosquitto.host}
  port: {mosquitto.port}
sources:
  - type: mqtt
    name: plugs
    profile: tasmota-sht3x
    topics: ["factory/{{zone}}/tele/{{sensor}}/SENSOR"]
"""
    write_config(gateway, config(influx.url, db, probe=False, extra=mqtt))
    gateway.sh("systemctl enable --now driftgate", timeout=120)
    topic = "driftgate/lab/gw-system/status"
    wait_for(lambda: retained(mosquitto, topic) == "online", 30, "the agent online on MQTT")
    publish = [PUB, "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1"]
    subprocess.run([*publish, "-t", "factory/cutting/tele/plug1/SENSOR", "-m", TASMOTA],
                   check=True, timeout=10)  # fmt: skip

    def cutting() -> list[float]:
        rows = influx.points("climate", db, where="\"sensor\" = 'plug1'")
        return [row["humidity_rh"] for row in rows if row.get("humidity_rh") is not None]

    wait_for(lambda: cutting() == [48.2], 30, "the plug's humidity in InfluxDB")
    gateway.sh("systemctl stop driftgate", timeout=60)
    assert retained(mosquitto, topic) == "offline"  # said on the way out, not by the will


def test_restart_loses_nothing_from_the_spool(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    missing = db + "_later"  # created only after the restart: until then all stays spooled
    start(gateway, config(influx.url, missing))
    device = probe(gateway)
    before = device.send(30)
    state = gateway.on_disk(STATE)

    def spooled() -> int:
        return sum("humidity_rh=" in line for line in committed_lines(state, "climate"))

    wait_for(lambda: spooled() == 30, 30, "30 readings spooled")
    gateway.sh("systemctl restart driftgate", timeout=120)
    assert spooled() == 30
    # READY=1 means the sources started, not that the port is open yet: a serial device's
    # bytes are read only while the port is open (the agent flushes what came before).
    connected = '"event": "serial device connected"'
    wait_for(lambda: gateway.journal("driftgate").count(connected) == 2, 30, "the port again")
    after = device.send(30)
    influx.create_database(missing)
    try:
        want = before + after
        wait_for(lambda: humidity_in_influx(influx, missing) == want, 60, "all 60 readings")
    finally:
        influx.drop_database(missing)
    assert gateway.show("driftgate", "NRestarts") == "0"  # a restart asked for, not a failure
    # Lines carry their priority for journald: the error of the missing database is selected.
    errors = gateway.sh("journalctl -u driftgate -p warning -o cat --no-pager").stdout
    assert f"database '{missing}' not found: create it with influx " in errors
    assert f"-execute 'CREATE DATABASE {missing}', or set influx.create_database: true" in errors
    assert '"event": "spool opened"' not in errors  # info


def test_the_sandbox_opens_only_the_serial_devices_it_allows(gateway: Container) -> None:
    """A pty is not a serial adapter: without the drop-in the unit's device policy refuses it
    (DevicePolicy=closed, DeviceAllow= for ttyUSB, ttyACM, ttyAMA, ttyS and GPIO)."""
    # systemd enforces device policies with BPF on cgroup v2 (a gateway's bookworm) or the
    # cgroup v1 devices controller; a container may have neither, and then allows every device.
    probe_policy = "systemd-run --quiet --wait --pipe -p DevicePolicy=strict head -c1 /dev/zero"
    if gateway.sh(probe_policy, check=False).returncode == 0:
        pytest.skip(
            "this machine's containers cannot enforce DevicePolicy= (no BPF device control, "
            "a read-only devices controller): /dev/zero opened under DevicePolicy=strict"
        )
    write_config(gateway, config("http://127.0.0.1:9", "nowhere"))
    start_probe(gateway)
    gateway.sh("systemctl enable --now driftgate", timeout=120)
    wait_for(lambda: "serial device not available" in gateway.journal("driftgate"), 30,
             "the refusal")  # fmt: skip
    journal = gateway.journal("driftgate")
    assert "Operation not permitted" in journal, journal
    assert gateway.sh("runuser -u driftgate -- sh -c ': < /run/probe/ttyUSB0'").returncode == 0


def test_a_wedged_event_loop_is_killed_by_the_watchdog_and_restarted(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    # The hook (agent/runtime/systemd.py) is off unless this variable names a file; a short
    # watchdog and restart delay keep the test short.
    drop_in(
        gateway,
        "wedge",
        f"WatchdogSec=3s\nRestartSec=1s\nEnvironment=DRIFTGATE_DEBUG_WEDGE_FILE={STATE}/wedge\n",
    )
    start(gateway, config(influx.url, db))
    first = gateway.show("driftgate", "MainPID")
    gateway.sh(f"touch {STATE}/wedge")
    wait_for(lambda: gateway.show("driftgate", "NRestarts") == "1", 30, "the watchdog restart")
    wait_for(lambda: gateway.show("driftgate", "ActiveState") == "active", 30, "active again")
    assert gateway.show("driftgate", "MainPID") != first
    journal = gateway.journal("driftgate")
    assert "Watchdog timeout (limit 3s)!" in journal
    assert "Failed with result 'watchdog'" in journal
    # PYTHONFAULTHANDLER in the unit: the stack of the wedged loop is in the journal.
    assert "in wedge_forever" in journal
    sent = probe(gateway).send(5)
    wait_for(lambda: humidity_in_influx(influx, db) == sent, 30, "readings after the restart")


def test_a_config_error_exits_2_and_is_not_restarted(gateway: Container) -> None:
    drop_in(gateway, "fast", "RestartSec=1s\n")
    write_config(gateway, "site: lab\ngateway: gw-system\nspool:\n  max_byte: 1MiB\n")
    result = gateway.sh("systemctl enable --now driftgate", check=False, timeout=120)
    assert result.returncode != 0
    gateway.sh("sleep 3")  # three times RestartSec: a restart loop would have begun
    assert gateway.show("driftgate", "ActiveState") == "failed"
    assert gateway.show("driftgate", "ExecMainStatus") == "2"
    assert gateway.show("driftgate", "NRestarts") == "0"
    journal = gateway.journal("driftgate")
    assert f"{CONFIG}:4: spool.max_byte: unknown key 'max_byte'; did you mean 'max_bytes'?" in (
        journal
    )


def test_systemd_analyze_security_rates_the_unit_as_in_the_readme(gateway: Container) -> None:
    out = gateway.sh("systemd-analyze security driftgate --no-pager").stdout
    found = re.search(r"Overall exposure level for driftgate\.service: (\d+\.\d+)", out)
    assert found is not None, out
    score = float(found.group(1))
    assert score <= 2.0, out
    readme = (REPO / "README.md").read_text()
    assert f"exposure level {score:.1f}" in readme, f"README must state the score {score}"
