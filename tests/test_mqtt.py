"""The MQTT link and source against a real Mosquitto on 127.0.0.1: mosquitto_pub sends ESPHome
and Tasmota payloads, the broker restarts under load, QoS 1 messages published while the agent
is stopped arrive after it restarts (exact counts), birth/will status, production context over
MQTT into a real InfluxDB, the broker's drop counter, and the shipped broker config (TLS,
passwords, ACL) started as is."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from agents import running
from aiomqtt import MqttError
from servers import LOOPBACK, InfluxDB1Server, MosquittoServer, require_binary
from spoolfile import committed_lines

from agent.backoff import MQTT, Retries
from agent.config import AgentConfig, config_from_dict
from agent.context import ContextError
from agent.ingest.broker import MqttLink, parse_context
from agent.ingest.decode import Decoder
from agent.ingest.mqtt import subscription_filter
from agent.ingest.profiles import load_profile
from agent.logs import configure_logging, flush_bursts
from agent.metrics import AgentMetrics
from agent.runtime.agent import Agent

ROOT = Path(__file__).resolve().parent.parent
PUB = "/usr/bin/mosquitto_pub"
SUB = "/usr/bin/mosquitto_sub"
SITE, GATEWAY = "s1", "gw1"
STATUS = f"driftgate/{SITE}/{GATEWAY}/status"
TASMOTA = (
    '{"Time":"2024-03-01T08:00:00","SHT3X":{"Temperature":21.4,"Humidity":48.2,'
    '"DewPoint":10.1},"TempUnit":"C"}'
)
SEQ_PROFILE = """\
name: seq-json
description: a test device that publishes a sequence number
framing: {type: message}
format: {type: json}
topic: "seq/{sensor}"
fields:
  - {source: seq, measurement: seqtest, field: seq, kind: climate, range: [0, 1000000000]}
"""

# -- helpers ---------------------------------------------------------------------------------


def make_config(
    tmp_path: Path,
    broker: MosquittoServer,
    sources: list[dict[str, Any]],
    *,
    mqtt: dict[str, Any] | None = None,
    influx: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AgentConfig:
    data: dict[str, Any] = {
        "site": SITE,
        "gateway": GATEWAY,
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, **(mqtt or {})},
        "sources": sources,
        "spool": {"flush_interval": "50ms"},
    }
    if influx is not None:
        data["influx"] = influx
    return config_from_dict(data, env=env or {})


def seq_source(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    path = tmp_path / "seq-json.yaml"
    path.write_text(SEQ_PROFILE)
    return {"type": "mqtt", "name": "seq", "profile": str(path), **extra}


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {predicate}")
        await asyncio.sleep(0.02)


async def pub(
    broker: MosquittoServer,
    topic: str,
    *messages: str,
    extra: Sequence[str] = (),
    check: bool = True,
) -> int:
    """Real mosquitto_pub, QoS 1: one message, or several (one per line, -l)."""
    args = [require_binary(PUB, "mosquitto-clients"), "-h", broker.host, "-p", str(broker.port)]
    args += ["-q", "1", "-t", topic, *extra]
    stdin = None
    if len(messages) == 1:
        args += ["-m", messages[0]]
    else:
        args += ["-l"]
        stdin = ("\n".join(messages) + "\n").encode()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate(stdin)
    assert proc.returncode == 0 or not check, out.decode()
    return proc.returncode or 0


def retained(broker: MosquittoServer, topic: str, *extra: str) -> str:
    """The retained message on ``topic`` (real mosquitto_sub), or '' if none."""
    args = [require_binary(SUB, "mosquitto-clients"), "-h", broker.host, "-p", str(broker.port)]
    args += ["-t", topic, "-C", "1", "-W", "1", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    return proc.stdout.strip()


def spool_lines(state_dir: Path) -> list[str]:
    return committed_lines(state_dir)


def seqs(state_dir: Path) -> list[int]:
    return [
        int(float(line.split(" ")[1].split("=")[1]))
        for line in spool_lines(state_dir)
        if line.startswith("seqtest,")
    ]


# -- pure functions --------------------------------------------------------------------------


def test_topic_templates_become_filters_and_tags() -> None:
    assert subscription_filter("factory/{zone}/tele/{sensor}/SENSOR") == "factory/+/tele/+/SENSOR"
    assert subscription_filter("{sensor}/sensor/{field}/state") == "+/sensor/+/state"
    assert subscription_filter("plant/+/x_{sensor}/#") == "plant/+/+/#"
    decoder = Decoder(load_profile("tasmota-sht3x"), topic="factory/{zone}/+/tele/{sensor}/SENSOR")
    result = decoder.decode(TASMOTA.encode(), "factory/cutting/b7/tele/t1/SENSOR", received_ns=1)
    assert {v.name for v in result.values} == {"humidity", "temperature", "dew_point"}
    assert result.values[0].tags == {"zone": "cutting", "sensor": "t1"}


def test_context_payloads() -> None:
    assert parse_context("driftgate/s1/context/line/L2", b'{"lot": "A", "shift": null}') == (
        "line",
        "L2",
        {"lot": "A", "shift": None},
    )
    assert parse_context("x/zone/z", b'{"order": 4711}')[2] == {"order": "4711"}
    for payload in (b"lot=A", b"[1]", b'{"lot": {"a": 1}}', b"\xff"):
        with pytest.raises(ContextError):
            parse_context("driftgate/s1/context/line/L2", payload)


# -- against a real broker -------------------------------------------------------------------


async def test_esphome_and_tasmota_from_mosquitto_pub(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        cfg = make_config(
            tmp_path,
            mosquitto,
            [
                {"type": "mqtt", "name": "paint", "profile": "sht4x-esphome", "zone": "edge_paint"},
                {
                    "type": "mqtt",
                    "name": "floor",
                    "profile": "tasmota-sht3x",
                    "line": "L2",
                    "topics": ["factory/{zone}/tele/{sensor}/SENSOR"],
                },
            ],
        )
        async with running(cfg) as agent:
            assert agent.mqtt is not None
            assert sorted(agent.mqtt.filters) == [
                "$SYS/broker/publish/messages/dropped",
                "+/sensor/+/state",
                "driftgate/s1/context/#",
                "driftgate/s1/gw1/incidents/+/ack",
                "factory/+/tele/+/SENSOR",
            ]
            await pub(mosquitto, "ep1/sensor/humidity/state", "48.2")
            await pub(mosquitto, "ep1/sensor/temperature/state", "21.4")
            await pub(mosquitto, "factory/cutting/tele/tasmota_ep1/SENSOR", TASMOTA)
            await pub(mosquitto, "ep1/sensor/humidity/state", *["garbage"] * 20)
            await until(
                lambda: agent.metrics.readings_in == 5 and agent.metrics.decode_errors == 20
            )
            health = {s.name: s.health for s in agent.sources}  # type: ignore[attr-defined]
            assert (health["paint"].frames, health["paint"].decode_errors) == (22, 20)
            assert health["floor"].readings == 3
            assert health["paint"].connected
            assert agent.metrics.mqtt_connected
            assert agent.metrics.mqtt_messages >= 23
        flush_bursts()
        lines = spool_lines(cfg.state_dir)
    finally:
        structlog.reset_defaults()
    readings = sorted(line.rsplit(" ", 1)[0] for line in lines if line.startswith("climate,"))
    assert readings == [
        "climate,gateway=gw1,line=L2,sensor=tasmota_ep1,site=s1,zone=cutting dew_point_c=10.1",
        "climate,gateway=gw1,line=L2,sensor=tasmota_ep1,site=s1,zone=cutting humidity_rh=48.2",
        "climate,gateway=gw1,line=L2,sensor=tasmota_ep1,site=s1,zone=cutting temperature_c=21.4",
        "climate,gateway=gw1,sensor=ep1,site=s1,zone=edge_paint humidity_rh=48.2",
        "climate,gateway=gw1,sensor=ep1,site=s1,zone=edge_paint temperature_c=21.4",
    ]
    assert "edge_paint.ep1.humidity" in {c.name for c in agent.channels}
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    bad = [e for e in logged if e["event"] == "cannot decode frame"]
    # A burst of identical decode errors: logged once, then one summary line (at the latest
    # when the agent stops).
    assert [e.get("repeated") for e in bad] == [None, 19]
    assert bad[0]["source"] == "paint"
    points = [line for line in spool_lines(cfg.state_dir) if line.startswith("driftgate_source")]
    assert any("source=paint" in p and "decode_errors=20i" in p for p in points)


async def test_broker_restart_under_load(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    cfg = make_config(tmp_path, mosquitto, [seq_source(tmp_path)])
    publisher = tmp_path / "publisher.py"
    publisher.write_text(PUBLISHER)
    total = 3000
    async with running(cfg) as agent:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(publisher), mosquitto.host, str(mosquitto.port), str(total), "1500"
        )
        await until(lambda: agent.metrics.readings_in > 500)
        await asyncio.to_thread(mosquitto.restart)  # SIGTERM: the broker saves its sessions
        before = agent.metrics.readings_in
        await until(lambda: agent.mqtt is not None and agent.mqtt.health.reconnects == 1)
        await until(lambda: agent.metrics.readings_in > before + 500)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await until(lambda: len(set(seqs(cfg.state_dir))) == total, within=15)
    got = seqs(cfg.state_dir)
    assert set(got) == set(range(total)), "every QoS 1 message arrived across the restart"
    assert len(got) - total < 200  # redeliveries of unacknowledged messages only


class KickingClient:
    """Stands in for aiomqtt's Client: accepts every connect, then drops the connection after
    the next of ``holds`` (seconds), as a broker does when another client takes the session;
    after the last it stays connected."""

    def __init__(self, link: MqttLink, holds: list[float]) -> None:
        self.link = link
        self.holds = holds
        self.attempt_at_connect: list[int] = []
        self.done = asyncio.Event()

    async def __aenter__(self) -> KickingClient:
        self.attempt_at_connect.append(self.link.retries.attempt)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def subscribe(self, *args: Any, **kwargs: Any) -> list[int]:
        return [1]

    @property
    def messages(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        if not self.holds:
            self.done.set()
            await asyncio.Event().wait()
        await asyncio.sleep(self.holds.pop(0))
        raise MqttError("Disconnected during message iteration")
        yield  # an async generator, like aiomqtt's


async def test_a_link_dropped_at_once_backs_off_instead_of_flapping(tmp_path: Path) -> None:
    """A connection the broker drops at once (two gateways with one client id take the session
    from each other) keeps growing the waits; one that stayed up the stable period starts over.
    Before agent.backoff every connect restarted the schedule: the pair flapped twice a second."""
    cfg = config_from_dict(
        {"site": SITE, "gateway": GATEWAY, "state_dir": str(tmp_path), "mqtt": {"host": "x"}}
    )
    assert cfg.mqtt is not None
    link = MqttLink(cfg.mqtt, site=SITE, gateway=GATEWAY, metrics=AgentMetrics())
    # MQTT's policy with short waits, so the test takes about a second.
    link.retries = Retries(replace(MQTT, base=0.001, cap=0.004, stable_after=0.5))
    client = KickingClient(link, [0, 0, 0, 0, 0.6, 0])
    link._make_client = lambda: client  # type: ignore[method-assign]
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(client.done.wait(), 10)
    finally:
        await link.stop()
    assert client.attempt_at_connect == [0, 1, 2, 3, 4, 1, 2]
    assert link.health.reconnects == 6
    assert task.done()


PUBLISHER = """\
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher", protocol=mqtt.MQTTv5)
c.reconnect_delay_set(0.05, 0.2)
c.max_queued_messages_set(0)
c.max_inflight_messages_set(200)
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 600
acked = set()
c.on_publish = lambda client, userdata, mid, reason, properties: acked.add(mid)
c.connect(host, port, clean_start=False, properties=props)
c.loop_start()
start = time.monotonic()
infos = []
for i in range(total):
    infos.append(c.publish("seq/p1", '{"seq": %d}' % i, qos=1))
    delay = start + (i + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
deadline = time.monotonic() + 20
# A message published while the broker was away is kept by paho and sent on reconnect.
while missing := [info.mid for info in infos if info.mid not in acked]:
    if time.monotonic() > deadline:
        sys.exit(f"unacknowledged: {len(missing)}")
    time.sleep(0.05)
c.disconnect()
c.loop_stop()
"""


async def test_messages_published_while_stopped_arrive_after_restart(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    cfg = make_config(tmp_path, mosquitto, [seq_source(tmp_path)])
    async with running(cfg):
        pass  # the broker now holds our session and subscriptions
    await pub(mosquitto, "seq/p1", *[json.dumps({"seq": i}) for i in range(500)])
    async with running(cfg) as agent:
        await until(lambda: agent.metrics.readings_in == 500)
        await asyncio.sleep(0.5)
        assert agent.metrics.readings_in == 500
    assert sorted(seqs(cfg.state_dir)) == list(range(500))


async def test_broker_drops_are_counted(tmp_path: Path) -> None:
    # A small queue, on purpose (the later line wins): the loss the broker README warns about.
    broker = MosquittoServer(tmp_path / "broker", "sys_interval 1\nmax_queued_messages 50\n")
    broker.start()
    try:
        cfg = make_config(tmp_path, broker, [seq_source(tmp_path)])
        async with running(cfg):
            pass
        await pub(broker, "seq/p1", *[json.dumps({"seq": i}) for i in range(200)])
        async with running(cfg) as agent:
            await until(lambda: agent.metrics.broker_dropped > 0, within=5)
            await until(lambda: agent.metrics.readings_in + agent.metrics.broker_dropped == 200)
            assert agent.metrics.readings_in < 200
        point = [p for p in spool_lines(cfg.state_dir) if p.startswith("driftgate_agent")][-1]
        assert f"broker_dropped={agent.metrics.broker_dropped}i" in point
    finally:
        broker.stop()


def test_birth_and_will_status(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "site": SITE,
                "gateway": GATEWAY,
                "state_dir": str(tmp_path / "state"),
                "log": {"format": "json"},
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "keepalive": 5},
                "sources": [{"type": "mqtt", "name": "paint", "profile": "sht4x-esphome"}],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(cfg_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_status("online")
        return proc

    def wait_status(want: str) -> None:
        deadline = time.monotonic() + 15
        while (got := retained(mosquitto, STATUS)) != want:
            assert time.monotonic() < deadline, f"status is {got!r}, expected {want!r}"
            time.sleep(0.1)

    proc = start()
    proc.kill()  # kill -9: no clean disconnect, the broker publishes the will
    proc.wait()
    wait_status("offline")
    proc = start()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    wait_status("offline")


async def test_context_over_mqtt_reaches_influxdb_and_survives_restart(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influx_db: tuple[InfluxDB1Server, str],
) -> None:
    influx, db = influx_db
    cfg = make_config(
        tmp_path,
        mosquitto,
        [
            {
                "type": "mqtt",
                "name": "paint",
                "profile": "sht4x-esphome",
                "zone": "edge_paint",
                "line": "L2",
            }
        ],
        influx={"url": influx.url, "database": db, "flush_interval": "100ms"},
    )
    context_topic = f"driftgate/{SITE}/context/line/L2"
    async with running(cfg) as agent:
        await pub(mosquitto, "ep1/sensor/humidity/state", "47.0")  # before: no context
        await until(lambda: agent.metrics.readings_in == 1)
        await pub(mosquitto, context_topic, json.dumps({"lot": "LOT-2411-B", "operator": "op17"}))
        await pub(mosquitto, context_topic, '{"shift": "B"}')
        await pub(mosquitto, context_topic, "lot LOT-2411-C")  # garbage: counted, ignored
        await until(lambda: agent.metrics.context_refused == 1)
        assert agent.context.scopes == {
            "line:L2": {"lot": "LOT-2411-B", "operator": "op17", "shift": "B"}
        }
        await pub(mosquitto, "ep1/sensor/humidity/state", "48.0")
        await until(lambda: agent.metrics.readings_in == 2)
        await until(lambda: agent.metrics.forwarded >= 2)
    async with running(cfg) as agent:  # the context comes back from state_dir/context.json
        await pub(mosquitto, "ep1/sensor/humidity/state", "49.0")
        await until(lambda: agent.metrics.readings_in == 1)
        await until(lambda: agent.metrics.forwarded >= 1)
    answer = influx.query(
        'SELECT "humidity_rh", "lot", "operator", "shift" FROM "climate" ORDER BY time', db=db
    )
    rows = answer["results"][0]["series"][0]["values"]
    assert [row[1:] for row in rows] == [
        [47.0, None, None, None],
        [48.0, "LOT-2411-B", "op17", "B"],
        [49.0, "LOT-2411-B", "op17", "B"],
    ]


# -- the shipped broker configuration --------------------------------------------------------


class DeployedMosquitto(MosquittoServer):
    """deploy/mosquitto/{mosquitto.conf,acl} as shipped, moved to a temp dir and 127.0.0.1."""

    def _prepare(self) -> None:
        w = self.workdir
        (w / "persistence").mkdir(exist_ok=True)
        text = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
        text = text.replace("listener 8883", f"listener {self.port} {LOOPBACK}")
        text = text.replace("/etc/mosquitto/certs/", f"{w}/").replace("/etc/mosquitto/", f"{w}/")
        text = text.replace("/var/lib/mosquitto/", f"{w}/persistence/")
        text = text.replace("/var/log/mosquitto/mosquitto.log", f"{w}/broker.log")
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.config_path.write_text(f"user {me}\n{text}")
        (w / "acl").write_text((ROOT / "deploy/mosquitto/acl").read_text())


def make_certs(d: Path) -> None:
    openssl = require_binary("/usr/bin/openssl", "openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt",
    )  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip


def add_users(path: Path, *users: str) -> None:
    passwd = require_binary("/usr/bin/mosquitto_passwd", "mosquitto")
    path.write_text("")
    for user in users:
        subprocess.run([passwd, "-b", str(path), user, f"pw-{user}"], check=True)


async def test_shipped_broker_config_tls_passwords_acl(tmp_path: Path) -> None:
    broker = DeployedMosquitto(tmp_path / "broker")
    make_certs(broker.workdir)
    add_users(broker.workdir / "passwd", "gw1", "ep1")
    broker.start()
    try:
        esphome = {"type": "mqtt", "profile": "sht4x-esphome", "zone": "edge_paint"}
        cfg = make_config(
            tmp_path,
            broker,
            [
                {**esphome, "name": "mine", "topics": ["floor/gw1/{sensor}/sensor/{field}/state"]},
                {
                    **esphome,
                    "name": "theirs",
                    "topics": ["floor/gw2/{sensor}/sensor/{field}/state"],
                },
            ],
            mqtt={"tls": True, "ca_file": str(broker.workdir / "ca.crt"), "username": "gw1"},
            env={"DRIFTGATE_MQTT_PASSWORD": "pw-gw1"},
        )
        ca = ["--cafile", str(broker.workdir / "ca.crt")]
        tls = [*ca, "-u", "ep1", "-P", "pw-ep1"]
        async with running(cfg) as agent:
            for gw in ("gw1", "gw2"):
                await pub(broker, f"floor/{gw}/ep1/sensor/humidity/state", "48.2", extra=tls)
            await until(lambda: agent.metrics.readings_in == 1)
            await asyncio.sleep(0.3)
            assert agent.metrics.readings_in == 1, "gw1 must not read gw2's sensors"
            as_gw1 = [*ca, "-u", "gw1", "-P", "pw-gw1", "-i", "status-reader"]
            assert await asyncio.to_thread(retained, broker, STATUS, *as_gw1) == "online"
        assert [c.tags["sensor"] for c in agent.channels] == ["ep1"]
        # A wrong password is refused, and no anonymous client gets in.
        assert await pub(broker, "floor/gw1/ep1/x", "1", extra=ca, check=False) != 0
        wrong = [*ca, "-u", "ep1", "-P", "nope"]
        assert await pub(broker, "floor/gw1/ep1/x", "1", extra=wrong, check=False) != 0
    finally:
        broker.stop()


async def test_alert_events_are_published_as_json(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Andon boards subscribe to driftgate/<site>/<gateway>/alerts: one JSON object per event."""
    topic = f"driftgate/{SITE}/{GATEWAY}/alerts"
    args = [
        require_binary(SUB, "mosquitto-clients"),
        "-h",
        mosquitto.host,
        "-p",
        str(mosquitto.port),
    ]
    sub = await asyncio.create_subprocess_exec(
        *args, "-t", topic, "-q", "1", "-C", "1", "-W", "30", stdout=subprocess.PIPE
    )
    await asyncio.sleep(0.5)  # the subscription is in place before the first alert
    sim = {"type": "simulated", "name": "sim", "speed": 1e6, "days": 11, "seed": 1, "interval": 60}
    agent = Agent(make_config(tmp_path, mosquitto, [sim]))
    result = await agent.run(handle_signals=False)
    out, _ = await asyncio.wait_for(sub.communicate(), 30)
    event = json.loads(out.decode().splitlines()[0])
    first = result.events[0]
    assert event["channel"] == first.channel.name == "sewing.m05.tension"
    assert event["transition"] == "raised"
    assert event["message"] == first.message
    assert event["affects"] == "seam strength and stitch appearance"
    assert agent.publisher is not None
    assert agent.publisher.by_topic[topic] == len(result.events)
