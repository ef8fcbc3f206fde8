"""Channel names: what check-config lists is what the running sources name, for every shipped
profile's recorded frames; a `channels:` entry no source produces is a located warning (it
used to be silently ignored: its label, affects and limits never applied)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from spoolfile import LineSink

from agent.cli import main as cli_main
from agent.config import config_from_dict
from agent.ingest.broker import MqttLink
from agent.ingest.mqtt import MqttSource
from agent.ingest.profiles import load_profile
from agent.ingest.serial import SerialSource
from agent.runtime.build import build
from agent.runtime.plan import plan_sources, unproduced

FIXTURES = Path(__file__).parent / "fixtures" / "frames"

# Source settings per profile: the plain case, the recorded device's own id set on the source
# (its part leaves the name), a channel_prefix, and an MQTT topic with a zone level.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "sht4x-serial": [{"zone": "leather_store"}, {"zone": "leather_store", "sensor": "sht41-ep1"},
                     {"channel_prefix": "store.east", "line": "L1"}],
    "hx711-tension": [{"zone": "sewing"}, {"zone": "sewing", "station": "m05"}],
    "colorimeter-lab": [{"zone": "qc"}],
    "spectro-31": [{"zone": "qc"}],
    "tasmota-sht3x": [{"zone": "finishing"}, {"zone": "finishing", "sensor": "tasmota_ep1"},
                      {"topics": ["{zone}/tele/{sensor}/SENSOR", "tele/{sensor}/SENSOR"]}],
    "tasmota-bme280": [{"zone": "drying"}],
    "sht4x-esphome": [{"zone": "drying"}, {"zone": "drying", "sensor": "sht41-ep1"}],
}  # fmt: skip


def _recorded(profile: str) -> list[dict[str, Any]]:
    document = json.loads((FIXTURES / f"{profile}.json").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = document["cases"]
    return cases


def _topic_for(case: dict[str, Any], settings: dict[str, Any]) -> str | None:
    topic = case["topic"]
    if topic is not None and settings.get("topics", [""])[0].startswith("{zone}/"):
        return f"floor2/{topic}"  # the recorded message, under a zone level
    return topic


def _cases() -> list[Any]:
    return [
        pytest.param(profile, settings, id=f"{profile}-{i}")
        for profile, variants in VARIANTS.items()
        for i, settings in enumerate(variants)
    ]


def _pattern(listed: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", ".+", re.escape(listed)))


@pytest.mark.parametrize(("profile", "settings"), _cases())
def test_listed_channels_are_the_channels_recorded_frames_make(
    tmp_path: Path, profile: str, settings: dict[str, Any]
) -> None:
    """Each recorded frame of each shipped profile goes through the real source; every channel
    it makes is one check-config listed for that source, and nothing listed is left unused."""
    kind = "mqtt" if load_profile(profile).transport == "mqtt" else "serial"
    source: dict[str, Any] = {"type": kind, "name": "src", "profile": profile, **settings}
    if kind == "serial":
        source["port"] = "/dev/null"
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path), "mqtt": {"host": "127.0.0.1"},
         "sources": [source]},
        env={},
    )  # fmt: skip
    (plan,) = plan_sources(cfg)
    core = build(cfg, spool=LineSink())  # type: ignore[arg-type]
    if kind == "serial":
        serial = SerialSource(cfg.sources[0], core.pipeline, core.registry)  # type: ignore[arg-type]
        handler = serial._bind(core.pipeline)
        handlers = [handler]
    else:
        assert cfg.mqtt is not None
        link = MqttLink(cfg.mqtt, site="s", gateway="g", metrics=core.metrics)
        mqtt = MqttSource(cfg.sources[0], link, core.pipeline, core.registry)  # type: ignore[arg-type]
        handlers = mqtt.handlers
    for case in _recorded(profile):
        wire = bytes.fromhex(case["wire_hex"]) if "wire_hex" in case else case["wire"].encode()
        topic = _topic_for(case, settings)
        for handler in handlers:
            frames = handler.decoder.feed(wire) if kind == "serial" else [wire]
            for frame in frames:
                handler.frame(frame, topic, case["received_ns"])
    made = set(core.registry.channels)
    assert made or profile == "spectro-31"  # a spectrum makes colour channels only with a reference
    listed = plan.patterns
    for name in made:
        assert any(_pattern(p).fullmatch(name) for p in listed), (name, listed)
    device = {c.pattern for c in plan.channels if c.measurement != "color" or c.unit != "ΔE00"}
    for pattern in device:  # each listed device channel was made by some recorded frame
        assert any(_pattern(pattern).fullmatch(name) for name in made), (pattern, made)


def test_a_configured_channel_no_source_produces_is_a_located_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: `leather_store.humidity` configured, `leather_store.sht41-ep1.humidity`
    produced. check-config said only OK and the label never applied."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        "site: s\ngateway: g\n"
        "sources:\n"
        "  - type: serial\n    name: probe-store\n    profile: sht4x-serial\n"
        "    port: /dev/ttyUSB0\n    zone: leather_store\n"
        "channels:\n"
        "  - name: leather_store.humidity\n    label: Leather store humidity\n"
        "  - name: leather_store.sht41-ls1.temperature\n"
    )
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "    leather_store.{sensor}.humidity (climate humidity_rh, %RH)" in out
    assert (
        "    leather_store.{sensor}.temperature (climate temperature_c, °C) "
        "[channels: leather_store.sht41-ls1.temperature]"
    ) in out
    warnings = [line for line in out if ": warning: " in line]
    assert warnings == [
        f"{path}:10: channels[0].name: warning: no source produces this channel, so its label, "
        "affects, action, limits and detectors never apply; the nearest is "
        "leather_store.{sensor}.humidity from source probe-store: the sensor each device sends "
        "is part of the name; set sensor: <its sensor> on that source to leave it out, or name "
        "the channel leather_store.<sensor>.humidity"
    ]
    assert out[-1] == "OK: 1 source, 2 channels, no influx (readings stay in the spool)"

    # Done as the warning says: the probe's id set on the source.
    text = path.read_text()
    path.write_text(
        text.replace("zone: leather_store\n", "zone: leather_store\n    sensor: sht41-ls1\n")
    )
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not [line for line in out if ": warning: " in line]
    assert (
        "    leather_store.humidity (climate humidity_rh, %RH) while the frames say "
        "sensor=sht41-ls1; other devices: leather_store.{sensor}.humidity "
        "[channels: leather_store.humidity]"
    ) in out


def test_unproduced_without_sources_and_far_from_any_name() -> None:
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "channels": [{"name": "edge_paint.humidity"}]}, env={}
    )
    (missing,) = unproduced(cfg, plan_sources(cfg))
    assert missing.detail.endswith("never apply: there are no sources")
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "sources": [{"type": "simulated", "name": "sim"}],
         "channels": [{"name": "edge_paint.humidity"}, {"name": "zzz"}]},
        env={},
    )  # fmt: skip
    (missing,) = unproduced(cfg, plan_sources(cfg))
    assert (missing.index, missing.name) == (1, "zzz")
    assert missing.detail.endswith("never apply (check-config lists theirs)")


def test_a_profile_that_does_not_fit_its_source_is_a_check_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config used to pass these; the agent then refused to start (or, for a serial
    source with an MQTT profile, decoded nothing)."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        "site: s\ngateway: g\nmqtt: {host: 127.0.0.1}\nsources:\n"
        "  - {type: serial, name: a, profile: tasmota-sht3x, port: /dev/ttyUSB0}\n"
        "  - {type: mqtt, name: b, profile: sht4x-serial}\n"
        "  - {type: mqtt, name: c, profile: no-such-device}\n"
    )
    assert cli_main(["check-config", "-c", str(path)]) == 2
    out = capsys.readouterr().out
    assert "sources.a.profile: tasmota-sht3x is an MQTT device profile" in out
    assert "sources.b.profile: sht4x-serial is a serial device profile" in out
    assert "no-such-device: no such device profile" in out


async def test_modbus_channels_listed_are_the_channels_its_devices_make(tmp_path: Path) -> None:
    """A Modbus bus (merged from h14 after check-config learnt to list channels): check-config
    crashed on it (a Modbus source has no `profile`). Two devices over TCP on the loopback, one
    with its own sensor id, one named by default: every listed name is made, nothing else."""
    import asyncio

    from servers import free_port
    from waiting import until

    from agent.ingest.registers import load_register_map
    from agent.runtime.agent import Agent
    from agent.sim.modbus import ModbusEmulator, fixed_slave

    port = free_port()
    values = {"humidity": 30.5, "temperature": 22.4, "dew_point": 4.1}
    slaves = [fixed_slave(load_register_map("vaisala-hmp"), n, values) for n in (1, 2)]
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path),
         "sources": [{"type": "modbus", "name": "bus1", "zone": "cutting",
                      "host": "127.0.0.1", "tcp_port": port, "timeout": 0.5,
                      "devices": [{"slave": 1, "profile": "vaisala-hmp", "sensor": "hmp-ct1",
                                   "poll": 0.1},
                                  {"slave": 2, "profile": "vaisala-hmp", "poll": 0.1}]}]},
        env={},
    )  # fmt: skip
    (plan,) = plan_sources(cfg)
    assert plan.what == f"modbus tcp on 127.0.0.1:{port}"
    listed = sorted(plan.patterns)
    assert listed == [
        f"cutting.{sensor}.{name}"
        for sensor in ("hmp-ct1", "vaisala-hmp-2")
        for name in ("dew_point", "humidity", "temperature")
    ]
    async with ModbusEmulator(slaves, host="127.0.0.1", tcp_port=port):
        agent = Agent(cfg)
        task = asyncio.create_task(agent.run(handle_signals=False))
        try:
            await until(lambda: len(agent.registry.channels) >= len(listed), 15, "channels")
        finally:
            agent.stop_event.set()
            await asyncio.wait_for(task, 10)
    assert sorted(agent.registry.channels) == listed


async def test_a_simulated_floor_of_any_size_makes_the_channels_listed(tmp_path: Path) -> None:
    """`rooms` and `machines` size the simulated workshop (bench/footprint.py's floors of 12,
    200 and 1,000 channels): every listed channel is made, each name once."""
    from agent.runtime.agent import Agent

    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path),
         "sources": [{"type": "simulated", "name": "floor", "rooms": 5, "machines": 12,
                      "speed": 1_000_000, "days": 0.05, "start": "2026-01-05T00:00:00Z"}]},
        env={},
    )  # fmt: skip
    (plan,) = plan_sources(cfg)
    listed = plan.patterns
    assert len(listed) == len(set(listed)) == 2 * 5 + 12
    assert {"edge_paint.humidity", "cutting.temperature", "room05.humidity",
            "sewing.m12.tension"} <= set(listed)  # fmt: skip
    agent = Agent(cfg)
    await agent.run(handle_signals=False)
    assert sorted(agent.registry.channels) == sorted(listed)
    lines = {ch.tags["line"] for ch in agent.registry.channels.values() if "line" in ch.tags}
    assert lines == {"L1", "L2", "L3"}
