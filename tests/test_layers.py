"""One config template for many gateways: ${VAR} substitution and conf.d/ merged in name order,
every problem naming the file, line and key that caused it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.config import load_config
from agent.config.loader import load_config_files
from agent.errors import ConfigError

TEMPLATE = """\
site: atelier-nord
gateway: ${DRIFTGATE_GATEWAY}
state_dir: ${STATE_DIR:-/var/lib/driftgate}
mqtt:
  host: ${MQTT_HOST:-broker.atelier.local}
  port: ${MQTT_PORT:-1883}
  keepalive: 30
sources:
  - {type: simulated, name: sim}
channels:
  - name: cutting.humidity
    label: Cutting room humidity
spool:
  max_bytes: 1GiB
  synchronous: normal
"""


def files(tmp_path: Path, main: str, conf_d: dict[str, str] | None = None) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(main)
    if conf_d:
        (tmp_path / "conf.d").mkdir()
        for name, text in conf_d.items():
            (tmp_path / "conf.d" / name).write_text(text)
    return path


def problems(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    return caught.value.problems


def test_variables_and_their_defaults(tmp_path: Path) -> None:
    path = files(tmp_path, TEMPLATE)
    loaded = load_config_files(path, env={"DRIFTGATE_GATEWAY": "gw-07", "MQTT_PORT": "8883"})
    cfg = loaded.config
    assert (cfg.gateway, cfg.state_dir) == ("gw-07", Path("/var/lib/driftgate"))
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker.atelier.local", 8883)  # text → number
    assert loaded.variables == {
        "DRIFTGATE_GATEWAY": "environment",
        "STATE_DIR": "default",
        "MQTT_HOST": "default",
        "MQTT_PORT": "environment",
    }
    # an empty value takes the default too, as in the shell
    cfg = load_config(path, env={"DRIFTGATE_GATEWAY": "gw-07", "MQTT_HOST": ""})
    assert cfg.mqtt is not None
    assert cfg.mqtt.host == "broker.atelier.local"


def test_an_unset_variable_without_default_names_file_line_key_and_variable(
    tmp_path: Path,
) -> None:
    path = files(tmp_path, TEMPLATE)
    assert problems(path, {}) == [
        f"{path}:2: gateway: ${{DRIFTGATE_GATEWAY}} is not set: set the environment variable "
        "DRIFTGATE_GATEWAY (for the service: Environment= or EnvironmentFile= in a drop-in) "
        "or give a default, ${DRIFTGATE_GATEWAY:-…}"
    ]


def test_a_literal_dollar_brace_and_a_malformed_reference(tmp_path: Path) -> None:
    path = files(
        tmp_path,
        "site: s\ngateway: g\nchannels:\n  - name: a.b\n    label: costs $${PRICE} and $5\n",
    )
    assert load_config(path, env={}).channels[0].label == "costs ${PRICE} and $5"
    path.write_text(
        "site: s\ngateway: ${1GATEWAY}\ntimezone: ${TZ\n"
        "sources:\n  - {type: serial, name: p, profile: sht4x-serial, port: '${PORT}'}\n"
    )
    assert problems(path, {}) == [
        f"{path}:2: gateway: '${{1GATEWAY}}' is not a variable: write ${{NAME}} or "
        "${NAME:-default} (letters, digits, _), or $${ for a literal ${",
        f"{path}:3: timezone: '${{TZ' is not a variable: write ${{NAME}} or "
        "${NAME:-default} (letters, digits, _), or $${ for a literal ${",
        f"{path}:5: sources[0].port: ${{PORT}} is not set: set the environment variable PORT "
        "(for the service: Environment= or EnvironmentFile= in a drop-in) or give a default, "
        "${PORT:-…}",
    ]


def test_conf_d_merges_in_name_order_mappings_deeply_lists_whole(tmp_path: Path) -> None:
    path = files(
        tmp_path,
        TEMPLATE,
        {
            # name order, not creation order: 50 comes after 10 though written first
            "50-sources.yaml": (
                "sources:\n"
                "  - {type: serial, name: probe, profile: sht4x-serial, port: /dev/ttyUSB0,"
                " zone: cutting, sensor: sht41-ct1}\n"
                "spool:\n  synchronous: full\n"
            ),
            "10-site.yaml": "gateway: gw-10\nmqtt:\n  host: broker-10.atelier.local\n",
            "20-empty.yaml": "# nothing yet\n",
            "30-blank_section.yaml": "spool:\n  # max_bytes: 2GiB\n",
            "README": "not yaml: ignored",
            ".50-sources.yaml.swp": "an editor's swap file: ignored",
        },
    )
    loaded = load_config_files(path, env={"DRIFTGATE_GATEWAY": "from-env"})
    cfg = loaded.config
    assert [p.name for p in loaded.files] == [
        "agent.yaml", "10-site.yaml", "20-empty.yaml", "30-blank_section.yaml", "50-sources.yaml"
    ]  # fmt: skip
    assert cfg.gateway == "gw-10"
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.keepalive) == (
        "broker-10.atelier.local",
        1883,
        30,
    )
    assert [s.name for s in cfg.sources] == ["probe"]  # the list replaced whole
    assert [c.name for c in cfg.channels] == ["cutting.humidity"]  # kept from the main file
    assert (cfg.spool.max_bytes, cfg.spool.synchronous) == (1024**3, "full")
    assert (
        loaded.where(("sources", 0, "port"))
        == f"{tmp_path}/conf.d/50-sources.yaml:2: sources[0].port"
    )
    assert loaded.where(("mqtt", "keepalive")) == f"{path}:7: mqtt.keepalive"
    assert loaded.where(("mqtt", "host")) == f"{tmp_path}/conf.d/10-site.yaml:3: mqtt.host"


def test_a_problem_names_the_file_that_set_the_key(tmp_path: Path) -> None:
    path = files(
        tmp_path,
        TEMPLATE,
        {
            "10-site.yaml": "mqtt:\n  port: 70000\n",
            "20-spool.yaml": "spool:\n  synchronus: full\n",
            "30-list.yaml": "- not a mapping\n",
        },
    )
    conf_d = tmp_path / "conf.d"
    assert problems(path, {"DRIFTGATE_GATEWAY": "gw"}) == [
        f"{conf_d}/10-site.yaml:2: mqtt.port: Input should be less than or equal to 65535, "
        "got 70000",
        f"{conf_d}/20-spool.yaml:2: spool.synchronus: unknown key 'synchronus'; did you mean "
        "'synchronous'?",
        f"{conf_d}/30-list.yaml:1: (top level): a conf.d file holds keys like the main file "
        "(a mapping), got a list",
    ]


def test_check_config_shows_the_files_and_variables_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = files(tmp_path, TEMPLATE, {"10-site.yaml": "mqtt: {host: '${MQTT_HOST}'}\n"})
    monkeypatch.setenv("DRIFTGATE_GATEWAY", "gw-07")
    monkeypatch.setenv("MQTT_HOST", "broker.secret-name.local")
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"read: {path}, {tmp_path}/conf.d/10-site.yaml"
    assert out[1] == (
        "variables: DRIFTGATE_GATEWAY (from the environment), MQTT_HOST (from the "
        "environment), MQTT_PORT (its default), STATE_DIR (its default)"
    )
    assert "broker.secret-name.local" not in "\n".join(out)  # names only, never values
