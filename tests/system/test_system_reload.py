"""`systemctl reload driftgate` on a real systemd: a changed config is applied without a
restart, an invalid one is refused (reload exits non-zero, the problem in the journal) and the
running config goes on."""

from __future__ import annotations

import pytest
from container import Container
from floor import (
    CONFIG,
    SERIAL_DEVICES,
    config,
    drop_in,
    humidity_in_influx,
    probe,
    start_probe,
    wait_connected,
    write_config,
)
from servers import InfluxDB1Server
from waiting import wait_for

pytestmark = [
    pytest.mark.timeout(1800),  # the first test may build the cached root (minutes)
    # One worker under pytest-xdist runs them all, one after another: the session's one
    # install.sh run and the cached root are shared, and the machine boots one gateway at a time.
    pytest.mark.xdist_group("system"),
]

# The password comes as a systemd credential: the reload must read the config with it, where
# an ExecReload= command of systemd 252 cannot (InfluxDB here does not check it).
CREDENTIAL = "LoadCredential=influx_password:/etc/driftgate/influx-password\n"
WITH_USER = "  username: driftgate\n"

SIMULATED = """\
  - type: simulated
    name: workshop
    interval: 1s
"""


def with_user(text: str) -> str:
    return text.replace("  max_backoff: 1s\n", "  max_backoff: 1s\n" + WITH_USER)


def started(gw: Container, influx_url: str, db: str) -> str:
    gw.sh("install -m 0600 -o driftgate -g driftgate /dev/null /etc/driftgate/influx-password "
          "&& echo -n s3cret > /etc/driftgate/influx-password")  # fmt: skip
    drop_in(gw, "site", SERIAL_DEVICES + CREDENTIAL)
    write_config(gw, with_user(config(influx_url, db)))
    start_probe(gw)
    gw.sh("systemctl enable --now driftgate", timeout=120)
    wait_connected(gw)
    return gw.show("driftgate", "MainPID")


def workshop_points(influx: InfluxDB1Server, db: str) -> int:
    rows = influx.rows('SELECT count("humidity_rh") FROM "climate" WHERE "zone" = \'cutting\'', db)
    return int(rows[0]["count"]) if rows else 0


def test_reload_applies_a_changed_config_without_a_restart(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    pid = started(gateway, influx.url, db)
    device = probe(gateway)
    sent = device.send(10)
    wait_for(lambda: humidity_in_influx(influx, db) == sent, 30, "the probe's readings")

    # A simulated workshop source added: its cutting room shows up in InfluxDB.
    write_config(gateway, with_user(config(influx.url, db) + SIMULATED))
    result = gateway.sh("systemctl reload driftgate", timeout=120)
    assert gateway.show("driftgate", "MainPID") == pid
    journal = gateway.journal("driftgate")
    assert "configuration reloaded; applied: sources.workshop (added)" in journal, journal
    assert result.returncode == 0
    wait_for(lambda: workshop_points(influx, db) > 0, 30, "the added source's readings")
    # The probe was not touched: it goes on, nothing of it lost.
    sent += device.send(10)
    wait_for(lambda: humidity_in_influx(influx, db)[: len(sent)] == sent, 30, "probe readings")
    assert gateway.show("driftgate", "NRestarts") == "0"


def test_an_invalid_config_is_refused_and_the_running_one_goes_on(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    pid = started(gateway, influx.url, db)
    good = with_user(config(influx.url, db))
    write_config(gateway, good.replace("reconnect_max: 1s", "reconnect_max: 1 second"))
    result = gateway.sh("systemctl reload driftgate", check=False, timeout=120)
    assert result.returncode != 0
    journal = gateway.journal("driftgate")
    line = (
        f"{CONFIG}:18: sources[0].reconnect_max: '1 second' is not a duration: "
        "use e.g. 30s, 5m, 2h, 7d"
    )
    assert line in journal, journal
    assert "configuration refused: the running one stays" in journal
    assert gateway.show("driftgate", "ActiveState") == "active"
    assert gateway.show("driftgate", "MainPID") == pid
    sent = probe(gateway).send(10)
    wait_for(lambda: humidity_in_influx(influx, db) == sent, 30, "readings after the refusal")
