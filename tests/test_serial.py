"""The serial source on real socat pty pairs: frames → readings in the spool, unplug / replug,
garbage and wrong-baud noise; and `driftgate simulate` feeding an agent into InfluxDB 1.6."""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import serial
import structlog
import yaml
from servers import InfluxDB1Server, MosquittoServer, SerialPair
from spoolfile import committed_lines

from agent.backoff import SERIAL_RECONNECT_MAX_S, Retries, serial_policy
from agent.config import config_from_dict
from agent.ingest.frames import SourceHealth
from agent.ingest.reconnect import Reconnector
from agent.ingest.serial import SerialSource
from agent.logs import configure_logging
from agent.runtime.agent import Agent
from agent.sim.devices import DEMO_START, DeviceEmulator, DeviceFrame

SITE, GATEWAY = "floor1", "gw-serial"

# -- helpers ---------------------------------------------------------------------------------


def serial_agent_config(state_dir: Path, port: str, profile: str, **source: Any) -> Any:
    return config_from_dict(
        {
            "site": SITE,
            "gateway": GATEWAY,
            "state_dir": str(state_dir),
            "self_metrics": {"interval": 60},
            "spool": {"flush_interval": 0.1},
            "sources": [
                {"type": "serial", "name": "dev", "profile": profile, "port": port, **source}
            ],
        }
    )


class Agents:
    """In-process agents started by a test, each stopped cleanly (SIGTERM-like) at the end."""

    def __init__(self) -> None:
        self.tasks: dict[int, tuple[Agent, asyncio.Task[Any]]] = {}

    def start(self, cfg: Any) -> Agent:
        agent = Agent(cfg)
        task = asyncio.create_task(agent.run(handle_signals=False), name="agent")
        self.tasks[id(agent)] = (agent, task)
        return agent

    async def stop(self, agent: Agent) -> None:
        agent.stop_event.set()
        _, task = self.tasks.pop(id(agent))
        await asyncio.wait_for(task, 10)


@pytest_asyncio.fixture
async def agents() -> AsyncIterator[Agents]:
    runner = Agents()
    yield runner
    for agent, _ in list(runner.tasks.values()):
        await runner.stop(agent)


def spooled(state_dir: Path, measurement: str) -> list[tuple[dict[str, str], str, float, int]]:
    """``(tags, field, value, ts_ns)`` of every committed line of a measurement, in order."""
    out = []
    for line in committed_lines(state_dir, measurement):  # not alerts nor self-metrics
        series, field_set, ts = line.split(" ")
        _, *tag_parts = series.split(",")
        tags = dict(part.split("=", 1) for part in tag_parts)
        field, value = field_set.split("=", 1)
        out.append((tags, field, float(value), int(ts)))
    return out


async def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> float:
    """Seconds it took; fails after ``limit`` seconds (generous: tests never assert timings;
    the 5 s resume bound is checked on the backoff policy and measured in bench/)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > limit:
            pytest.fail(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def open_emulator_end(pair: SerialPair) -> serial.Serial:
    return serial.Serial(pair.emulator, 115200, write_timeout=2)


def emitted(emulator: DeviceEmulator, n: int, start: float = DEMO_START) -> list[DeviceFrame]:
    frames: list[DeviceFrame] = []
    t = start
    while len(frames) < n:
        frames += emulator.frames(t)
        t += emulator.interval
    return frames[:n]


def serial_source(agent: Agent) -> SerialSource:
    (source,) = agent.sources
    assert isinstance(source, SerialSource)
    return source


# -- frames → readings -----------------------------------------------------------------------


async def test_probe_frames_become_tagged_readings_in_the_spool(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    cfg = serial_agent_config(
        tmp_path / "state", serial_pair.device, "sht4x-serial", zone="edge_paint", line="L1"
    )
    agent = agents.start(cfg)
    source = serial_source(agent)
    await wait_until(lambda: source.health.connected, 15, "the port to open")
    frames = emitted(DeviceEmulator("sht4x-serial"), 60)
    port = open_emulator_end(serial_pair)
    for frame in frames:
        port.write(frame.data)
    port.close()
    await wait_until(lambda: source.health.frames == 60, 15, "60 frames")
    await agents.stop(agent)

    assert source.health.readings == 120
    assert source.health.decode_errors == 0
    assert source.health.discarded_bytes == 0
    assert {c.name for c in agent.channels} == {
        "edge_paint.sht41-ep1.humidity",
        "edge_paint.sht41-ep1.temperature",
    }
    lines = spooled(tmp_path / "state", "climate")
    assert len(lines) == 120
    tags = {"site": SITE, "gateway": GATEWAY, "zone": "edge_paint", "line": "L1"}
    tags["sensor"] = "sht41-ep1"
    assert all(line_tags == tags for line_tags, *_ in lines)
    for name, field in (("humidity", "humidity_rh"), ("temperature", "temperature_c")):
        got = [value for _, f, value, _ in lines if f == field]
        want = [v for frame in frames for n, _, v in frame.expected if n == name]
        assert got == want
    stamps = [ts for _, f, _, ts in lines if f == "humidity_rh"]
    assert len(set(stamps)) == len(stamps), "frames of one read must not share a timestamp"


# -- unplug / replug -------------------------------------------------------------------------


async def test_unplug_and_replug_resumes_and_never_misparses_a_cut_frame(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    state = tmp_path / "state"
    cfg = serial_agent_config(state, serial_pair.device, "hx711-tension", zone="sewing")
    agent = agents.start(cfg)
    source = serial_source(agent)
    await wait_until(lambda: source.health.connected, 15, "the port to open")
    # The device's own clock near the gateway's: further than input_limits.max_behind (1 year) from
    # it, a frame is refused (docs/architecture.md, "Time").
    frames = emitted(DeviceEmulator("hx711-tension", device="m05"), 60, start=time.time() - 600)
    sent: list[DeviceFrame] = []

    async def stream(port: serial.Serial, batch: list[DeviceFrame]) -> None:
        for frame in batch:
            port.write(frame.data)
            sent.append(frame)
            await asyncio.sleep(0.01)

    port = open_emulator_end(serial_pair)
    await stream(port, frames[:20])
    await wait_until(lambda: source.health.frames == 20, 15, "the first 20 frames")

    # The device is unplugged in the middle of a frame: its first half is on the wire.
    cut = frames[20].data
    port.write(cut[: len(cut) // 2])
    port.flush()
    await asyncio.sleep(0.3)
    port.close()
    serial_pair.stop()
    await wait_until(lambda: not source.health.connected, 10, "the unplug to be noticed")
    assert source.health.reconnects == 0
    await asyncio.sleep(1.5)  # a few failed opens: the backoff grows

    serial_pair.start()
    replugged = time.monotonic()
    port = open_emulator_end(serial_pair)
    # Bytes written while the port is closed are lost (pyserial flushes input on open), as
    # with a real device; what matters is what arrives first once it is open again.
    await wait_until(lambda: source.health.connected, 15, "the source to reopen the port")
    # A device that kept running is mid-frame when the port comes back: the tail of another
    # frame arrives first. Joined to the cut frame's head it would be one bogus frame.
    tail = frames[21].data
    port.write(tail[len(tail) // 2 :])
    before = source.health.readings
    streaming = asyncio.create_task(stream(port, frames[22:]))
    await wait_until(lambda: source.health.readings > before, 15, "readings after the replug")
    resumed_after = time.monotonic() - replugged
    await streaming
    port.close()
    await wait_until(lambda: source.health.frames == 58, 15, "every whole frame")
    assert resumed_after < 5.0, f"readings resumed {resumed_after:.2f} s after the replug"
    assert source.health.connected
    assert source.health.reconnects == 1
    assert source.health.decode_errors == 0, "a cut frame was joined to another one"
    assert source.health.discarded_bytes >= len(cut) // 2 - 1
    await agents.stop(agent)

    expected = {(ts, value) for frame in sent for _, ts, value in frame.expected}
    lines = spooled(state, "tension")
    got = {(ts, value) for _, _, value, ts in lines}
    assert len(lines) == len(expected) == 58 * 50  # every whole frame, nothing else
    assert got == expected
    assert all(tags["station"] == "m05" and tags["zone"] == "sewing" for tags, *_ in lines)


def test_backoff_never_waits_past_the_resume_bound() -> None:
    rng = random.Random(3)
    for reconnect_max in (0.5, 1.0, SERIAL_RECONNECT_MAX_S, 30.0):
        policy = Reconnector(
            ScriptedLink([]), source="dev", what="device", health=SourceHealth(), cap=reconnect_max
        ).retries.policy
        waits = [policy.delay(n, rand=rng.random) for n in range(40) for _ in range(50)]
        # The longest draw too: the wait must leave time to open the port within the bound.
        waits += [policy.delay(n, rand=lambda: 0.0) for n in range(40)]
        assert max(waits) < reconnect_max
        assert min(waits) > 0
    assert serial_policy(SERIAL_RECONNECT_MAX_S).delay(0, rand=rng.random) <= 0.2


FAIL = -1.0


class ScriptedLink:
    """A device link that follows a script: FAIL is an open that fails (unplugged), a number
    an open that succeeds and loses the link that many seconds later; after the script the
    link stays up. Records the reconnector's attempt count at each open."""

    def __init__(self, script: list[float]) -> None:
        self.script = script
        self.reconnector: Reconnector | None = None
        self.attempt_at_open: list[int] = []
        self.done = asyncio.Event()
        self._hold = 0.0

    async def open(self) -> None:
        assert self.reconnector is not None
        self.attempt_at_open.append(self.reconnector.retries.attempt)
        if not self.script:
            self.done.set()
            return
        step = self.script.pop(0)
        if step == FAIL:
            raise FileNotFoundError(2, "No such file or directory")
        self._hold = step

    async def wait_lost(self) -> BaseException | None:
        if self.done.is_set():
            await asyncio.Event().wait()
        await asyncio.sleep(self._hold)
        return OSError(5, "Input/output error")

    async def close(self) -> None:
        return None


async def test_a_link_up_for_the_stable_period_starts_over_at_the_base_wait() -> None:
    """Failed opens and links lost at once keep growing the wait; a link that stayed up for
    the stable period starts the next outage at the base wait."""
    link = ScriptedLink([FAIL, FAIL, FAIL, 0.0, FAIL, 0.6, FAIL])
    health = SourceHealth()
    reconnector = Reconnector(link, source="dev", what="device", health=health)
    # The serial policy with short waits and a 0.5 s stable period, so this takes a second.
    reconnector.retries = Retries(
        replace(reconnector.retries.policy, base=0.001, cap=0.004, stable_after=0.5)
    )
    link.reconnector = reconnector
    task = asyncio.create_task(reconnector.run())
    try:
        await asyncio.wait_for(link.done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert link.attempt_at_open == [0, 1, 2, 3, 4, 5, 1, 2]
    assert health.reconnects == 2
    assert reconnector.outages == 3


# -- garbage and wrong baud rate -------------------------------------------------------------


def wrong_baud_noise(rng: random.Random, n: int) -> bytes:
    """What a UART at the wrong speed delivers: mostly high bytes, some that look like
    framing (`$`, CR LF) so the framer cuts bogus frames out of it."""
    alphabet = bytes(range(0x80, 0x100)) + b"$$$\r\n,=*0123456789"
    return bytes(rng.choice(alphabet) for _ in range(n))


async def test_garbage_and_wrong_baud_noise_are_counted_logged_once_and_survived(
    tmp_path: Path, serial_pair: SerialPair, agents: Agents
) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        cfg = serial_agent_config(
            tmp_path / "state", serial_pair.device, "sht4x-serial", zone="edge_paint"
        )
        agent = agents.start(cfg)
        source = serial_source(agent)
        await wait_until(lambda: source.health.connected, 15, "the port to open")
        frames = emitted(DeviceEmulator("sht4x-serial"), 4)
        rng = random.Random(7)
        port = open_emulator_end(serial_pair)
        port.write(frames[0].data)
        await wait_until(lambda: source.health.readings == 2, 15, "the first frame")

        for i, burst in enumerate(
            (
                [b"\x00\xff\xfe garbage \x07" * 20] * 5,  # line noise, no framing in it
                [wrong_baud_noise(rng, 700) for _ in range(6)],  # a wrong baud rate
            )
        ):
            for chunk in burst:
                port.write(chunk)
                await asyncio.sleep(0.02)
            port.write(b"\r\n" + frames[i + 1].data)
            await wait_until(
                lambda i=i: source.health.readings == 2 * (i + 2), 15, "the next good frame"
            )
        port.write(frames[3].data)
        await wait_until(lambda: source.health.readings == 8, 15, "the last frame")
        port.close()
        health = source.health
        tasks = {t.get_name(): t for t in asyncio.all_tasks()}
        assert not tasks["source:dev"].done()
        await agents.stop(agent)
    finally:
        structlog.reset_defaults()

    assert health.discarded_bytes > 100 * 5
    assert health.decode_errors >= 1  # the wrong-baud noise held `$…\r\n` bogus frames
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    discarding = [e for e in events if e["event"] == "discarding serial bytes"]
    assert len(discarding) == 2, "one warning per burst"
    assert all(e["level"] == "warning" and e["source"] == "dev" for e in discarding)
    clean = [e for e in events if e["event"] == "serial frames decode again"]
    assert len(clean) == 2
    assert sum(e["discarded_bytes"] for e in clean) == health.discarded_bytes
    undecodable = [e for e in events if e["event"] == "cannot decode frame"]
    # Identical warnings in a burst: logged once, the rest summarised by the logging layer.
    assert len([e for e in undecodable if "repeated" not in e]) == 1
    assert sum(e.get("repeated", 0) for e in undecodable) == health.decode_errors - 1
    readings = [v for _, f, v, _ in spooled(tmp_path / "state", "climate") if f == "humidity_rh"]
    assert readings == [v for f in frames for n, _, v in f.expected if n == "humidity"]


# -- driftgate simulate ----------------------------------------------------------------------


def start_process(args: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdin=subprocess.DEVNULL,
        stdout=(workdir / f"{name}.out").open("w"),
        stderr=(workdir / f"{name}.err").open("w"),
        cwd=workdir,
    )


def wait_sync(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_simulate_serial_feeds_an_agent_into_influxdb(
    tmp_path: Path, serial_pair: SerialPair, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    server, db = influx_db
    cfg = {
        "site": SITE,
        "gateway": GATEWAY,
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "info", "format": "json"},
        "sources": [
            {
                "type": "serial",
                "name": "probe-ep1",
                "profile": "sht4x-serial",
                "port": serial_pair.device,
                "zone": "edge_paint",
                "station": "paint-1",
            }
        ],
        "influx": {"url": server.url, "api": "v1", "database": db, "flush_interval": 0.2},
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(cfg))
    agent = start_process(["run", "-c", "agent.yaml"], tmp_path, "agent")
    try:
        wait_sync(
            lambda: "serial device connected" in (tmp_path / "agent.err").read_text(),
            15,
            "the agent to open the port",
        )
        n, start = 150, "2024-03-15T08:00:00Z"
        sim = subprocess.run(
            [
                *(sys.executable, "-m", "agent", "simulate", "--profile", "sht4x-serial"),
                *("--serial", serial_pair.emulator, "--rate", "100", "--count", str(n)),
                *("--start", start, "--seed", "4"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr
        assert f"{n} frames sent" in sim.stdout.splitlines()[-1]
        wait_sync(lambda: server.count("climate", db) >= n, 20, f"{n} climate points in InfluxDB")
        agent.terminate()
        assert agent.wait(10) == 0, (tmp_path / "agent.err").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    rows = server.points("climate", db)
    assert len(rows) == n
    emulator = DeviceEmulator("sht4x-serial", start=1710489600.0, seed=4)
    frames = emitted(emulator, n, start=1710489600.0)
    assert [r["humidity_rh"] for r in rows] == [f.expected[0][2] for f in frames]
    assert [r["temperature_c"] for r in rows] == [f.expected[1][2] for f in frames]
    for row in rows:
        assert row["site"] == SITE
        assert row["gateway"] == GATEWAY
        assert row["zone"] == "edge_paint"
        assert row["station"] == "paint-1"
        assert row["sensor"] == "sht41-ep1"
    health = server.rows('SELECT last("frames") AS frames FROM driftgate_source', db)
    assert health
    assert health[0]["frames"] == n


def test_simulate_mqtt_publishes_the_devices_real_messages(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    sub = subprocess.Popen(
        [
            *("mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port)),
            *("-v", "-t", "tele/#", "-C", "5"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # subscribed before the first publish
        sim = subprocess.run(
            [
                *(sys.executable, "-m", "agent", "simulate", "--profile", "tasmota-sht3x"),
                *("--mqtt", f"mqtt://{mosquitto.host}:{mosquitto.port}", "--rate", "20"),
                *("--count", "5", "--start", "2024-03-01T08:00:00Z"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr
        out, _ = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    frames = emitted(DeviceEmulator("tasmota-sht3x"), 5)
    assert out.splitlines() == [f"{f.topic} {f.data.decode()}" for f in frames]
