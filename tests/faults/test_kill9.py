"""kill -9 while MQTT messages flow: nothing the broker was told is received may be lost.

Real Mosquitto, a real InfluxDB 1.6 and the agent as a subprocess (``python -m agent run``),
killed with SIGKILL at random moments and restarted on the same state dir. A publisher
process sends QoS 1 JSON messages carrying a sequence number from 60 sensors, and keeps the
sequence numbers the broker acknowledged (PUBACK) to it. At the end InfluxDB must hold every
one of them (counted as distinct sequence numbers); rows beyond that are redeliveries.

With the device's own time in the payload a redelivered message overwrites its first copy
(same series, same timestamp): no duplicate rows at all. Stamped on arrival, a redelivery is
a new row: at most ``mqtt.receive_maximum`` per kill (the messages committed but not yet
acknowledged when the process died).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FaultRow
from servers import InfluxDB1Server, MosquittoServer
from test_agent_e2e import committed_line_count, start_agent, stop, wait_for

SENSORS = 60
RECEIVE_MAXIMUM = 2000  # the agent's default mqtt.receive_maximum

PROFILE = """\
name: kill9-seq
description: a test device that publishes a sequence number (and, here, its own time)
framing: {type: message}
format: {type: json}
topic: "kill9/{sensor}"
fields:
  - {source: seq, measurement: kill9, field: seq, kind: climate, range: [0, 1000000000]}
"""
DEVICE_TIME = "timestamp: {source: device, field: ts, unit: ns}\n"

PUBLISHER = """\
import json, os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, rate, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
stop_file, sensors = sys.argv[5], int(sys.argv[6])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="kill9-publisher", protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
answered, refused = [0], [0]

def on_publish(client, userdata, mid, reason, properties):
    answered[0] += 1
    refused[0] += reason.is_failure

c.on_publish = on_publish
c.connect(host, port)
c.loop_start()
# paho numbers every message it holds with a 16-bit packet id and forgets one of two messages
# with the same id: keep far fewer than 65,536 unanswered (the rate drops if the broker lags).
OPEN_MAX = 30_000
start = time.monotonic()
infos = []
while not os.path.exists(stop_file):
    due = min(int((time.monotonic() - start) * rate), len(infos) + 1000)
    while len(infos) < due and len(infos) - answered[0] < OPEN_MAX:
        seq = len(infos)
        payload = json.dumps({"seq": seq, "ts": time.time_ns()})
        infos.append(c.publish(f"kill9/s{seq % sensors}", payload, qos=1))
    time.sleep(0.005)
elapsed = time.monotonic() - start
deadline = time.monotonic() + 60
while answered[0] < len(infos) and time.monotonic() < deadline:
    time.sleep(0.01)
c.disconnect()
c.loop_stop()
# acknowledged: the broker's PUBACK came for that very message (not just for its packet id)
acked = [seq for seq, info in enumerate(infos) if info.is_published()]
with open(out, "w") as f:
    json.dump({"sent": len(infos), "acked": acked, "refused": refused[0],
               "rate": len(infos) / elapsed}, f)
"""


@dataclass(frozen=True)
class Variant:
    """One run of the fault: rate, InfluxDB during the kills, where the readings' time comes
    from, and how many kills."""

    rate: float
    influx_up: bool
    device_time: bool
    kills: int
    soak_kills: int
    gap: tuple[float, float] = (0.5, 2.3)  # seconds from a start to its kill

    def name(self, kills: int) -> str:
        influx = "InfluxDB up" if self.influx_up else "InfluxDB down until the end"
        stamp = "device time" if self.device_time else "arrival time"
        return f"kill -9 ×{kills}, {influx}, {self.rate:,.0f} msg/s, {stamp}"


VARIANTS = {
    "floor-rate": Variant(60, influx_up=True, device_time=True, kills=20, soak_kills=100),
    "floor-rate-influx-down": Variant(
        60, influx_up=False, device_time=False, kills=20, soak_kills=100
    ),
    "5000-per-s": Variant(
        5000, influx_up=True, device_time=True, kills=20, soak_kills=60, gap=(0.4, 1.4)
    ),
}
SOAK_ONLY = {
    "5000-per-s-influx-down": Variant(
        5000, influx_up=False, device_time=False, kills=20, soak_kills=60
    ),
}


def agent_config(state: Path, broker: MosquittoServer, profile: Path, influx_url: str, db: str):
    return {
        "site": "kill9",
        "gateway": "gw1",
        "state_dir": str(state),
        "log": {"level": "info", "format": "json"},
        "self_metrics": {"interval": 1.0},
        "alerts": {"console": False},
        "mqtt": {"host": broker.host, "port": broker.port, "watch_dropped": False},
        "sources": [{"type": "mqtt", "name": "seq", "profile": str(profile)}],
        "influx": {
            "url": influx_url,
            "api": "v1",
            "database": db,
            "flush_interval": 0.2,
            "max_backoff": 0.5,
            "timeout": 5,
        },
    }


def connected_count(err: Path) -> int:
    """How many times the agent logged that its MQTT session is up."""
    try:
        return err.read_text().count('"mqtt connected"')
    except FileNotFoundError:
        return 0


def seq_rows(server: InfluxDB1Server, db: str) -> list[int]:
    """The sequence number of every row InfluxDB holds (a redelivery with a new time is a row
    of its own; one with the same time overwrote its first copy)."""
    return [int(row["seq"]) for row in server.rows("SELECT seq FROM kill9", db)]


def seq_count(server: InfluxDB1Server, db: str) -> int:
    rows = server.rows("SELECT COUNT(seq) AS n FROM kill9", db)
    return int(rows[0]["n"]) if rows else 0


def settle(server: InfluxDB1Server, db: str, state: Path, acked: set[int]) -> None:
    """Wait until every acknowledged message is in InfluxDB, or until nothing has changed
    for 30 s with the spool empty (what is missing then is lost: the ledger says how
    much)."""
    deadline = time.monotonic() + 180
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = seq_count(server, db)
        spooled = committed_line_count(state)
        if count >= len(acked) and spooled == 0 and acked <= set(seq_rows(server, db)):
            return
        if count != last or spooled:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > 30:
            return
        time.sleep(0.5)


def run_kills(
    tmp_path: Path,
    variant: Variant,
    kills: int,
    server: InfluxDB1Server,
    db: str,
    report: Callable[[FaultRow], None],
) -> FaultRow:
    traffic = kills * sum(variant.gap) / 2  # seconds
    # Sized for everything the publisher sends while the agent is away: the default queue
    # (1000) drops QoS 1 messages silently (deploy/mosquitto/README.md).
    queue = int(variant.rate * (traffic + 60) * 2)
    broker = MosquittoServer(tmp_path / "broker", f"max_queued_messages {queue}\n")
    broker.start()
    publisher: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        profile = tmp_path / "kill9-seq.yaml"
        profile.write_text(PROFILE + (DEVICE_TIME if variant.device_time else ""))
        state = tmp_path / "state"
        cfg = agent_config(state, broker, profile, server.url, db)
        rng = random.Random(variant.rate * 1000 + kills + variant.influx_up)

        proc = start_agent(cfg, tmp_path, "agent")
        # The first start creates the persistent session: from then on the broker keeps
        # every message for it while it is dead.
        wait_for(lambda: connected_count(tmp_path / "agent.err") > 0, 30, "the first connect")
        if not variant.influx_up:
            server.stop()
        script = tmp_path / "publisher.py"
        script.write_text(PUBLISHER)
        stop_file = tmp_path / "publisher.stop"
        out = tmp_path / "published.json"
        publisher = subprocess.Popen(
            [sys.executable, str(script), broker.host, str(broker.port), str(variant.rate),
             str(out), str(stop_file), str(SENSORS)]
        )  # fmt: skip
        for _ in range(kills):
            time.sleep(rng.uniform(*variant.gap))  # from the start: import, connect, flow
            assert proc.poll() is None, (tmp_path / "agent.err").read_text()[-3000:]
            proc.kill()
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            proc = start_agent(cfg, tmp_path, "agent")
        stop_file.touch()
        assert publisher.wait(timeout=60) == 0
        published = json.loads(out.read_text())
        acked = set(published["acked"])
        if not variant.influx_up:
            server.start()  # same port, same data

        settle(server, db, state, acked)
        assert stop(proc, signal.SIGTERM) == 0, (tmp_path / "agent.err").read_text()[-3000:]
    finally:
        for p in (proc, publisher):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        broker.stop()

    rows = seq_rows(server, db)
    stored = set(rows)
    assert stored <= set(range(published["sent"])), "a sequence number nobody sent"
    row = FaultRow(
        fault=variant.name(kills) + f" (published {published['rate']:,.0f}/s)",
        sent=published["sent"],
        acknowledged=len(acked),
        arrived=len(acked & stored),
        dropped={},
        duplicates=len(rows) - len(stored),
    )
    report(row)
    assert published["refused"] == 0, "the broker refused messages"
    return row


@pytest.mark.parametrize("key", list(VARIANTS))
def test_kill9_loses_no_acknowledged_message(
    key: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    soak: bool,
    fault_report: Callable[[FaultRow], None],
) -> None:
    variant = VARIANTS[key]
    row = run_variant(variant, tmp_path, request, soak, fault_report)
    assert row.arrived == row.acknowledged, "an acknowledged message is not in InfluxDB"


def test_kill9_soak_only_variants(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    soak: bool,
    fault_report: Callable[[FaultRow], None],
) -> None:
    if not soak:
        pytest.skip("a soak variant: run with --soak")
    for n, variant in enumerate(SOAK_ONLY.values()):
        row = run_variant(variant, tmp_path / str(n), request, soak, fault_report)
        assert row.arrived == row.acknowledged, f"{row.fault}: an acknowledged message is lost"


def run_variant(
    variant: Variant,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    soak: bool,
    fault_report: Callable[[FaultRow], None],
) -> FaultRow:
    kills = variant.soak_kills if soak else variant.kills
    server: Any
    if variant.influx_up:
        server, db = request.getfixturevalue("influx_db")
    else:
        server, db = request.getfixturevalue("influxdb_private"), "kill9"
        server.create_database(db)
    tmp_path.mkdir(parents=True, exist_ok=True)
    row = run_kills(tmp_path, variant, kills, server, db, fault_report)
    if variant.device_time:
        # A redelivery carries the device's time: it overwrote its first copy.
        assert row.duplicates == 0
    else:
        # Stamped on arrival, each kill can leave up to the in-flight window stored twice.
        assert row.duplicates <= kills * RECEIVE_MAXIMUM
    return row
