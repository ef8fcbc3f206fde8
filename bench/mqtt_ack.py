"""MQTT acknowledged after the commit: loss per kill -9, and what waiting for the commit costs.

A private Mosquitto 2.0 (``tests/servers.py``: temporary directory, 127.0.0.1 only) and a paho
publisher process sending QoS 1 JSON messages that carry a sequence number and the device's
time, from 60 sensors. No InfluxDB: what counts is what the spool committed (the forwarder
only ever sends committed lines; ``tests/faults/test_kill9.py`` checks InfluxDB end to end).

1. **Loss per kill**: the agent as a subprocess (``python -m agent run``) is killed with
   SIGKILL at random moments (every 1-2 s) while the publisher sends 600 msgs/s (the black-box
   probe's rate), restarted on the same state dir each time, and finally stopped cleanly once
   its spool holds everything or nothing has arrived for 3 s. Lost = sequence numbers the
   broker acknowledged to the publisher that are not in the spool. Once with ``mqtt.ack:
   on_arrival`` (the old behaviour), once with ``on_commit`` (the default).
2. **Cost**: the real ``Agent`` in this process, connected, the publisher at 1,000 and 5,000
   msgs/s for a few seconds, in both modes (twice each, taking turns to go first; averaged):
   messages/s published and received, CPU time of this process per message, and the delay
   between the publisher's last message and the agent having all.
   Two more ``on_commit`` rows with ``receive_maximum: 20`` show the window's limit (without
   the early commit at half the window it would be 20 per 0.2 s flush: 100 msgs/s).
3. **Drain**: 20,000 messages queued for the agent's offline session, then the agent connects
   and takes them at full speed, in both modes (best of two): the throughput cost of waiting
   for commits. Cost = on_commit's CPU per message over on_arrival's at the paced rates, and
   its messages/s below on_arrival's at full speed.

    .venv/bin/python bench/mqtt_ack.py            # 10 kills per mode, 2 × 8 s per rate (~5 min)
    .venv/bin/python bench/mqtt_ack.py --quick    # 5 kills, 1 × 4 s per rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

import _common
import yaml

from agent.config import config_from_dict
from agent.runtime.agent import Agent

TARGET_COST = 0.10  # throughput lost by waiting for the commit, at most
# Small enough to drain within aiomqtt's 10 s operation timeout on a busy machine: the agent's
# SUBSCRIBE is answered behind the backlog, and a timeout would make it a reconnect test.
DRAIN_N = 20_000
SENSORS = 60
PROFILE = """\
name: ack-seq
description: a test device that publishes a sequence number and its own time
framing: {type: message}
format: {type: json}
topic: "ack/{sensor}"
timestamp: {source: device, field: ts, unit: ns}
fields:
  - {source: seq, measurement: acktest, field: seq, kind: climate, range: [0, 1000000000]}
"""

PUBLISHER = """\
import json, os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, rate, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
stop_file, sensors, first = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
limit = int(sys.argv[8])
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
answered = [0]
c.on_publish = lambda client, userdata, mid, reason, props: answered.__setitem__(0, answered[0] + 1)
c.connect(host, port)
c.loop_start()
# paho numbers every message it holds with a 16-bit packet id and forgets one of two messages
# with the same id: keep far fewer than 65,536 unanswered.
OPEN_MAX = 30_000
start = time.monotonic()
infos = []
while not os.path.exists(stop_file) and len(infos) < limit:
    due = int((time.monotonic() - start) * rate) if rate else len(infos) + 1000
    due = min(due, len(infos) + 1000, limit)
    while len(infos) < due and len(infos) - answered[0] < OPEN_MAX:
        seq = first + len(infos)
        payload = json.dumps({"seq": seq, "ts": time.time_ns()})
        infos.append(c.publish(f"ack/s{seq % sensors}", payload, qos=1))
    time.sleep(0.005 if rate else 0.0005)
elapsed = time.monotonic() - start
deadline = time.monotonic() + 60
while answered[0] < len(infos) and time.monotonic() < deadline:
    time.sleep(0.01)
c.disconnect()
c.loop_stop()
acked = [first + n for n, info in enumerate(infos) if info.is_published()]
with open(out, "w") as f:
    json.dump({"sent": len(infos), "acked": acked, "rate": len(infos) / elapsed}, f)
"""


class Publisher:
    """The publisher process: ``stop()`` ends it and returns what the broker acknowledged."""

    def __init__(
        self, work: Path, broker: Any, rate: float, first: int = 0, limit: int = 10**9
    ) -> None:
        self.out = work / f"published-{first}.json"
        self.stop_file = work / f"stop-{first}"
        script = work / "publisher.py"
        script.write_text(PUBLISHER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), broker.host, str(broker.port), str(rate),
             str(self.out), str(self.stop_file), str(SENSORS), str(first), str(limit)]
        )  # fmt: skip

    def stop(self, wait_only: bool = False) -> dict[str, Any]:
        if not wait_only:
            self.stop_file.touch()
        self.proc.wait(timeout=120)
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


def config(
    broker: Any, state: Path, profile: Path, ack: str, client_id: str, **mqtt: Any
) -> dict[str, Any]:
    return {
        "site": "bench",
        "gateway": "gw1",
        "state_dir": str(state),
        "log": {"level": "info", "format": "json"},
        "alerts": {"console": False},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": client_id,
            "watch_dropped": False,
            "ack": ack,
            **mqtt,
        },
        "sources": [{"type": "mqtt", "name": "seq", "profile": str(profile)}],
    }


def spooled_seqs(servers: Any, state: Path) -> list[int]:
    """The sequence number of every acktest line the spool committed."""
    del servers
    import spoolfile

    return [
        int(float(line.split(" ")[1].split("=")[1]))
        for line in spoolfile.committed_lines(state, "acktest")
    ]


# -- 1. loss per kill ---------------------------------------------------------------------------


def start_agent(cfg: dict[str, Any], work: Path) -> subprocess.Popen[bytes]:
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with (work / "agent.err").open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=work,
        )


def kill_phase(servers: Any, work: Path, ack: str, kills: int, rate: float) -> dict[str, Any]:
    work.mkdir(parents=True)
    broker = servers.MosquittoServer(work / "broker", "max_queued_messages 10000000\n")
    broker.start()
    profile = work / "ack-seq.yaml"
    profile.write_text(PROFILE)
    state = work / "state"
    cfg = config(broker, state, profile, ack, f"bench-kill-{ack}")
    rng = random.Random(7)
    proc = start_agent(cfg, work)
    publisher: Publisher | None = None
    try:
        deadline = time.monotonic() + 30
        while b'"mqtt connected"' not in (work / "agent.err").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit((work / "agent.err").read_text()[-2000:])
            time.sleep(0.05)
        publisher = Publisher(work, broker, rate)
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 2.0))
            proc.kill()
            proc.wait()
            proc = start_agent(cfg, work)
        published = publisher.stop()
        acked = set(published["acked"])
        last, since = -1, time.monotonic()
        while time.monotonic() - since < 3.0:
            time.sleep(0.25)
            got = len(set(spooled_seqs(servers, state)))
            if got >= len(acked):
                break
            if got != last:
                last, since = got, time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()
    rows = spooled_seqs(servers, state)
    stored = set(rows)
    lost = len(acked - stored)
    return {
        "ack": ack,
        "kills": kills,
        "rate": rate,
        "published": published["sent"],
        "acknowledged": len(acked),
        "stored": len(acked & stored),
        "lost": lost,
        "lost_per_kill": round(lost / kills, 1),
        "stored_twice": len(rows) - len(stored),
    }


# -- 2. cost at fixed rates, 3. drain ---------------------------------------------------


async def live_run(
    servers: Any, work: Path, ack: str, rate: float, seconds: float, **mqtt: Any
) -> dict[str, Any]:
    name = f"{ack}-{rate:.0f}-{mqtt.get('receive_maximum', 'default')}"
    state = work / f"live-{name}"
    profile = work / "ack-seq.yaml"
    # A broker of its own: earlier runs' sessions would have the broker queue copies for them.
    broker = servers.MosquittoServer(work / f"broker-{name}", "max_queued_messages 10000000\n")
    broker.start()
    cfg = config_from_dict(
        {**config(broker, state, profile, ack, f"bench-live-{name}", **mqtt), "log": {}},
        env={},
    )
    agent = Agent(cfg)
    run = asyncio.create_task(agent.run(handle_signals=False))
    try:
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 20)
        total = int(rate * seconds)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        publisher = Publisher(work, broker, rate, first=0, limit=total)
        m = agent.metrics
        first_at = published_at = None
        while m.readings_in < total and time.perf_counter() - wall0 < seconds * 10 + 30:
            await asyncio.sleep(0.005)
            if first_at is None and m.readings_in:
                first_at = time.perf_counter()
            if published_at is None and publisher.proc.poll() is not None:
                published_at = time.perf_counter()
        wall1, cpu1 = time.perf_counter(), time.process_time()
        published = await asyncio.to_thread(publisher.stop, True)
        received = m.readings_in
    finally:
        agent.stop_event.set()
        await run
        broker.stop()
    lag = 0.0 if published_at is None else max(0.0, wall1 - published_at)
    return {
        "ack": ack,
        "receive_maximum": mqtt.get("receive_maximum", 2000),
        "rate": rate,
        "published": published["sent"],
        "publisher_msgs_per_s": round(published["rate"]),
        "received": received,
        # from the first message to the last: the publisher's start-up is not the agent's
        "msgs_per_s": round(received / (wall1 - (first_at or wall0))),
        "cpu_us_per_msg": round((cpu1 - cpu0) / max(received, 1) * 1e6, 1),
        "behind_at_end_s": round(lag, 2),
    }


async def drain_run(servers: Any, work: Path, ack: str, total: int) -> dict[str, Any]:
    broker = servers.MosquittoServer(work / f"broker-drain-{ack}", "max_queued_messages 10000000\n")
    broker.start()
    try:
        state = work / f"drain-{ack}"
        profile = work / "ack-seq.yaml"
        cfg = config_from_dict(
            {**config(broker, state, profile, ack, f"bench-drain-{ack}"), "log": {}}, env={}
        )
        agent = Agent(cfg)  # once, to leave a persistent session behind
        run = asyncio.create_task(agent.run(handle_signals=False))
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 20)
        agent.stop_event.set()
        await run
        publisher = Publisher(work, broker, 0, first=0, limit=total)
        published = await asyncio.to_thread(publisher.stop, True)
        agent = Agent(cfg)
        started = time.perf_counter()
        run = asyncio.create_task(agent.run(handle_signals=False))
        try:
            while time.perf_counter() - started < 120:
                if agent.metrics.readings_in >= total and not agent.spool.buffered:
                    break
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
        finally:
            agent.stop_event.set()
            await run
    finally:
        broker.stop()
    return {
        "ack": ack,
        "n": total,
        "acknowledged": len(published["acked"]),
        "received": agent.metrics.readings_in,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(agent.metrics.readings_in / elapsed),
    }


async def cost_phase(
    servers: Any, work: Path, rates: list[float], seconds: float, drain_n: int, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each configuration ``rounds`` times, the two modes taking turns to go first (the
    machine's other load drifts); the paced figures are averaged, the drains' best kept."""
    runs: list[dict[str, Any]] = []
    drains: list[dict[str, Any]] = []
    for n in range(rounds):
        (work / f"r{n}").mkdir()
        (work / f"r{n}" / "ack-seq.yaml").write_text(PROFILE)
        modes = ("on_arrival", "on_commit") if n % 2 == 0 else ("on_commit", "on_arrival")
        for rate in rates:
            for ack in modes:
                runs.append(await live_run(servers, work / f"r{n}", ack, rate, seconds))
        for rate in rates:
            runs.append(
                await live_run(
                    servers, work / f"r{n}", "on_commit", rate, seconds, receive_maximum=20
                )
            )
        for ack in modes:
            drains.append(await drain_run(servers, work / f"r{n}", ack, drain_n))
    live = []
    for key in dict.fromkeys((r["ack"], r["rate"], r["receive_maximum"]) for r in runs):
        same = [r for r in runs if (r["ack"], r["rate"], r["receive_maximum"]) == key]
        live.append(
            {
                **same[0],
                "runs": len(same),
                "publisher_msgs_per_s": round(mean(r["publisher_msgs_per_s"] for r in same)),
                "msgs_per_s": round(mean(r["msgs_per_s"] for r in same)),
                "cpu_us_per_msg": round(mean(r["cpu_us_per_msg"] for r in same), 1),
                "behind_at_end_s": max(r["behind_at_end_s"] for r in same),
            }
        )
    drain = [
        max((d for d in drains if d["ack"] == ack), key=lambda d: d["msgs_per_s"])
        for ack in ("on_arrival", "on_commit")
    ]
    return live, drain


def pick(rows: list[dict[str, Any]], ack: str, key: str, rate: float | None = None) -> float:
    """One mode's figure: of the paced row at ``rate`` (default window), or of the drain."""
    return float(
        next(
            r[key]
            for r in rows
            if r["ack"] == ack
            and (rate is None or (r["rate"] == rate and r["receive_maximum"] == 2000))
        )
    )


def main_async(args: argparse.Namespace) -> None:
    servers = _common.load_servers()
    m = _common.print_header("MQTT acknowledged after the commit: loss per kill -9, and the cost")
    _common.quiet_logs()
    kills = 5 if args.quick else 10
    seconds = 4.0 if args.quick else 8.0
    rounds = 1 if args.quick else 2
    rates = [1000.0, 5000.0]
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-ack-") as tmp:
        work = Path(tmp)
        loss = [kill_phase(servers, work / f"kill-{ack}", ack, kills, 600.0)
                for ack in ("on_arrival", "on_commit")]  # fmt: skip
        live, drain = asyncio.run(cost_phase(servers, work, rates, seconds, DRAIN_N, rounds))
    print(f"1. kill -9 ×{kills} at random moments, 600 msgs/s (QoS 1), restarted each time")
    _common.table(
        ["mqtt.ack", "published", "acknowledged", "in the spool", "lost", "lost per kill",
         "stored twice"],
        [[r["ack"], f"{r['published']:,}", f"{r['acknowledged']:,}", f"{r['stored']:,}",
          r["lost"], r["lost_per_kill"], r["stored_twice"]] for r in loss],
    )  # fmt: skip
    print()
    print(f"2. paced rates, agent connected (60 sensors, JSON with the device's time), "
          f"{rounds} run(s) each, averaged")  # fmt: skip
    _common.table(
        ["mqtt.ack", "receive_maximum", "rate", "published/s", "received/s", "CPU µs/msg",
         "behind at end (s)"],
        [[r["ack"], r["receive_maximum"], f"{r['rate']:,.0f}/s", f"{r['publisher_msgs_per_s']:,}",
          f"{r['msgs_per_s']:,}", r["cpu_us_per_msg"], r["behind_at_end_s"]] for r in live],
    )  # fmt: skip
    print()
    print(f"3. drain: {DRAIN_N:,} messages queued while the agent was away, then taken at full "
          f"speed (best of {rounds})")  # fmt: skip
    _common.table(
        ["mqtt.ack", "received", "seconds", "msgs/s"],
        [[r["ack"], f"{r['received']:,}", r["seconds"], f"{r['msgs_per_s']:,}"] for r in drain],
    )
    costs = {
        # CPU per message: how much more on_commit spends than on_arrival
        "cpu_1000": round(
            pick(live, "on_commit", "cpu_us_per_msg", 1000.0)
            / pick(live, "on_arrival", "cpu_us_per_msg", 1000.0) - 1, 3,
        ),
        "cpu_5000": round(
            pick(live, "on_commit", "cpu_us_per_msg", 5000.0)
            / pick(live, "on_arrival", "cpu_us_per_msg", 5000.0) - 1, 3,
        ),
        # full speed: how many fewer messages per second on_commit takes
        "drain": round(
            1 - pick(drain, "on_commit", "msgs_per_s") / pick(drain, "on_arrival", "msgs_per_s"), 3
        ),
    }  # fmt: skip
    worst = max(costs.values())
    on_commit_lost = next(r["lost"] for r in loss if r["ack"] == "on_commit")
    print()
    print(
        f"   cost of on_commit: CPU per message {costs['cpu_1000']:+.1%} at 1,000/s, "
        f"{costs['cpu_5000']:+.1%} at 5,000/s; throughput {-costs['drain']:+.1%} at full speed "
        f"(target: at most {TARGET_COST:.0%} worse); lost with on_commit: {on_commit_lost}"
    )
    print()
    _common.emit_json(
        "mqtt_ack",
        m,
        loss=loss,
        live=live,
        drain=drain,
        cost=costs,
        target_cost=TARGET_COST,
        meets_target=worst <= TARGET_COST and on_commit_lost == 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 kills, one 4 s run per rate")
    main_async(parser.parse_args())


if __name__ == "__main__":
    main()
