"""Hostile MQTT input: the agent's memory while 8,000 made-up sensor ids arrive.

A private Mosquitto 2.0 (``tests/servers.py``: temporary directory, 127.0.0.1 only), the real
``Agent`` (MqttLink, an MqttSource with the ``tasmota-sht3x`` profile, Pipeline, detectors,
Spool) and a publisher process (paho, QoS 1, 2,000 messages/s) sending one Tasmota
``tele/<id>/SENSOR`` message (temperature and humidity: two channels) for each of N distinct
made-up ids, as a careless or hostile sender on the broker would.

Each variant runs in a fresh Python process, so the resident set size (VmRSS) is that
agent's alone; it is sampled as the messages arrive and printed as a curve (ids received,
channels held, RSS):

* ``capped``: the default ``input_limits.max_channels`` (2,000): the target is an RSS that stays
  flat once the cap is reached (growth after the cap ≤ 5 MiB), every refused reading
  counted in ``channels_refused``;
* ``uncapped``: ``input_limits.max_channels`` at its maximum (100,000), what the agent did before
  the cap: a channel, its detectors and their windows for every made-up id.

    .venv/bin/python bench/hostile_mqtt.py            # 8,000 ids, ~40 s
    .venv/bin/python bench/hostile_mqtt.py --quick    # 3,000 ids, ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

from agent.config import config_from_dict
from agent.runtime.agent import Agent

CAPPED = 2000  # the default of input_limits.max_channels
UNCAPPED = 100_000  # its maximum
TARGET_GROWTH_MIB = 5.0
RATE = 2000.0  # messages per second from the publisher
SAMPLES = 16  # points on each RSS curve

PUBLISHER = """\
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
acked = 0
def on_publish(client, userdata, mid, reason, properties):
    global acked
    acked += 1
c.on_publish = on_publish
c.connect(host, port)
c.loop_start()
start = time.monotonic()
for i in range(total):
    payload = '{"SHT3X":{"Temperature":%.1f,"Humidity":%.1f},"TempUnit":"C"}' % (
        20 + i % 7, 40 + i % 13)
    c.publish(f"tele/madeup-{i:06d}/SENSOR", payload, qos=1)
    delay = start + (i + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
while acked < total:
    time.sleep(0.01)
c.disconnect()
c.loop_stop()
"""


def agent_config(broker: Any, state_dir: Path, cap: int) -> Any:
    return config_from_dict(
        {
            "site": "bench",
            "gateway": "gw1",
            "state_dir": str(state_dir),
            "log": {"level": "warning"},
            "mqtt": {"host": broker.host, "port": broker.port, "watch_dropped": False},
            "sources": [{"type": "mqtt", "name": "tas", "profile": "tasmota-sht3x"}],
            "self_metrics": {"interval": 60},
            "input_limits": {"max_channels": cap},
        },
        env={},
    )


async def one_variant(cap: int, ids: int) -> dict[str, Any]:
    """Run the agent against ``ids`` made-up sensor ids; the RSS curve as it goes."""
    servers = _common.load_servers()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        script = work / "publisher.py"
        script.write_text(PUBLISHER)
        with servers.MosquittoServer(work / "mosquitto") as broker:
            agent = Agent(agent_config(broker, work / "state", cap))
            task = asyncio.create_task(agent.run(handle_signals=False))
            assert agent.mqtt is not None
            await asyncio.wait_for(agent.mqtt.connected_event.wait(), 15)
            await asyncio.sleep(0.5)  # start-up settles
            metrics = agent.metrics
            curve = [(0, 0, round(_common.rss_now_mib(), 1))]
            step = max(ids // SAMPLES, 1)
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, str(script), broker.host, str(broker.port), str(ids), str(RATE)
            )
            started = time.monotonic()
            next_mark = step
            while metrics.mqtt_messages < ids:
                if time.monotonic() - started > 300:
                    raise SystemExit(f"only {metrics.mqtt_messages} of {ids} messages arrived")
                if metrics.mqtt_messages >= next_mark:
                    curve.append((metrics.mqtt_messages, len(agent.registry.channels),
                                  round(_common.rss_now_mib(), 1)))  # fmt: skip
                    next_mark += step
                await asyncio.sleep(0.01)
            await asyncio.wait_for(publisher.wait(), 60)
            await asyncio.sleep(0.5)  # the last readings are detected and spooled
            curve.append((metrics.mqtt_messages, len(agent.registry.channels),
                          round(_common.rss_now_mib(), 1)))  # fmt: skip
            agent.stop_event.set()
            result = await task
    at_cap = next((rss for _, channels, rss in curve if channels >= cap), None)
    return {
        "cap": cap,
        "ids": ids,
        "channels": len(agent.registry.channels),
        "channels_refused": result.metrics.channels_refused,
        "readings_in": result.metrics.readings_in,
        "rss_start_mib": curve[0][2],
        "rss_end_mib": curve[-1][2],
        "rss_at_cap_mib": at_cap,
        "growth_after_cap_mib": None if at_cap is None else round(curve[-1][2] - at_cap, 1),
        "curve": curve,
    }


def child(cap: int, ids: int) -> None:
    """One variant in this (fresh) process: its result as the last line of stdout."""
    _common.quiet_logs()
    print(json.dumps(asyncio.run(one_variant(cap, ids))))


def run_child(cap: int, ids: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(cap), "--ids", str(ids)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3,000 ids instead of 8,000")
    parser.add_argument("--ids", type=int, default=None, help="made-up sensor ids to send")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ids = args.ids or (3000 if args.quick else 8000)
    if args.child is not None:
        child(args.child, ids)
        return
    machine = _common.print_header(
        f"Hostile MQTT input: RSS while {ids:,} made-up sensor ids arrive (2 channels each)"
    )
    variants = {"capped": run_child(CAPPED, ids), "uncapped": run_child(UNCAPPED, ids)}
    for name, v in variants.items():
        print(f"{name}: input_limits.max_channels {v['cap']:,}")
        _common.table(
            ["ids received", "channels", "RSS MiB"],
            [[f"{n:,}", f"{c:,}", f"{rss:.1f}"] for n, c, rss in v["curve"]],
        )
        print()
    capped, uncapped = variants["capped"], variants["uncapped"]
    growth = capped["growth_after_cap_mib"]
    meets = growth is not None and growth <= TARGET_GROWTH_MIB
    _common.table(
        ["variant", "channels", "refused readings", "RSS start", "RSS end", "growth after cap"],
        [
            [name, f"{v['channels']:,}", f"{v['channels_refused']:,}", f"{v['rss_start_mib']:.1f}",
             f"{v['rss_end_mib']:.1f}",
             "-" if v["growth_after_cap_mib"] is None else f"{v['growth_after_cap_mib']:.1f}"]
            for name, v in variants.items()
        ],
    )  # fmt: skip
    print()
    print(
        f"capped: RSS {capped['rss_start_mib']:.0f} → {capped['rss_end_mib']:.0f} MiB, "
        f"{growth} MiB after the cap (target ≤ {TARGET_GROWTH_MIB:g}): "
        f"{'met' if meets else 'NOT met'}; uncapped: {uncapped['rss_start_mib']:.0f} → "
        f"{uncapped['rss_end_mib']:.0f} MiB with {uncapped['channels']:,} channels"
    )
    _common.emit_json(
        "hostile_mqtt",
        machine,
        quick=args.quick,
        ids=ids,
        target_growth_mib=TARGET_GROWTH_MIB,
        meets_target=meets,
        capped=capped,
        uncapped=uncapped,
    )


if __name__ == "__main__":
    main()
