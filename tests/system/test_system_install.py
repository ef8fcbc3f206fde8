"""deploy/install.sh on a fresh bookworm gateway: a dry run changes nothing, the install runs
to completion with the distribution's Python and checks itself as the service user, a second
run upgrades in place keeping config and state, and --uninstall keeps the state unless
--purge."""

from __future__ import annotations

import pytest
from container import Container
from floor import (
    CONFIG,
    INSTALL,
    SERIAL_DEVICES,
    STATE,
    WHEELS,
    Installed,
    config,
    drop_in,
    start_probe,
    write_config,
)
from servers import InfluxDB1Server
from spoolfile import committed_lines
from waiting import wait_for

pytestmark = [
    pytest.mark.timeout(1800),  # the first test may build the cached root (minutes)
    # One worker under pytest-xdist runs them all, one after another: the session's one
    # install.sh run and the cached root are shared, and the machine boots one gateway at a time.
    pytest.mark.xdist_group("system"),
]

STEPS = (
    "== check Python (/usr/bin/python3)",
    "== install driftgate 0.1.0",
    "== the service user driftgate",
    "== the program in a new virtualenv: /opt/driftgate/venv-0.1.0-",
    "== check: driftgate --version as driftgate",
    "== switch /opt/driftgate/venv to the new virtualenv",
    "== configuration in /etc/driftgate",
    "== state in /var/lib/driftgate",
    "== the systemd unit /etc/systemd/system/driftgate.service",
)


def test_a_dry_run_prints_every_step_and_changes_nothing(installed: Installed) -> None:
    for step in STEPS:
        assert step in installed.dry_run, installed.dry_run
    assert "+ useradd --system --user-group --home-dir /var/lib/driftgate" in installed.dry_run
    assert f"--no-index --find-links {WHEELS}" in installed.dry_run
    assert "dry run: nothing was changed" in installed.dry_run
    assert installed.dry_run_left == []


def test_install_runs_to_completion_and_checks_itself_as_the_service_user(
    installed: Installed, gateway: Container
) -> None:
    out = installed.output
    for step in STEPS:
        assert step in out, out
    assert "Python 3.11" in out  # Debian's own /usr/bin/python3
    assert "\ndriftgate 0.1.0\n" in out  # `driftgate --version` run as driftgate
    assert "driftgate 0.1.0 installed. Next:" in out
    venv = gateway.sh("cat /opt/driftgate/venv/pyvenv.cfg").stdout
    assert "command = /usr/bin/python3 -m venv /opt/driftgate/venv-0.1.0-" in venv
    assert gateway.sh("driftgate --version").stdout.strip() == "driftgate 0.1.0"
    assert gateway.sh("stat -c '%U:%G %a' /etc/driftgate /etc/driftgate/agent.yaml "
                      "/var/lib/driftgate").stdout.split("\n")[:3] == [
        "root:driftgate 750", "root:driftgate 640", "driftgate:driftgate 750",
    ]  # fmt: skip
    # The extras the README's commands need: replay --plot, report --pdf (the container has no
    # libpango: install.sh says what report --pdf needs; the HTML report works without it).
    gateway.sh("runuser -u driftgate -- /opt/driftgate/venv/bin/python -c 'import matplotlib'")
    gateway.sh("runuser -u driftgate -- /opt/driftgate/venv/bin/python -m pip show weasyprint")
    assert "driftgate report --pdf needs Debian's libpango-1.0-0" in out
    assert gateway.show("driftgate", "UnitFileState") == "disabled"  # enabled by the admin


def _state_files(gw: Container) -> dict[str, str]:
    listing = gw.sh(f"cd {STATE} && find . -type f -name '*.json' | sort | xargs sha256sum")
    return dict(reversed(line.split()) for line in listing.stdout.splitlines())


def test_a_second_install_upgrades_in_place_and_keeps_config_and_state(
    gateway: Container, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    influx, db = influx_db
    missing = db + "_later"  # lines stay in the spool: the upgrade must keep them
    text = config(influx.url, missing) + "# a local comment the upgrade must keep\n"
    write_config(gateway, text)
    drop_in(gateway, "pty", SERIAL_DEVICES)
    start_probe(gateway)
    gateway.sh("systemctl enable --now driftgate", timeout=120)
    # State the CLI makes: a production context, an approved colour reference, an incident
    # acknowledged (incidents.sqlite), besides the spool the agent writes.
    gateway.sh("runuser -u driftgate -- driftgate context set --state-dir /var/lib/driftgate "
               "--line L2 lot=LOT-7")  # fmt: skip
    gateway.sh(
        f"install -d -o driftgate -g driftgate {STATE}/references && "
        f'echo \'{{"sku": "4711"}}\' > {STATE}/references/4711--strap.json && '
        f"echo '{{}}' > {STATE}/baselines.json && chown driftgate: {STATE}/references/* "
        f"{STATE}/baselines.json"
    )
    state = gateway.on_disk(STATE)
    wait_for(lambda: any(committed_lines(state)), 30, "a line in the spool")
    gateway.sh("systemctl stop driftgate")  # the spool holds what it holds, unforwarded
    spooled = committed_lines(state)
    files = _state_files(gateway)
    gateway.sh("systemctl start driftgate", timeout=120)
    first_venv = gateway.sh("readlink /opt/driftgate/venv").stdout.strip()
    pid = gateway.show("driftgate", "MainPID")

    out = gateway.sh(f"{INSTALL} --wheels {WHEELS}", timeout=900).stdout
    assert "== upgrade driftgate to 0.1.0" in out
    assert "kept /etc/driftgate/agent.yaml" in out
    assert "== restart the running service on the new version" in out
    assert gateway.on_disk(CONFIG).read_text() == text
    venv = gateway.sh("readlink /opt/driftgate/venv").stdout.strip()
    assert venv != first_venv
    assert gateway.sh(f"test -e /opt/driftgate/{first_venv}", check=False).returncode != 0
    assert gateway.show("driftgate", "ActiveState") == "active"
    assert gateway.show("driftgate", "MainPID") != pid
    exe = gateway.show("driftgate", "ExecMainPID")
    assert venv in gateway.sh(f"cat /proc/{exe}/cmdline | tr '\\0' ' '").stdout
    after = _state_files(gateway)
    assert {k: v for k, v in after.items() if k in files} == files
    assert committed_lines(state)[: len(spooled)] == spooled  # nothing forwarded, none lost
    assert gateway.on_disk(f"{STATE}/incidents.sqlite").exists()


def test_uninstall_keeps_config_and_state_unless_purge(gateway: Container) -> None:
    write_config(gateway, config("http://127.0.0.1:9", "nowhere", probe=False))
    gateway.sh("systemctl enable --now driftgate", timeout=120)
    gateway.sh(f"test -s {STATE}/spool.sqlite")

    out = gateway.sh(f"{INSTALL} --uninstall").stdout
    assert "+ systemctl disable --now driftgate.service" in out
    assert gateway.show("driftgate", "LoadState") == "not-found"
    for gone in ("/opt/driftgate", "/usr/local/bin/driftgate",
                 "/etc/systemd/system/driftgate.service"):  # fmt: skip
        assert gateway.sh(f"test -e {gone}", check=False).returncode != 0, gone
    gateway.sh(f"test -s {STATE}/spool.sqlite && test -s {CONFIG} && id driftgate")

    out = gateway.sh(f"{INSTALL} --uninstall --purge").stdout
    assert "driftgate removed, with its configuration and state." in out
    for gone in (STATE, "/etc/driftgate"):
        assert gateway.sh(f"test -e {gone}", check=False).returncode != 0, gone
    assert gateway.sh("id driftgate", check=False).returncode != 0
