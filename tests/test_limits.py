"""Caps against careless or hostile input: channels past ``input_limits.max_channels``, MQTT
payloads past ``mqtt.max_payload`` and device clocks far from the gateway's are dropped, counted and
logged once per burst, never decoded or stored; "new channel" is summarised. Against a real
Mosquitto on 127.0.0.1; the device-clock policy on the decode path of the real profile."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from agents import running
from servers import MosquittoServer
from spoolfile import LineSink, committed_lines

from agent.config import AgentConfig, config_from_dict
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, SourceHealth
from agent.ingest.profiles import load_profile
from agent.logs import configure_logging
from agent.runtime.build import Core, build
from agent.sim.devices import DeviceEmulator

SEQ_PROFILE = """\
name: seq-json
description: a test device that publishes a sequence number
framing: {type: message}
format: {type: json}
topic: "seq/{sensor}"
fields:
  - {source: seq, measurement: seqtest, field: seq, kind: climate, range: [0, 1000000000]}
"""
SITE = "lim"


def mqtt_config(tmp_path: Path, broker: MosquittoServer, **limits: Any) -> AgentConfig:
    profile = tmp_path / "seq-json.yaml"
    profile.write_text(SEQ_PROFILE)
    return config_from_dict(
        {
            "site": SITE,
            "gateway": "gw1",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"host": broker.host, "port": broker.port, "watch_dropped": False},
            "sources": [{"type": "mqtt", "name": "seq", "profile": str(profile)}],
            "spool": {"flush_interval": "50ms"},
            "input_limits": limits,
        },
        env={},
    )


@contextlib.asynccontextmanager
async def publisher(broker: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    """A real MQTT client (aiomqtt) publishing to the test's broker."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="hostile-sender") as client:
        yield client


async def until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {predicate}")
        await asyncio.sleep(0.02)


def json_events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- channels --------------------------------------------------------------------------------


async def test_made_up_sensor_ids_stop_at_the_channel_cap(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Before: 8,000 distinct sensor ids made 16,000 channels (RSS 148 → 352 MB) and 16,000
    "new channel" lines. Now the registry stops at input_limits.max_channels, the readings of the
    rest are counted, one warning per burst, and "new channel" is summarised."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    cfg = mqtt_config(tmp_path, mosquitto, max_channels=50)
    async with running(cfg) as agent, publisher(mosquitto) as client:
        for i in range(200):
            await client.publish(f"seq/made-up-{i:04d}", json.dumps({"seq": i}), qos=1)
        await until(lambda: agent.metrics.mqtt_messages == 200)
        await client.publish("seq/made-up-0007", json.dumps({"seq": 7}), qos=1)  # a known one
        await until(lambda: agent.metrics.readings_in == 51)
    metrics = agent.metrics
    assert len(agent.registry.channels) == 50
    assert metrics.channels == 50  # the gauge in the final self-metrics point
    assert metrics.channels_refused == 150
    events = json_events(stream)
    refused = [e for e in events if e["event"].startswith("channel limit reached")]
    assert len(refused) == 2  # the first, then the burst's summary at shutdown
    assert refused[0]["level"] == "warning"
    assert refused[1]["repeated"] == 149
    assert "input_limits.max_channels" in refused[0]["reason"]
    one_by_one = [e for e in events if e["event"] == "new channel"]
    summary = [e for e in events if e["event"] == "new channels"]
    assert len(one_by_one) == 20
    assert [(e["count"], e["first"], e["last"]) for e in summary] == [
        (30, "seq.made-up-0020.seq", "seq.made-up-0049.seq")
    ]


def test_configured_and_agent_made_channels_pass_the_cap(tmp_path: Path) -> None:
    sink = LineSink()
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path),
         "input_limits": {"max_channels": 10}, "channels": [{"name": "x.named"}]},
        env={},
    )  # fmt: skip
    core = build(cfg, spool=sink)  # type: ignore[arg-type]
    make = core.registry.get_or_create
    for i in range(10):
        make(f"x.c{i}", measurement="m", field="f", unit="", kind="climate", tags={})
    with pytest.raises(Exception, match="at most 10"):
        make("x.c10", measurement="m", field="f", unit="", kind="climate", tags={})
    make("x.named", measurement="m", field="f", unit="", kind="climate", tags={})
    make("x.de00", measurement="m", field="f", unit="", kind="color", tags={}, capped=False)
    assert len(core.registry.channels) == 12


# -- payload size ----------------------------------------------------------------------------


async def test_a_5_mb_payload_is_counted_and_never_decoded(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Before: nothing in Mosquitto, paho or aiomqtt limits a payload (up to MQTT's 256 MB):
    a 5 MB sensor message went to the decoder and a 5 MB context message of valid JSON was
    parsed, applied and saved."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    cfg = mqtt_config(tmp_path, mosquitto)
    huge_context = json.dumps({f"k{i}": "v" * 200 for i in range(24_000)}).encode()
    assert len(huge_context) > 5_000_000
    async with running(cfg) as agent, publisher(mosquitto) as client:
        await client.publish("seq/big", b'{"seq": 1, "pad": "' + b"x" * 5_000_000 + b'"}', qos=1)
        await client.publish(f"driftgate/{SITE}/context/line/L2", huge_context, qos=1)
        await client.publish("seq/small", json.dumps({"seq": 2}), qos=1)
        await until(lambda: agent.metrics.readings_in == 1)
    (source,) = agent.sources
    metrics = agent.metrics
    assert metrics.mqtt_oversized == 2
    assert source.health.frames == 1  # only the small one reached the source
    assert metrics.decode_errors == 0
    assert metrics.context_refused == 0
    assert agent.context.scopes == {}
    too_large = [e for e in json_events(stream) if e["event"].startswith("mqtt message too large")]
    assert too_large[0]["bytes"] > 5_000_000
    assert too_large[0]["limit"] == 256 * 1024


async def test_long_made_up_topics_are_routed_but_never_remembered(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Before: the route cache kept up to 10,000 topics of up to 64 KiB each (640 MB)."""
    cfg = mqtt_config(tmp_path, mosquitto)
    async with running(cfg) as agent, publisher(mosquitto) as client:
        for i in range(30):
            await client.publish(f"seq/{i:02d}{'x' * 60_000}", json.dumps({"seq": i}), qos=1)
        await client.publish("seq/short", json.dumps({"seq": 1}), qos=1)
        await until(lambda: agent.metrics.mqtt_messages == 31)
        assert agent.mqtt is not None
        assert [len(topic) for topic in agent.mqtt._routes] == [len("seq/short")]
    assert agent.metrics.decode_errors == 30  # a 60 KB topic level is no sensor tag
    assert agent.metrics.readings_in == 1


TAGGED_PROFILE = """\
name: tagged-json
description: a test device that names itself in the payload
framing: {type: message}
format: {type: json}
topic: "tagged/x"
tags: {sensor: id}
fields:
  - {source: seq, measurement: seqtest, field: seq, kind: climate, range: [0, 1000000000]}
"""


async def test_a_lone_surrogate_in_a_json_tag_is_a_decode_error(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Before: `{"id": "\\ud800"}` became a tag no UTF-8 can carry: every spool commit failed
    from then on and the agent gave up after five crashes of its spool task."""
    profile = tmp_path / "tagged-json.yaml"
    profile.write_text(TAGGED_PROFILE)
    cfg = config_from_dict(
        {"site": SITE, "gateway": "gw1", "state_dir": str(tmp_path / "state"),
         "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "watch_dropped": False},
         "sources": [{"type": "mqtt", "name": "t", "profile": str(profile)}],
         "spool": {"flush_interval": "50ms"}},
        env={},
    )  # fmt: skip
    async with running(cfg) as agent, publisher(mosquitto) as client:
        await client.publish("tagged/x", b'{"seq": 1, "id": "\\ud800"}', qos=1)
        await client.publish("tagged/x", b'{"seq": 2, "id": "probe-1"}', qos=1)
        await until(lambda: agent.metrics.spool_committed >= 1)
    assert agent.metrics.decode_errors == 1
    assert agent.metrics.readings_in == 1
    assert agent.metrics.task_restarts == 0
    assert committed_lines(tmp_path / "state", "seqtest") != []


# -- device clocks ---------------------------------------------------------------------------


def tension_handler(tmp_path: Path, **limits: Any) -> tuple[Core, FrameHandler, LineSink]:
    sink = LineSink()
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path), "input_limits": limits}, env={}
    )
    core = build(cfg, spool=sink)  # type: ignore[arg-type]
    handler = FrameHandler(
        "tension",
        Decoder(load_profile("hx711-tension")),
        core.pipeline,
        core.registry,
        prefix="sewing",
        base_tags={},
        health=SourceHealth(),
    )
    return core, handler, sink


def tension_frame(device_s: float) -> bytes:
    """One HX711 batch frame whose device clock says ``device_s`` (framing removed)."""
    data = DeviceEmulator("hx711-tension").frames(device_s)[0].data
    return data.strip(b"\x02\x03")


def test_a_device_clock_far_from_the_gateways_is_refused_and_dead_lettered(
    tmp_path: Path,
) -> None:
    """Before: a device timestamp in 2099 was stored (anything from 2000 to 2100 passed)."""
    core, handler, sink = tension_handler(tmp_path)
    now = time.time()
    per_frame = len(handler.decoder.decode(tension_frame(now), received_ns=0).values)
    assert per_frame > 1
    for device_s in (now, 4_070_908_800.0, now - 2 * 365 * 86400, now + 3600):  # 2099; 2 y ago
        handler.frame(tension_frame(device_s))
    points = [line for line in sink.lines if line.startswith("tension,")]
    metrics = core.pipeline.metrics
    assert len(points) == 2 * per_frame  # now, and an hour ahead: kept
    assert metrics.device_time_refused == 2 * per_frame
    assert metrics.readings_in == 2 * per_frame
    reasons = [reason for _, reason in core.pipeline.rejected]
    assert len(reasons) == 2
    assert reasons[0].startswith("tension: device time 2099-01-01T00:00:00Z is ")
    assert "ahead of the gateway's clock" in reasons[0]
    assert "input_limits.max_ahead is 1 d" in reasons[0]
    assert "behind the gateway's clock" in reasons[1]
    assert "input_limits.max_behind is 365 d" in reasons[1]
    assert metrics.invalid_readings == 0  # a clock is not a value out of range


def test_the_skew_allowed_is_a_setting(tmp_path: Path) -> None:
    core, handler, sink = tension_handler(tmp_path, max_ahead="5m")
    handler.frame(tension_frame(time.time() + 3600))
    assert not [line for line in sink.lines if line.startswith("tension,")]
    assert core.pipeline.metrics.device_time_refused > 0
