"""The config layer: the shipped example loads, and every broken file is reported precisely."""

import re
import textwrap
from pathlib import Path

import pytest
from examples import EXAMPLE, uncomment_notify, uncomment_worked_examples, with_local_files

from agent.cli import main as cli_main
from agent.config import (
    AgentConfig,
    BaselineShiftConfig,
    SlopeConfig,
    config_from_dict,
    load_config,
    parse_duration,
    parse_size,
)
from agent.errors import ConfigError

EXAMPLE_PASSWORD_FILE = "/etc/driftgate/influx-password"
SECRET = "s3cret-Hunter2"

MINIMAL = """\
site: atelier-nord
gateway: gw-01
influx:
  url: http://influxdb.local:8086
  database: driftgate
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing needle (so tests don't hard-code numbers)."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={} if env is None else env)
    assert caught.value.problems, "ConfigError without problems"
    return caught.value.problems


def example_text(password_file: Path | None) -> str:
    """The example as shipped (no InfluxDB login), or with its login lines turned on and the
    password in ``password_file``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    login = f"  # username: driftgate\n  # password_file: {EXAMPLE_PASSWORD_FILE}\n"
    assert login in text
    if password_file is None:
        return text
    return text.replace(login, f"  username: driftgate\n  password_file: {password_file}\n")


# --------------------------------------------------------------------------- the example


def test_example_loads_with_a_password_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "influx-password"
    secret_file.write_text(SECRET + "\n")
    config = load_config(write(tmp_path, example_text(secret_file)), env={})

    assert config.site == "atelier-nord"
    assert config.state_dir == Path("/var/lib/driftgate")
    assert [c.name for c in config.channels] == [
        "edge_paint.humidity",
        "cutting.humidity",
        "sewing.m05.tension",
    ]
    edge = config.channels[0]
    assert edge.label == "Edge paint room humidity"
    assert edge.unit == "%RH"
    assert edge.affects == "edge paint drying"
    assert edge.action.startswith("check the dehumidifier")
    assert edge.limits is not None
    assert (edge.limits.low_warn, edge.limits.high_warn, edge.limits.high_alarm) == (45, 55, 60)
    assert config.timezone == "Europe/Paris"
    assert set(config.incidents.actions) == {"climate", "tension"}
    assert edge.detectors is not None
    baseline, slope = edge.detectors
    assert isinstance(baseline, BaselineShiftConfig)
    assert (baseline.window, baseline.hold) == (86400.0, 7200.0)
    assert (baseline.warn, baseline.alarm) == (3.0, 6.0)
    assert edge.baseline is not None
    assert (edge.baseline.window, edge.baseline.learn) == (7 * 86400.0, 7 * 86400.0)
    assert isinstance(slope, SlopeConfig)
    assert (slope.window, slope.warn, slope.alarm, slope.hold) == (
        3 * 86400.0,
        0.0625,
        0.125,
        43200.0,
    )
    assert config.channels[1].detectors is None  # the kind's defaults
    tension = config.channels[2]
    assert (tension.unit, tension.kind) == ("cN", "tension")
    assert tension.affects == "seam strength and stitch appearance"
    assert config.influx is not None
    assert config.influx.api == "v1"
    assert config.influx.password is not None
    assert config.influx.password.get_secret_value() == SECRET  # trailing newline stripped
    assert config.spool.max_bytes == 1024**3
    assert config.spool.flush_interval == pytest.approx(0.2)
    assert config.self_metrics.interval == 10.0


@pytest.mark.usefixtures("clean_env")
def test_the_example_passes_check_config_as_installed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """install.sh copies it to /etc/driftgate/agent.yaml: it must pass the unit's check before
    any secret file exists (it used to fail at once: influx.password_file did not exist)."""
    assert cli_main(["check-config", "-c", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not [line for line in out if "warning" in line]
    assert out[-1] == "OK: 1 source, 3 channels, influx v1 → https://influxdb.local:8086"


@pytest.mark.usefixtures("clean_env")
def test_the_worked_examples_are_valid_and_their_channels_are_produced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every commented device example (serial probe, tension sensors, spectrophotometer,
    Tasmota, ESPHome) turned on with the mqtt: section, the simulation removed: valid, and
    each configured channel is one a source produces (so its label and limits apply)."""
    path = write(tmp_path, uncomment_worked_examples(EXAMPLE.read_text(encoding="utf-8")))
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not [line for line in out if "warning" in line], out
    sources = [line.split()[1] for line in out if line.startswith("  source ")]
    assert sources == ["probe-edge-paint", "tension-line-l2", "spectro-qc", "tasmota-cutting",
                       "esphome-leather-store"]  # fmt: skip
    config = load_config(path, env={})
    applied = " ".join(line for line in out if "[channels: " in line)
    for channel in config.channels:
        assert channel.name in applied, channel.name
    assert len(config.channels) == 5
    assert out[-1] == "OK: 5 sources, 5 channels, influx v1 → https://influxdb.local:8086"


def test_the_examples_commented_notify_section_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = with_local_files(uncomment_notify(example_text(None)), tmp_path)
    config = load_config(write(tmp_path, text), env={"DRIFTGATE_INFLUX_PASSWORD": SECRET})
    supervisors, team, manager = config.notify.routes
    assert (team.escalate_to, manager.name) == ("plant-manager", "plant-manager")
    assert [s.name for s in supervisors.shifts] == ["early", "late"]
    types = [t.type for t in config.notify.targets]
    assert types == ["stacklight", "email", "apprise", "webhook"]


def test_example_loads_with_systemd_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "influx_password").write_text(SECRET)
    config = load_config(
        write(tmp_path, example_text(None)), env={"CREDENTIALS_DIRECTORY": str(credentials)}
    )
    assert config.influx is not None
    assert config.influx.password is not None
    assert config.influx.password.get_secret_value() == SECRET


def test_example_loads_with_environment_variable(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, example_text(None)), env={"DRIFTGATE_INFLUX_PASSWORD": SECRET}
    )
    assert config.influx is not None
    assert config.influx.password is not None
    assert config.influx.password.get_secret_value() == SECRET


def test_password_file_wins_over_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file")
    config = load_config(
        write(tmp_path, example_text(secret_file)), env={"DRIFTGATE_INFLUX_PASSWORD": "from-env"}
    )
    assert config.influx is not None
    assert config.influx.password is not None
    assert config.influx.password.get_secret_value() == "from-file"


# --------------------------------------------------------------------------- broken files


def test_unknown_key_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "spool:\n  max_byte: 1GiB\n")
    problems = problems_of(path)
    assert problems == [
        f"{path}:{line_of(path, 'max_byte')}: spool.max_byte: "
        "unknown key 'max_byte'; did you mean 'max_bytes'?"
    ]


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "influxdb: {}\n")
    (problem,) = problems_of(path)
    assert problem == (
        f"{path}:{line_of(path, 'influxdb: {}')}: influxdb: "
        "unknown key 'influxdb'; did you mean 'influx'?"
    )


def test_wrong_type_shows_key_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  batch_size: many\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'batch_size')}: influx.batch_size: "
        "Input should be a valid integer, got 'many'"
    ]


def test_alarm_not_above_warn_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
channels:
  - name: edge_paint.humidity
    detectors:
      - type: slope
        window: 3d
        warn: 0.0625
      - type: baseline_shift
        window: 24h
        warn: 3
        alarm: 3
""",
    )
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'alarm: 3')}: channels[0].detectors[1].alarm: "
        "alarm (3) must be greater than warn (3)"
    ]


def test_bad_duration_says_what_a_duration_looks_like(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "self_metrics:\n  interval: 5 parsecs\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'parsecs')}: self_metrics.interval: "
        "'5 parsecs' is not a duration: use e.g. 30s, 5m, 2h, 7d"
    ]


@pytest.mark.parametrize(
    ("section", "key", "advice"),
    [
        ("influx", "password", "password_file"),
        ("influx", "token", "DRIFTGATE_INFLUX_TOKEN"),
        ("mqtt", "password", "LoadCredential=mqtt_password"),
    ],
)
def test_inline_secret_is_rejected_without_echoing_it(
    tmp_path: Path, section: str, key: str, advice: str
) -> None:
    extra = (
        f"  {key}: {SECRET}\n"
        if section == "influx"
        else f"mqtt:\n  host: broker\n  {key}: {SECRET}\n"
    )
    path = write(tmp_path, MINIMAL + extra)
    problems = problems_of(path)
    line = line_of(path, SECRET)
    assert any(
        p.startswith(f"{path}:{line}: {section}.{key}: inline secrets are not allowed")
        for p in problems
    ), problems
    assert any(advice in p for p in problems)
    assert not any(SECRET in p for p in problems)


def test_inline_secret_is_rejected_in_config_from_dict_too() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {
                "site": "s",
                "gateway": "g",
                "influx": {"url": "http://x:8086", "database": "d", "password": SECRET},
            },
            env={},
        )
    (problem,) = caught.value.problems
    assert problem.startswith("<built-in>: influx.password: inline secrets are not allowed")
    assert SECRET not in problem


def test_missing_secret_file_names_that_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  username: driftgate\n  password_file: secrets/nope\n")
    expected_file = tmp_path / "secrets" / "nope"  # relative to the config file, not the cwd
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'password_file')}: influx.password_file: "
        f"cannot read secret file {expected_file}: No such file or directory"
    ]


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    path = write(tmp_path, MINIMAL + "  username: u\n  password_file: pw\n")
    (problem,) = problems_of(path)
    assert problem.endswith(f"secret file {tmp_path / 'pw'} is empty")


def test_username_without_any_password_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  username: driftgate\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'username')}: influx.username: ")
    assert "no password was found" in problem
    assert "DRIFTGATE_INFLUX_PASSWORD" in problem


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "site: a\ngateway: b\nlog:\n  level: [info\n  format: json\n")
    (problem,) = problems_of(path)
    match = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): YAML syntax error: ", problem)
    assert match, problem
    assert int(match.group(1)) in (4, 5, 6)


def test_duplicate_channel_names_name_the_duplicate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "channels:\n  - name: cutting.humidity\n  - name: edge.h\n  - name: cutting.humidity\n",
    )
    assert problems_of(path) == [
        f"{path}:{line_of(path, '- name: cutting.humidity') + 2}: channels[2].name: "
        "duplicate name 'cutting.humidity': channels[0] already uses it"
    ]


def test_duplicate_yaml_key_is_not_silently_overwritten(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  batch_size: 10\n  batch_size: 20\n")
    (problem,) = problems_of(path)
    assert problem == (
        f"{path}:{line_of(path, 'batch_size: 20')}: influx.batch_size: "
        f"duplicate key (first on line {line_of(path, 'batch_size: 10')}); remove one of them"
    )


def test_v1_without_database_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "site: s\ngateway: g\ninflux:\n  url: http://influx:8086\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'influx:')}: influx.database: "
        "api v1 needs database: the database to write to"
    ]


def test_v2_needs_org_and_bucket_but_no_token() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {"site": "s", "gateway": "g", "influx": {"url": "http://vm:8428", "api": "v2"}},
            env={},
        )
    assert caught.value.problems == [
        "<built-in>: influx.org: api v2 needs org",
        "<built-in>: influx.bucket: api v2 needs bucket",
    ]
    config = config_from_dict(
        {
            "site": "s",
            "gateway": "g",
            "influx": {"url": "http://vm:8428", "api": "v2", "org": "o", "bucket": "b"},
        },
        env={},
    )
    assert config.influx is not None
    assert config.influx.token is None


def test_non_http_url_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("http://influxdb.local:8086", "influxdb.local:8086"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'url:')}: influx.url: ")
    assert "is not an http:// or https:// URL" in problem


def test_naive_start_time_is_an_error_aware_is_accepted(tmp_path: Path) -> None:
    source = "sources:\n  - type: simulated\n    name: sim\n    start: {}\n"
    path = write(tmp_path, MINIMAL + source.format("2024-03-04 06:00:00"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'start:')}: sources[0].start: ")
    assert "has no timezone" in problem

    path = write(tmp_path, MINIMAL + source.format("2024-03-04T06:00:00+01:00"))
    start = load_config(path, env={}).sources[0].start
    assert start is not None
    assert start.utcoffset() is not None


def test_unknown_source_type_points_at_type(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "sources:\n  - type: opcua\n    name: usb0\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'type: opcua')}: sources[0].type: "
        "unknown type 'opcua'; one of: simulated, serial, mqtt, modbus"
    ]


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
site: atelier-nord
gateway: "   "
log:
  level: verbose
channels:
  - name: a
    detectors:
      - type: baseline_shift
        window: 1 fortnight
        warn: 3
  - name: a
influx:
  url: http://influx:8086
  database: d
  batch_size: 0
  tokn: x
spool:
  max_bytes: 1KiB
""",
    )
    problems = problems_of(path)
    expected = [
        (line_of(path, "gateway"), "gateway: must not be empty"),
        (line_of(path, "level"), "log.level: "),
        (line_of(path, "window"), "channels[0].detectors[0].window: '1 fortnight' is not"),
        (line_of(path, "- name: a") + 5, "channels[1].name: duplicate name 'a'"),
        (line_of(path, "batch_size"), "influx.batch_size: Input should be greater than or equal"),
        (line_of(path, "tokn"), "influx.tokn: unknown key 'tokn'"),
        (line_of(path, "max_bytes"), "spool.max_bytes: must be at least 1MiB, got 1024 bytes"),
    ]
    assert len(problems) == len(expected), problems
    for problem, (line, start) in zip(problems, expected, strict=True):
        assert problem.startswith(f"{path}:{line}: {start}"), problem


def test_missing_required_keys_point_at_the_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  level: info\nmqtt:\n  port: 1883\n")
    assert problems_of(path) == [
        f"{path}:1: site: required key is missing",
        f"{path}:1: gateway: required key is missing",
        f"{path}:{line_of(path, 'mqtt:')}: mqtt.host: required key is missing",
    ]


def test_empty_file_and_unreadable_file(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "# nothing here\n"))
    assert "the file is empty" in problem
    missing = tmp_path / "absent.yaml"
    (problem,) = problems_of(missing)
    assert problem == f"{missing}: cannot read: No such file or directory"


# --------------------------------------------------------------------------- paths, defaults


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    path = write(tmp_path, MINIMAL + "  username: u\n  password_file: pw\nstate_dir: state\n")
    config = load_config(path, env={})
    assert config.state_dir == tmp_path / "state"
    assert config.influx is not None
    assert config.influx.password_file == tmp_path / "pw"


def test_default_state_dir_is_next_to_the_config_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL), env={}).state_dir == tmp_path / ".driftgate"


def test_config_from_dict_keeps_relative_paths_and_fills_defaults() -> None:
    config = config_from_dict({"site": "demo", "gateway": "gw", "spool": None}, env={})
    assert config.state_dir == Path(".driftgate")
    assert config.influx is None
    assert config.spool.max_bytes == 1024**3
    assert config.log.level == "info"
    assert config.sources == []


def test_detector_defaults_derive_from_hold_and_warn() -> None:
    detector = BaselineShiftConfig.model_validate(
        {"type": "baseline_shift", "window": "1h", "warn": 2, "hold": "30m"}
    )
    assert detector.effective_clear_hold == 1800.0
    assert detector.effective_hysteresis == pytest.approx(0.2)


# --------------------------------------------------------------------------- check-config, secrets


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DRIFTGATE_INFLUX_PASSWORD",
        "DRIFTGATE_INFLUX_TOKEN",
        "DRIFTGATE_MQTT_PASSWORD",
        "CREDENTIALS_DIRECTORY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_check_config_reports_problems_and_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL + f"  batch_size: many\n  password: {SECRET}\n")
    assert cli_main(["check-config", "-c", str(path)]) == 2
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"{path}:{line_of(path, 'batch_size')}: influx.batch_size: " in lines[0]
    assert f"{path}:{line_of(path, 'password')}: influx.password: " in lines[1]
    assert len(lines) == 2
    assert SECRET not in out


@pytest.mark.usefixtures("clean_env")
def test_check_config_ok_prints_summary_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTGATE_INFLUX_PASSWORD", SECRET)
    path = write(tmp_path, example_text(None))
    assert cli_main(["check-config", "-c", str(path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # The shipped example sends its password over https://, so it prints no warning.
    assert not [line for line in lines if "warning" in line]
    assert lines[0] == f"read: {path}"
    assert lines[-1] == "OK: 1 source, 3 channels, influx v1 → https://influxdb.local:8086"
    assert SECRET not in captured.out + captured.err


def test_secrets_never_in_repr_or_redacted_dict(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRET)
    path = write(
        tmp_path,
        """\
site: s
gateway: g
influx:
  url: https://influx:8086
  api: v2
  org: o
  bucket: b
  token_file: token
mqtt:
  host: broker
""",
    )
    config = load_config(path, env={"DRIFTGATE_MQTT_PASSWORD": SECRET + "-mqtt"})
    assert config.influx is not None
    assert config.influx.token is not None
    assert config.influx.token.get_secret_value() == SECRET
    assert config.mqtt is not None
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == SECRET + "-mqtt"
    for text in (repr(config), str(config), str(config.redacted_dict())):
        assert SECRET not in text
    assert config.redacted_dict()["influx"]["token"] == "**********"


def test_config_is_frozen() -> None:
    config = config_from_dict({"site": "s", "gateway": "g"}, env={})
    with pytest.raises(ValueError, match="frozen"):
        config.site = "other"
    assert isinstance(config, AgentConfig)


# --------------------------------------------------------------------------- durations, sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (" 10 s ", 10.0),
        (12, 12.0),
        (0.2, 0.2),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 parsecs", "", "m", "5x", "-5s", "1h 2", "nan", True])
def test_parse_duration_rejects(bad: str | bool) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


def test_parse_duration_message_shows_examples() -> None:
    with pytest.raises(ValueError, match="parsecs") as caught:
        parse_duration("5 parsecs")
    assert str(caught.value) == "'5 parsecs' is not a duration: use e.g. 30s, 5m, 2h, 7d"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 1024**2),
        ("1GB", 10**9),
        ("64KiB", 65536),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("4096", 4096),
        ("100 B", 100),
        (2048, 2048),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["1 furlong", "GiB", "-1MiB", "1.5", "10 bits"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(bad)


def test_yaml_boolean_key_is_reported_not_misread(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "log:\n  on: true\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'on: true')}: log: key True is not text; quote it "
        "(YAML reads yes, no, on, off, null and numbers as values)"
    ]


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  ca_file: ca.pem\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'ca_file')}: influx.ca_file: "
        f"file {tmp_path / 'ca.pem'} does not exist or is not a regular file"
    ]


# --------------------------------------------------------------------------- values that hurt


def test_absurd_durations_are_refused_with_the_range_and_the_reason(tmp_path: Path) -> None:
    """Before: `self_metrics.interval: 1e-9` was accepted and wrote 30 MB in 6 s."""
    path = write(
        tmp_path,
        MINIMAL
        + """\
  timeout: 0
  max_backoff: 30d
self_metrics:
  interval: 1e-9
spool:
  flush_interval: 1h
alerts:
  repeat: 1ms
channels:
  - name: edge_paint.humidity
    detectors:
      - type: stale
        max_gap: 100ms
""",
    )
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'timeout')}: influx.timeout: 0 s is too short: at least "
        "500 ms (shorter fails healthy writes; longer hides a dead server)",
        f"{path}:{line_of(path, 'max_backoff')}: influx.max_backoff: 2.592e+06 s is too long: "
        "at most 1 h (shorter hammers a failing server; longer leaves data waiting after it "
        "is back)",
        f"{path}:{line_of(path, 'interval')}: self_metrics.interval: 1e-09 s is too short: "
        "at least 1 s (each interval writes a point to the spool and to InfluxDB)",
        f"{path}:{line_of(path, 'flush_interval')}: spool.flush_interval: 3600 s is too long: "
        "at most 10 s (shorter keeps the disk busy; longer widens what a crash can lose)",
        f"{path}:{line_of(path, 'repeat')}: alerts.repeat: 0.001 s is too short: at least "
        "1 min (a reminder more often than every minute is noise)",
        f"{path}:{line_of(path, 'max_gap')}: channels[0].detectors[0].max_gap: 0.1 s is too "
        "short: at least 1 s (silence longer than this is not noticed)",
    ]


def test_the_fast_settings_of_tests_and_the_demo_stay_legal() -> None:
    config = config_from_dict(
        {
            "site": "s",
            "gateway": "g",
            "spool": {"flush_interval": "50ms"},
            "self_metrics": {"interval": 1},
            "influx": {"url": "http://127.0.0.1:8086", "database": "d", "flush_interval": 0.1,
                       "max_backoff": 0.2, "timeout": 2},
            "sources": [{"type": "simulated", "name": "w", "speed": 2e6, "interval": 60}],
        },
        env={},
    )  # fmt: skip
    assert config.spool.flush_interval == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("sources:\n  - {type: simulated, name: w, speed: .nan}\n", "sources[0].speed"),
        ("sources:\n  - {type: simulated, name: w, days: .inf}\n", "sources[0].days"),
        ("history:\n  days: .inf\n", "history.days"),
        ("lots:\n  alpha: .nan\n", "lots.alpha"),
        ("lots:\n  effect: {climate: .inf}\n", "lots.effect.climate"),
        ("color:\n  metamerism: .nan\n", "color.metamerism"),
        ("channels:\n  - {name: a.b, lot_effect: -.inf}\n", "channels[0].lot_effect"),
        (
            "channels:\n  - {name: a.b, detectors: [{type: slope, window: 1h, warn: .nan}]}\n",
            "channels[0].detectors[0].warn",
        ),
        ("channels:\n  - {name: a.b, baseline: {value: .nan}}\n", "channels[0].baseline.value"),
        ("spool:\n  flush_interval: .inf\n", "spool.flush_interval"),
    ],
)
def test_nan_and_infinity_are_refused_wherever_a_number_is_read(
    tmp_path: Path, yaml_text: str, key: str
) -> None:
    """Before: `speed: .nan` was accepted (NaN passes every `> 0` check)."""
    path = write(tmp_path, MINIMAL + yaml_text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert f": {key}: " in problem
    assert re.search(r"(nan|inf)\b.*(not a number|not a duration)", problem), problem


def _bounded_durations(model: type, path: str = "") -> list[tuple[str, bool]]:
    """``(key path, bounded)`` of every duration field under ``model``, recursively."""
    from typing import get_args

    from pydantic import BaseModel

    from agent.config.base import _to_duration

    found: list[tuple[str, bool]] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        key = f"{path}.{name}" if path else name
        checks = [getattr(m, "func", None) for m in info.metadata]
        if any(c is _to_duration for c in checks):
            bounded = any(getattr(c, "__qualname__", "").startswith("within.") for c in checks)
            found.append((key, bounded))
        stack = [info.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += _bounded_durations(kind, key)
            else:
                stack.extend(get_args(kind))
    return found


def test_every_duration_in_the_config_has_bounds() -> None:
    found = dict(_bounded_durations(AgentConfig))
    assert "self_metrics.interval" in found
    assert "channels.detectors.window" in found
    assert "input_limits.max_ahead" in found
    assert [key for key, bounded in found.items() if not bounded] == []


def _secure_env(tmp_path: Path) -> tuple[Path, Path]:
    secret = tmp_path / "influx-password"
    secret.write_text(SECRET)
    mqtt_secret = tmp_path / "mqtt-password"
    mqtt_secret.write_text(SECRET)
    return secret, mqtt_secret


EXPOSED = """\
site: s
gateway: g
influx:
  url: {url}
  database: d
  username: gw
  password_file: {secret}
  verify_tls: {verify}
mqtt:
  host: {broker}
  username: gw
  password_file: {mqtt_secret}
"""


@pytest.mark.usefixtures("clean_env")
def test_settings_that_expose_the_gateway_are_warned_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a secret file readable by everyone, a password over plain http:// to another
    host and verify_tls: false were accepted without a word."""
    secret, mqtt_secret = _secure_env(tmp_path)
    secret.chmod(0o644)
    mqtt_secret.chmod(0o600)
    path = write(
        tmp_path,
        EXPOSED.format(
            url="http://influx.plant.example:8086", secret=secret, verify="false",
            broker="broker.plant.example", mqtt_secret=mqtt_secret,
        ),
    )  # fmt: skip
    assert cli_main(["check-config", "-c", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"read: {path}",
        f"{path}:{line_of(path, 'url:')}: influx.url: warning: password sent over plain "
        "http:// to another host: the InfluxDB password goes unencrypted to "
        "influx.plant.example: anyone on the network path can read it; use https:// (with "
        "ca_file for a private CA)",
        f"{path}:{line_of(path, 'password_file: ' + str(secret))}: influx.password_file: "
        f"warning: secret file readable by every user: {secret} has mode -rw-r--r--: every "
        f"account on the gateway can read the secret; chmod 600 {secret} (owner driftgate), "
        "or 640 with group driftgate",
        f"{path}:{line_of(path, 'verify_tls')}: influx.verify_tls: warning: TLS certificates "
        "are not verified: verify_tls: false accepts any server that answers: a machine in "
        "between can read the credentials and change the data; give the server's CA in "
        "ca_file instead",
        f"{path}:{line_of(path, 'host:')}: mqtt.host: warning: password sent over plain MQTT "
        "to another host: the MQTT password goes unencrypted to broker.plant.example: anyone "
        "on the network path can read it; set tls: true (port 8883, ca_file for a private CA)",
        "OK: 0 sources, 0 channels, influx v1 → http://influx.plant.example:8086",
    ]
    assert SECRET not in "\n".join(lines)


@pytest.mark.usefixtures("clean_env")
def test_private_secrets_loopback_and_tls_give_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, mqtt_secret = _secure_env(tmp_path)
    secret.chmod(0o640)  # group driftgate may read it: fine
    mqtt_secret.chmod(0o600)
    for url, broker in (("http://127.0.0.1:8086", "localhost"), ("https://influx:8086", "::1")):
        path = write(
            tmp_path,
            EXPOSED.format(url=url, secret=secret, verify="true", broker=broker,
                           mqtt_secret=mqtt_secret),
        )  # fmt: skip
        assert cli_main(["check-config", "-c", str(path)]) == 0
        assert capsys.readouterr().out.splitlines() == [f"read: {path}", f"OK: 0 sources, 0 "
                                                       f"channels, influx v1 → {url}"]  # fmt: skip


async def test_settings_that_expose_the_gateway_are_logged_at_start(tmp_path: Path) -> None:
    import io
    import json

    from agent.logs import configure_logging
    from agent.runtime.agent import Agent

    secret, _ = _secure_env(tmp_path)
    secret.chmod(0o604)
    path = write(
        tmp_path,
        f"""\
site: s
gateway: g
state_dir: {tmp_path / "state"}
influx:
  url: https://127.0.0.1:1
  database: d
  username: gw
  password_file: {secret}
  verify_tls: false
""",
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(load_config(path, env={}))
    agent.stop_event.set()  # start, then stop at once
    await agent.run(handle_signals=False)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    warned = [e for e in events if e["level"] == "warning" and "where" in e]
    assert [(e["event"], e["where"]) for e in warned] == [
        ("secret file readable by every user",
         f"{path}:{line_of(path, 'password_file')}: influx.password_file"),
        ("TLS certificates are not verified",
         f"{path}:{line_of(path, 'verify_tls')}: influx.verify_tls"),
    ]  # fmt: skip


def test_configure_md_lists_every_bound() -> None:
    """docs/configure.md's table of bounds says what agent/config/bounds.py enforces."""
    from agent.config.bounds import BOUNDS, seconds_words

    text = (EXAMPLE.parent.parent / "docs" / "configure.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
            if line.startswith("| `") and line.count("|") == 5}  # fmt: skip
    for key, bound in BOUNDS.items():
        assert key in rows, f"{key} is not in docs/configure.md's table of bounds"
        cells = [c.strip() for c in rows[key].split("|")[2:5]]
        if bound.unit == "s":
            assert cells[:2] == [seconds_words(bound.low), seconds_words(bound.high)], key
        assert cells[2] == bound.why, key


def test_check_config_refuses_detectors_that_cannot_fire_with_the_arithmetic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `min_samples: 10` on a window that holds 5 readings, an EWMA whose warn its
    clipped readings can never reach and a stale gap shorter than the interval were accepted."""
    path = write(
        tmp_path,
        MINIMAL
        + """\
channels:
  - name: edge_paint.humidity
    interval: 1m
    detectors:
      - type: baseline_shift
        window: 4m
        warn: 1
        min_samples: 10
      - type: ewma
        lam: 0.8
        warn: 5
      - type: stale
        max_gap: 30s
      - type: changepoint
        block: 30m
  - name: cutting.humidity
    detectors:
      - type: baseline_shift
        window: 4m
        warn: 1
        min_samples: 10
""",
    )
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'min_samples: 10')}: channels[0].detectors[0].min_samples: 10 "
        "readings never fit in a 4 min window at one reading every 1 min: it holds at most "
        "4 min / 1 min + 1 = 5; lower min_samples to 5 or widen window to 9 min",
        f"{path}:{line_of(path, 'warn: 5')}: channels[0].detectors[1].warn: an EWMA with "
        "lam 0.8 never reaches warn 5: readings count at most 4 σ, so its score is at most 4 / "
        "√(0.8 / (2 − 0.8)) = 4.90; lower warn or lam",
        f"{path}:{line_of(path, 'max_gap')}: channels[0].detectors[2].max_gap: max_gap 30 s is "
        "not longer than the 1 min between two readings: every reading would come after a "
        "stale alert; set max_gap to more than 1 min (e.g. 10 min, ten readings)",
    ]
    assert cli_main(["check-config", "-c", str(path)]) == 2
    assert "3 problems" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("yaml_text", "key", "reason"),
    [
        ("channels:\n  - {name: a.b, compare_on: [lot, zone]}\n", "channels[0].compare_on[1]",
         "'zone' is a location tag and cannot be set as context"),
        ("channels:\n  - {name: a.b, compare_on: [lot, lot]}\n", "channels[0].compare_on",
         "each context key once"),
        ("lots:\n  compare_on: [lot, 'shift B']\n", "lots.compare_on[1]", "is not a tag name"),
        ("channels:\n  - {name: a.b, lot_readings: 5}\n", "channels[0].lot_readings",
         "greater than or equal to 10"),
    ],
)  # fmt: skip
def test_compare_on_names_context_keys_once(
    tmp_path: Path, yaml_text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, MINIMAL + yaml_text)
    (problem,) = problems_of(path)
    assert problem.startswith(
        f"{path}:{line_of(path, 'compare_on' if 'compare' in key else 'lot_readings')}:"
    )
    assert f": {key}: " in problem
    assert reason in problem
