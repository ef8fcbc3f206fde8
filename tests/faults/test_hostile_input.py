"""Hostile or careless input over a real Mosquitto and real serial ptys into an in-process
agent forwarding to a real InfluxDB 1.6: random payloads, invalid UTF-8, NaN and infinity,
5 MB payloads, JSON nested 10,000 deep, thousands of made-up topic ids, context messages
InfluxDB would refuse; serial garbage, over-long lines and device clocks far off. The agent
keeps going, the good readings mixed in arrive exactly, everything else is counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import serial
from conftest import FaultRow
from servers import InfluxDB1Server, MosquittoServer, SerialPair

from agent.config import AgentConfig, config_from_dict
from agent.ingest.decode import append_checksum
from agent.ingest.profiles import load_profile
from agent.ingest.serial import SerialSource
from agent.runtime.agent import Agent, RunResult
from agent.sim.devices import DeviceEmulator

SITE = "hostile"
SEQ_PROFILE = """\
name: seq-json
description: a test device that publishes a sequence number
framing: {type: message}
format: {type: json}
topic: "seq/{sensor}"
fields:
  - {source: seq, measurement: seqtest, field: seq, kind: climate, range: [0, 1000000000]}
"""
MAX_CHANNELS = 100
NOT_FINITE = [b'{"seq": NaN}', b'{"seq": Infinity}', b'{"seq": -Infinity}', b'{"seq": 1e999}']
CONTEXT = f"driftgate/{SITE}/context"


@contextlib.asynccontextmanager
async def agent_running(cfg: AgentConfig) -> AsyncIterator[tuple[Agent, list[RunResult]]]:
    """An agent in this event loop; stopped (and its result appended) at exit."""
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(drain_at_end=10, handle_signals=False), name="agent")
    results: list[RunResult] = []
    try:
        yield agent, results
    finally:
        agent.stop_event.set()
        results.append(await asyncio.wait_for(task, 60))


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def deep(levels: int) -> bytes:
    """A JSON object nested ``levels`` deep (60 KB for 10,000: under the profile's 64 KiB)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


HOSTILE_CONTEXT: list[tuple[str, bytes]] = [
    ("line/L2", json.dumps({f"k{i:04d}": "v" * 200 for i in range(2000)}).encode()),  # 430 KB
    ("line/L2", json.dumps({"lot": "LOT\nDROP TABLE"}).encode()),
    ("line/L2", json.dumps({"zone": "elsewhere"}).encode()),
    ("line/L2", b'{"lot": NaN}'),
    ("line/L2", b'{"lot": "\\ud800"}'),
    ("line/L2", json.dumps({"lot": "x" * 300}).encode()),
    ("line/L2", b"[" * 10_000 + b"]" * 10_000),
    ("line/L2", b"\xff\xfe not json"),
    ("bay/B1", json.dumps({"lot": "x"}).encode()),
    ("line/" + "n" * 200, json.dumps({"lot": "x"}).encode()),
]


async def test_hostile_mqtt_input(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influx_db: tuple[InfluxDB1Server, str],
    fault_report: Callable[[FaultRow], None],
    soak: bool,
) -> None:
    server, db = influx_db
    profile = tmp_path / "seq-json.yaml"
    profile.write_text(SEQ_PROFILE)
    cfg = config_from_dict(
        {
            "site": SITE,
            "gateway": "gw1",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "watch_dropped": False},
            "sources": [{"type": "mqtt", "name": "seq", "profile": str(profile), "line": "L2"}],
            "influx": {"url": server.url, "database": db, "flush_interval": 0.2},
            "spool": {"flush_interval": "50ms"},
            "input_limits": {"max_channels": MAX_CHANNELS},
        },
        env={},
    )
    rng = random.Random(20261130)
    ids = 8000 * (5 if soak else 1)
    sensor: list[tuple[str, bytes]] = []  # every message to a sensor topic, in order
    good: list[int] = []
    for i in range(ids):  # made-up sensor ids: a channel each, up to the cap
        sensor.append((f"seq/h{i:05d}", json.dumps({"seq": i}).encode()))
        if i % 40 == 0:
            good.append(len(good))
            sensor.append(("seq/good", json.dumps({"seq": good[-1]}).encode()))
        if i % 25 == 0:  # random bytes, invalid UTF-8, NaN/inf, a value that overflows
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            sensor.append(("seq/good", noise))
            sensor.append(("seq/good", b'{"seq": "\xff\xfe\xfd"}'))
            sensor.append(("seq/good", rng.choice(NOT_FINITE)))
        if i % 2000 == 0:
            sensor.append(("seq/good", deep(10_000)))
            sensor.append(("seq/good", b"[" * 10_000 + b"]" * 10_000))
            sensor.append(("seq/good", b'{"seq": 1, "pad": "' + b"x" * 5_000_000 + b'"}'))
    context = [(f"{CONTEXT}/{where}", payload) for where, payload in HOSTILE_CONTEXT]
    context.append((f"{CONTEXT}/line/L2", b'{"lot": "LOT-' + b"x" * 5_000_000 + b'"}'))
    n_context = len(context)
    context_oversized = sum(len(payload) > 256 * 1024 for _, payload in context)  # 5 MB, 430 KB
    after = list(range(len(good), len(good) + 10))  # good readings after a valid context

    async with agent_running(cfg) as (agent, results):
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 10)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hostile") as pub:
            for n, (topic, payload) in enumerate(sensor):
                await pub.publish(topic, payload, qos=1)
                if n % 300 == 0 and context:
                    await pub.publish(*context.pop(), qos=1)
            for item in context:
                await pub.publish(*item, qos=1)
            await pub.publish(f"{CONTEXT}/line/L2", b'{"lot": "LOT-OK"}', qos=1)
            await until(lambda: agent.context.scopes.get("line:L2") == {"lot": "LOT-OK"}, 60,
                        "the valid context")  # fmt: skip
            for seq in after:
                await pub.publish("seq/good", json.dumps({"seq": seq}).encode(), qos=1)
        total = len(sensor) + n_context + 1 + len(after)
        await until(lambda: agent.metrics.mqtt_messages == total, 120, "every message")
    (result,) = results
    assert result.failure is None
    metrics = result.metrics
    assert metrics.task_restarts == 0

    rows = await asyncio.to_thread(
        server.rows, "SELECT seq, sensor, lot FROM seqtest ORDER BY time", db
    )
    by_sensor: dict[str, list[int]] = {}
    for row in rows:
        by_sensor.setdefault(row["sensor"], []).append(int(row["seq"]))
    assert by_sensor.pop("good") == good + after  # exactly, in order
    assert [int(r["seq"]) for r in rows if r["lot"] == "LOT-OK"] == after
    made_up = sorted(int(name[1:]) for name in by_sensor)
    assert made_up == list(range(MAX_CHANNELS - 1))  # the cap, less the good channel
    assert all(values == [int(name[1:])] for name, values in by_sensor.items())
    assert metrics.channels == MAX_CHANNELS
    # Every hostile context message refused, or (the large ones) dropped before decoding.
    assert metrics.context_refused == n_context - context_oversized
    assert agent.context.scopes == {"line:L2": {"lot": "LOT-OK"}}
    assert result.dead_letters == metrics.invalid_readings  # NaN/inf kept with their reason

    # The row counts readings: the messages to sensor topics (context messages are not).
    sent = len(sensor) + len(after)
    taken = metrics.mqtt_messages - n_context - 1
    assert taken == sent
    fault_report(
        FaultRow(
            fault=f"hostile MQTT input ({ids:,} made-up ids, 5 MB, NaN, deep JSON)",
            sent=sent,
            acknowledged=taken,
            arrived=len(rows),
            dropped={
                "not decodable (random, not UTF-8, deep JSON)": metrics.decode_errors,
                "NaN/inf, dead-lettered": metrics.invalid_readings,
                "over mqtt.max_payload": metrics.mqtt_oversized - context_oversized,
                "past input_limits.max_channels": metrics.channels_refused,
            },
            duplicates=len(rows) - len({(r["sensor"], r["seq"]) for r in rows}),
        )
    )


# -- serial ----------------------------------------------------------------------------------


def serial_config(state: Path, port: str, profile: str, server: InfluxDB1Server, db: str) -> Any:
    return config_from_dict(
        {
            "site": SITE,
            "gateway": "gw-serial",
            "state_dir": str(state),
            "sources": [{"type": "serial", "name": "dev", "profile": profile, "port": port}],
            "influx": {"url": server.url, "database": db, "flush_interval": 0.2},
            "spool": {"flush_interval": 0.1},
        },
        env={},
    )


def source_of(agent: Agent) -> SerialSource:
    (source,) = agent.sources
    assert isinstance(source, SerialSource)
    return source


def probe_frame(n: int, rh: float, t: float = 21.0) -> bytes:
    checksum = load_profile("sht4x-serial").checksum
    body = f"$id=p{n % 3},rh={rh:.2f},t={t:.2f}".encode()
    return append_checksum(checksum, body) + b"\r\n"


async def test_serial_garbage_and_oversized_lines(
    tmp_path: Path,
    serial_pair: SerialPair,
    influx_db: tuple[InfluxDB1Server, str],
    fault_report: Callable[[FaultRow], None],
    soak: bool,
) -> None:
    """Every good frame arrives, including the one right after more than max_length (256)
    unterminated bytes (before: dropped with the "rest of the long line")."""
    server, db = influx_db
    cfg = serial_config(tmp_path / "state", serial_pair.device, "sht4x-serial", server, db)
    rng = random.Random(7)
    rounds = 60 * (5 if soak else 1)
    good: list[float] = []
    frames_sent = 0
    async with agent_running(cfg) as (agent, results):
        source = source_of(agent)
        await until(lambda: source.health.connected, 15, "the port")
        port = serial.Serial(serial_pair.emulator, 115200, write_timeout=5)
        for n in range(rounds):
            kind = n % 6
            if kind == 0:  # an unterminated run past max_length, then a frame in another read
                port.write(bytes(rng.choice(b"ABCDEFGH0123456789,=") for _ in range(300)))
            elif kind == 1:  # an over-long line, terminated
                port.write(b"$" + b"9" * rng.randrange(300, 2000) + b"\r\n")
            elif kind == 2:  # binary noise (it may hold "\n" and "$": bogus frames)
                port.write(bytes(rng.randrange(256) for _ in range(rng.randrange(50, 400))))
                port.write(b"\r\n")
            elif kind == 3:  # a frame with a bad checksum
                port.write(probe_frame(n, 50.0)[:-5] + b"00\r\n")
                frames_sent += 1
            elif kind == 4:  # a value out of range (humidity 153 %RH)
                port.write(probe_frame(n, 153.0))
                frames_sent += 1
            port.flush()
            await asyncio.sleep(0.03)  # the garbage and the frame in separate reads
            rh = 40.0 + n / 100
            good.append(rh)
            port.write(probe_frame(n, rh))
            frames_sent += 1
            port.flush()
            await asyncio.sleep(0.01)
        port.close()
        await until(lambda: source.health.readings >= 2 * len(good) - 1, 30, "the good frames")
        await asyncio.sleep(0.3)
        health = source.health
    (result,) = results
    assert result.failure is None
    metrics = result.metrics

    rows = await asyncio.to_thread(
        server.rows, "SELECT humidity_rh, temperature_c FROM climate ORDER BY time", db
    )
    humidity = [row["humidity_rh"] for row in rows if row["humidity_rh"] is not None]
    temperature = [row["temperature_c"] for row in rows if row["temperature_c"] is not None]
    assert humidity == good  # every good frame, in order: none lost after an over-long run
    arrived = len(humidity) + len(temperature)
    fault_report(
        FaultRow(
            fault=f"serial garbage and oversized lines ({health.discarded_bytes:,} bytes "
            "discarded; readings, 2 a frame)",
            sent=2 * frames_sent,
            acknowledged=2 * health.frames,
            arrived=arrived,
            dropped={
                "frame did not decode (checksum, cut from noise)": 2 * health.decode_errors,
                "out of range, dead-lettered": metrics.invalid_readings,
            },
            duplicates=len(humidity) - len(set(humidity)),
        )
    )
    assert health.discarded_bytes >= rounds // 6 * 300


async def test_device_clock_far_off_over_serial(
    tmp_path: Path,
    serial_pair: SerialPair,
    influx_db: tuple[InfluxDB1Server, str],
    fault_report: Callable[[FaultRow], None],
) -> None:
    """A tension sensor whose clock says 2099, then 2020, then the right time: the wrong ones
    are dead-lettered and counted (before: stored as they came)."""
    server, db = influx_db
    cfg = serial_config(tmp_path / "state", serial_pair.device, "hx711-tension", server, db)
    emulator = DeviceEmulator("hx711-tension", device="m05")
    now = time.time()
    wrong = [4_070_908_800.0 + i for i in range(3)] + [1_577_836_800.0 + i for i in range(3)]
    right = [now - 5 + i for i in range(4)]
    frames = [emulator.frames(t)[0].data for t in wrong + right]
    async with agent_running(cfg) as (agent, results):
        source = source_of(agent)
        await until(lambda: source.health.connected, 15, "the port")
        port = serial.Serial(serial_pair.emulator, 230400, write_timeout=5)
        for data in frames:
            port.write(data)
            port.flush()
            await asyncio.sleep(0.02)
        port.close()
        await until(lambda: source.health.frames == len(frames), 15, "every frame")
    (result,) = results
    metrics = result.metrics
    per_frame = metrics.readings_in // len(right)
    assert per_frame > 1
    rows = await asyncio.to_thread(server.rows, "SELECT tension_cn FROM tension", db)
    assert result.dead_letters == len(wrong)  # each refused frame kept whole, with its reason
    fault_report(
        FaultRow(
            fault="device clock far off (serial, 2099 and 2020)",
            sent=per_frame * len(frames),
            acknowledged=per_frame * source_of(agent).health.frames,
            arrived=len(rows),
            dropped={"beyond input_limits.max_ahead/max_behind, dead-lettered": (
                metrics.device_time_refused)},
        )
    )  # fmt: skip
    assert metrics.device_time_refused == per_frame * len(wrong)
