"""MQTT ingest: messages/s and readings/s through to the spool, beside a plain aiomqtt subscriber.

A private Mosquitto 2.0 (``tests/servers.py``: temporary directory, 127.0.0.1 only) and a
publisher process (paho, QoS 1, full speed) sending a 50/50 mix of ESPHome state messages
(``ep<k>/sensor/humidity/state``, one reading each) and Tasmota ``tele/tasmota_<k>/SENSOR``
JSON (three readings each) from 20 devices.

1. **Drain** (the same broker, ``max_queued_messages`` 10,000,000): the N messages are published
   once while two persistent sessions are offline, so the broker queues a copy for each; then
   each consumer connects and is timed from connect until it has taken all N:

   * ``plain``: an aiomqtt client that only counts (``async for message in client.messages``);
   * ``agent``: the real ``Agent`` (MqttLink, two MqttSources, Pipeline, detectors, Spool),
     timed until every reading is committed to the SQLite spool.

   Both run in this process, one after the other. Ratio = agent msgs/s ÷ plain msgs/s
   (target ≥ 0.9); loss = N − messages received (target 0).
2. **Live, default queue**: a second broker with Mosquitto's default ``max_queued_messages``
   1000 and the agent connected; the publisher sends at fixed rates, then at full speed. Loss
   per rate = published − received (the broker drops silently once 1000 are queued for us);
   the highest rate with zero loss is what the agent sustains even on an unsized broker.

    .venv/bin/python bench/mqtt_ingest.py            # N = 50,000, ~75 s
    .venv/bin/python bench/mqtt_ingest.py --quick    # N = 20,000, ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import config_from_dict
from agent.runtime.agent import Agent

TARGET_RATIO = 0.9
TARGET_CPU_RATIO = 1.5  # the agent's CPU per message ÷ the plain subscriber's (issue 12)
DEVICES = 20
TASMOTA = (
    '{"Time":"2024-03-01T08:00:00","SHT3X":{"Temperature":21.4,"Humidity":48.2,'
    '"DewPoint":10.1},"TempUnit":"C"}'
)
READINGS_PER_PAIR = 1 + 3  # an ESPHome state + a Tasmota SENSOR message

PUBLISHER = """\
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
tasmota = sys.argv[5]
only_tasmota = len(sys.argv) > 6 and sys.argv[6] == "tasmota"
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
acked = 0
def on_publish(client, userdata, mid, reason, properties):
    global acked
    acked += 1
c.on_publish = on_publish
c.connect(host, port)
c.loop_start()
start = time.monotonic()
for i in range(total):
    k = (i // 2) % 20
    if i % 1000 == 0:  # the devices' clocks are right: Tasmota's local time, no zone
        payload = tasmota.replace("2024-03-01T08:00:00", time.strftime("%Y-%m-%dT%H:%M:%S"))
    if only_tasmota:
        c.publish(f"tele/tasmota_{i % 20}/SENSOR", payload, qos=1)
    elif i % 2 == 0:
        c.publish(f"ep{k}/sensor/humidity/state", "48.2", qos=1)
    else:
        c.publish(f"tele/tasmota_{k}/SENSOR", payload, qos=1)
    if rate > 0:
        delay = start + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    # paho keys unacknowledged messages by their 16-bit id: keep far fewer than 65,536 open.
    while i + 1 - acked > 20000:
        time.sleep(0.001)
while acked < total:
    time.sleep(0.01)
elapsed = time.monotonic() - start
c.disconnect()
c.loop_stop()
print(f"{total / elapsed:.0f}")
"""


def publish(
    script: Path, broker: Any, total: int, rate: float = 0.0, mix: str = "mix"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), broker.host, str(broker.port), str(total), str(rate),
         TASMOTA, mix],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def agent_config(broker: Any, state_dir: Path, client_id: str) -> Any:
    return config_from_dict(
        {
            "site": "bench",
            "gateway": "gw1",
            "state_dir": str(state_dir),
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": client_id,
                "watch_dropped": False,
            },
            "sources": [
                {"type": "mqtt", "name": "esp", "profile": "sht4x-esphome", "zone": "paint"},
                {"type": "mqtt", "name": "tas", "profile": "tasmota-sht3x", "zone": "cutting"},
            ],
        },
        env={},
    )


def plain_client(broker: Any) -> aiomqtt.Client:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="bench-plain",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
    )


async def plain_subscribe_once(broker: Any) -> None:
    async with plain_client(broker) as client:
        await client.subscribe("+/sensor/+/state", qos=1)
        await client.subscribe("tele/+/SENSOR", qos=1)


async def plain_drain(broker: Any, total: int, limit_s: float) -> tuple[int, float]:
    """Connect the plain subscriber's session and count until ``total`` messages arrived."""
    count = 0
    started = time.perf_counter()
    client = plain_client(broker)

    async def consume() -> None:
        nonlocal count
        async with client:
            await client.subscribe("+/sensor/+/state", qos=1)
            await client.subscribe("tele/+/SENSOR", qos=1)
            async for _message in client.messages:
                count += 1
                if count >= total:
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consume(), limit_s)
    return count, time.perf_counter() - started


async def run_agent_until(
    agent: Agent,
    want_messages: int,
    limit_s: float,
    started_event: asyncio.Event | None = None,
    publisher_done: asyncio.Event | None = None,
) -> tuple[int, int, float]:
    """Run ``agent`` until it has taken ``want_messages`` and its spool holds every reading
    (or, once ``publisher_done`` is set, until nothing more arrives for half a second)."""
    task = asyncio.create_task(agent.run(handle_signals=False))
    started = time.perf_counter()
    deadline = started + limit_s
    assert agent.mqtt is not None
    if started_event is not None:
        await agent.mqtt.connected_event.wait()
        started_event.set()
    last, last_change = -1, time.perf_counter()
    while time.perf_counter() < deadline:
        now, seen = time.perf_counter(), agent.metrics.mqtt_messages
        if seen >= want_messages and agent.spool.buffered == 0:
            break
        if seen != last:
            last, last_change = seen, now
        elif publisher_done is not None and publisher_done.is_set() and now - last_change > 0.5:
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    messages, readings = agent.metrics.mqtt_messages, agent.metrics.readings_in
    agent.stop_event.set()
    await task
    return messages, readings, elapsed


async def drain_phase(servers: Any, work: Path, script: Path, total: int) -> dict[str, Any]:
    broker = servers.MosquittoServer(work / "broker", "max_queued_messages 10000000\n")
    broker.start()
    try:
        # Create both persistent sessions, then go away: the broker queues for both.
        cfg = agent_config(broker, work / "agent-state", "bench-agent")
        await run_agent_until(Agent(cfg), 0, 10.0, asyncio.Event())
        await plain_subscribe_once(broker)
        proc = publish(script, broker, total)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        pub_rate = float(out.strip() or 0)
        timeout = 120.0
        got_plain, t_plain = await plain_drain(broker, total, timeout)
        messages, readings, t_agent = await run_agent_until(Agent(cfg), total, timeout)
    finally:
        broker.stop()
    expected_readings = total // 2 * READINGS_PER_PAIR
    return {
        "n": total,
        "publisher_msgs_per_s": round(pub_rate),
        "plain": {"messages": got_plain, "seconds": round(t_plain, 3),
                  "msgs_per_s": round(got_plain / t_plain)},
        "agent": {"messages": messages, "readings": readings, "seconds": round(t_agent, 3),
                  "msgs_per_s": round(messages / t_agent),
                  "readings_per_s": round(readings / t_agent),
                  "expected_readings": expected_readings},
        "ratio": round((messages / t_agent) / (got_plain / t_plain), 3),
        "loss_plain": total - got_plain,
        "loss_agent": total - messages,
    }  # fmt: skip


async def live_phase(
    servers: Any, work: Path, script: Path, rates: list[float], seconds: float, cap: int
) -> list[dict[str, Any]]:
    broker = servers.MosquittoServer(work / "broker-default", "max_queued_messages 1000\n")
    broker.start()
    out = []
    try:
        for rate in rates:
            total = cap if rate == 0 else min(cap, int(rate * seconds))
            total -= total % 2
            state = work / f"live-{rate:.0f}"
            cfg = agent_config(broker, state, f"bench-live-{rate:.0f}")
            agent = Agent(cfg)
            connected = asyncio.Event()
            done = asyncio.Event()
            run = asyncio.create_task(
                run_agent_until(agent, total, 15.0 + total / 2000, connected, done)
            )
            await connected.wait()
            proc = await asyncio.to_thread(publish, script, broker, total, rate)
            printed, _ = await asyncio.to_thread(proc.communicate, timeout=120)
            pub_rate = float(printed.strip() or 0)
            done.set()
            # The agent stops once it has all N, or when nothing more arrives after the publisher.
            messages, readings, _ = await run
            out.append({"rate": rate or "full", "published": total,
                        "publisher_msgs_per_s": round(pub_rate), "received": messages,
                        "readings": readings, "loss": total - messages})  # fmt: skip
    finally:
        broker.stop()
    return out


async def _publish_and_wait(script: Path, broker: Any, total: int, rate: float) -> float:
    proc = publish(script, broker, total, rate, "tasmota")
    printed, _ = await asyncio.to_thread(proc.communicate, timeout=300)
    return float(printed.strip() or 0)


async def cpu_plain(script: Path, broker: Any, total: int, rate: float) -> dict[str, Any]:
    """A plain aiomqtt subscriber that counts, connected while ``total`` messages arrive."""
    count = 0
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="bench-cpu-plain",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe("tele/+/SENSOR", qos=1)

        async def consume() -> None:
            nonlocal count
            async for _message in client.messages:
                count += 1
                if count >= total:
                    return

        cpu0, t0 = time.process_time(), time.perf_counter()
        consumer = asyncio.create_task(consume())
        pub_rate = await _publish_and_wait(script, broker, total, rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer, 10.0)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return _cpu_figures("plain", count, 0, cpu, wall, pub_rate)


async def cpu_agent(
    script: Path, broker: Any, work: Path, total: int, rate: float, profile: Path | None = None
) -> dict[str, Any]:
    """The real agent, connected while ``total`` messages arrive, until all is in the spool."""
    tag = "profiled" if profile else "agent"
    # A session of its own per run: an earlier run's session would have queued the messages
    # published since, and they would arrive before the measured ones.
    session = f"{tag}-{rate:.0f}"
    agent = Agent(agent_config(broker, work / f"cpu-{session}", f"bench-cpu-{session}"))
    task = asyncio.create_task(agent.run(handle_signals=False))
    assert agent.mqtt is not None
    await agent.mqtt.connected_event.wait()
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler  # the bench extra

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    publisher = asyncio.create_task(_publish_and_wait(script, broker, total, rate))
    last, last_change = -1, t0
    while not (agent.metrics.mqtt_messages >= total and agent.spool.buffered == 0):
        now, seen = time.perf_counter(), agent.metrics.mqtt_messages
        if seen != last:
            last, last_change = seen, now
        elif publisher.done() and now - last_change > 5.0:
            break  # lost messages: the figures say how many arrived
        await asyncio.sleep(0.02)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if profiler is not None:
        profiler.stop()
        assert profile is not None
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        await asyncio.to_thread(profile.write_text, text)
    pub_rate = await publisher
    messages, readings = agent.metrics.mqtt_messages, agent.metrics.readings_in
    agent.stop_event.set()
    await task
    return _cpu_figures("agent", messages, readings, cpu, wall, pub_rate)


def _cpu_figures(
    who: str, messages: int, readings: int, cpu: float, wall: float, pub_rate: float
) -> dict[str, Any]:
    return {
        "consumer": who,
        "messages": messages,
        "readings": readings,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 2),
        "cpu_us_per_msg": round(1e6 * cpu / max(messages, 1), 1),
        "cpu_share": round(cpu / wall, 3),
        "publisher_msgs_per_s": round(pub_rate),
    }


async def cpu_phase(
    servers: Any, work: Path, script: Path, rates: list[float], seconds: float,
    profile: Path | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """CPU time of this process per message, plain subscriber and agent at the same rates."""
    broker = servers.MosquittoServer(work / "broker-cpu", "max_queued_messages 10000000\n")
    broker.start()
    out = []
    try:
        for rate in rates:
            total = int(rate * seconds)
            plain = await cpu_plain(script, broker, total, rate)
            agent = await cpu_agent(script, broker, work, total, rate)
            ratio = agent["cpu_us_per_msg"] / plain["cpu_us_per_msg"]
            out.append({"rate": rate, "n": total, "plain": plain, "agent": agent,
                        "ratio": round(ratio, 2)})  # fmt: skip
        if profile is not None:
            await cpu_agent(script, broker, work, int(rates[-1] * seconds), rates[-1], profile)
    finally:
        broker.stop()
    return out


async def main_async(args: argparse.Namespace) -> None:
    servers = _common.load_servers()
    m = _common.print_header("MQTT ingest: Mosquitto → MqttLink → decode → pipeline → spool")
    _common.quiet_logs()
    total = 20_000 if args.quick else 50_000
    rates = [1000.0, 3000.0, 0.0] if args.quick else [1000.0, 2000.0, 5000.0, 10000.0, 0.0]
    cpu_rates = [5000.0] if args.quick else [5000.0, 10000.0]
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        work = Path(tmp)
        script = work / "publisher.py"
        script.write_text(PUBLISHER)
        cpu = await cpu_phase(servers, work, script, cpu_rates, 6.0, args.profile)
        if args.cpu_only:
            print_cpu(cpu)
            return
        drain = await drain_phase(servers, work, script, total)
        live = await live_phase(servers, work, script, rates, 3.0, 20_000 if args.quick else 40_000)
    print(f"1. drain: {total:,} queued QoS 1 messages (50% ESPHome, 50% Tasmota JSON), "
          f"max_queued_messages 10,000,000")  # fmt: skip
    print(f"   publisher: {drain['publisher_msgs_per_s']:,} msgs/s (paho, QoS 1, full speed)")
    _common.table(
        ["consumer", "messages", "seconds", "msgs/s", "readings/s", "loss"],
        [
            ["plain aiomqtt (counts only)", drain["plain"]["messages"], drain["plain"]["seconds"],
             f"{drain['plain']['msgs_per_s']:,}", "-", drain["loss_plain"]],
            ["driftgate agent (to spool)", drain["agent"]["messages"], drain["agent"]["seconds"],
             f"{drain['agent']['msgs_per_s']:,}", f"{drain['agent']['readings_per_s']:,}",
             drain["loss_agent"]],
        ],
    )  # fmt: skip
    verdict = "meets" if drain["ratio"] >= TARGET_RATIO else "BELOW"
    print(
        f"   ratio agent/plain: {drain['ratio']:.2f} ({verdict} the {TARGET_RATIO} target); "
        f"readings {drain['agent']['readings']:,} of {drain['agent']['expected_readings']:,}"
    )
    print()
    print("2. live, broker with the default max_queued_messages 1000, agent connected")
    _common.table(
        ["publish rate", "published", "publisher msgs/s", "received", "loss"],
        [[r["rate"] if r["rate"] == "full" else f"{r['rate']:,.0f}/s", r["published"],
          f"{r['publisher_msgs_per_s']:,}", r["received"], r["loss"]] for r in live],
    )  # fmt: skip
    zero = [r for r in live if r["loss"] == 0]
    best = max(zero, key=lambda r: r["publisher_msgs_per_s"]) if zero else None
    if best is not None:
        print(f"   highest rate with zero loss: {best['publisher_msgs_per_s']:,} msgs/s "
              f"({'full speed' if best['rate'] == 'full' else 'paced'})")  # fmt: skip
    print()
    print_cpu(cpu)
    print()
    _common.emit_json(
        "mqtt_ingest",
        m,
        cpu=cpu,
        target_cpu_ratio=TARGET_CPU_RATIO,
        drain=drain,
        live=live,
        zero_loss_rate=best["publisher_msgs_per_s"] if best else 0,
        target_ratio=TARGET_RATIO,
    )


def print_cpu(cpu: list[dict[str, Any]]) -> None:
    print("3. CPU per message: QoS 1 Tasmota SENSOR JSON (3 readings each) from 20 devices at a")
    print("   paced rate for 6 s, each consumer connected while they arrive (process CPU time,")
    print("   every thread; the agent until all is committed to the spool)")
    _common.table(
        ["paced at msgs/s", "reached", "consumer", "received", "CPU s", "µs CPU/msg",
         "share of a core", "agent ÷ plain"],
        [[f"{r['rate']:,.0f}", f"{c['publisher_msgs_per_s']:,}", c["consumer"], c["messages"],
          c["cpu_s"], c["cpu_us_per_msg"],
          f"{100 * c['cpu_share']:.0f}%", r["ratio"] if c["consumer"] == "agent" else ""]
         for r in cpu for c in (r["plain"], r["agent"])],
    )  # fmt: skip
    worst = max(r["ratio"] for r in cpu)
    verdict = "meets" if worst <= TARGET_CPU_RATIO else "ABOVE"
    print(f"   agent CPU per message ≤ {worst:.2f}× the plain subscriber's ({verdict} the "
          f"{TARGET_CPU_RATIO}× target)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 20,000 and fewer rates")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU per message")
    parser.add_argument(
        "--profile", type=Path, help="profile the agent at the highest CPU rate (pyinstrument) "
        "into this text file"
    )  # fmt: skip
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
