"""The status page: its cost to render with 200 channels, its latency under 50 screens, and
what serving them costs the ingestion beside it.

The agent runs as on a gateway (``driftgate run -c``, a process of its own, so its CPU time is
read from ``/proc/<pid>/stat`` apart from everything else) with one MQTT source: 100 ESPHome
probes (humidity and temperature each: **200 channels**, climate detectors attached) on a
private Mosquitto (``tests/servers.py``: a temporary directory, 127.0.0.1 only). A publisher
process (paho, QoS 1) sends the **floor load**: ``--rate`` messages/s (1,000: each channel
5 times a second). Its local history is filled with a day of minutes for every channel before
the start, so every card has its 24 h sparkline; two channels have spec limits the probes are
above, so two incidents are open.

1. **Render** (one client): ``/``, ``/kiosk`` and ``/api/status`` fetched 20 times each; the
   agent's own time per answer (its ``Server-Timing`` header: snapshot and HTML) and the time
   on the loopback; the page's size. Then a **browser** (Debian's chromium, headless, through
   selenium and chromium-driver, as in the tests) loads ``/`` 5 times: navigation timing
   (first byte, DOM ready, load) and the time until the live stream is connected.
2. **Ingestion alone** for ``--seconds`` (30): readings/s into the agent, the agent's CPU
   share of one core, its event-loop lag.
3. **50 screens polling**: 50 clients each fetch ``/api/status`` once a second (spread over
   the second) for ``--seconds``: latency p50/p90/p99/max, and the same ingestion figures.
4. **50 clients back to back** for 10 s (the worst case, far beyond a floor's screens):
   requests/s, latency, ingestion.

The target: ``/api/status`` p99 under 50 ms with 50 screens, and the ingest rate unchanged
within noise (the same readings/s as alone, nothing lost). The machine has 2 cores shared by
the publisher, the broker, the agent, the clients and the browser: the load average is
printed with the figures.

    .venv/bin/python bench/status_page.py            # ~2 min
    .venv/bin/python bench/status_page.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import aiohttp

from agent.store.history import History, history_path

PROBES = 100
CHANNELS = 2 * PROBES
SCREENS = 50
TARGET_P99_MS = 50.0
HOT = ("floor.ep007.humidity", "floor.ep042.humidity")  # over their limits: two incidents

PUBLISHER = """\
import os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
probes, count_file = int(sys.argv[5]), sys.argv[6]
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect(host, port)
c.loop_start()
begin = start = told = time.monotonic()
i = 0
while time.monotonic() - begin < seconds:
    k = (i // 2) % probes
    if i % 2 == 0:
        c.publish(f"ep{k:03d}/sensor/humidity/state", f"{48 + (i % 7) * 0.1:.1f}", qos=1)
    else:
        c.publish(f"ep{k:03d}/sensor/temperature/state", f"{21 + (i % 5) * 0.1:.1f}", qos=1)
    i += 1
    now = time.monotonic()
    delay = start + i / rate - now
    if delay > 0:
        time.sleep(delay)
    elif delay < -0.2:  # fell behind (a busy machine): keep the rate, no catch-up burst
        start = now - i / rate
    if now - told >= 0.25:
        told = now
        with open(count_file + ".tmp", "w") as f:
            f.write(str(i))
        os.replace(count_file + ".tmp", count_file)
c.loop_stop()
print(i, flush=True)
"""


def start_publisher(work: Path, broker: Any, rate: float, seconds: float) -> subprocess.Popen[str]:
    """The floor load: a paho publisher process at ``rate`` messages/s for ``seconds``."""
    script = work / "publish.py"
    script.write_text(PUBLISHER)
    return subprocess.Popen(
        [sys.executable, str(script), broker.host, str(broker.port), str(rate), str(seconds),
         str(PROBES), str(work / "published")], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def published(work: Path) -> int:
    """Messages the publisher has sent so far (it writes the count 4 times a second)."""
    try:
        return int((work / "published").read_text())
    except (OSError, ValueError):
        return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 2) if values else 0.0,
        "p90_ms": round(pct(values, 0.90), 2),
        "p99_ms": round(pct(values, 0.99), 2),
        "max_ms": round(max(values), 2) if values else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def prefill_history(state: Path) -> None:
    """A day of minutes for every channel, so that each card has its sparkline."""
    history = History(history_path(state))
    end = (time.time_ns() // 60_000_000_000) * 60_000_000_000
    minutes = [end - i * 60_000_000_000 for i in range(1440, 0, -1)]
    for k in range(PROBES):
        for field, base in (("humidity", 48.0), ("temperature", 21.0)):
            values = [base + 2.0 * ((i % 1440) / 1440 - 0.5) for i in range(1440)]
            history.add_named(f"floor.ep{k:03d}.{field}", minutes, values)
    await history.flush()
    await history.close()


def agent_yaml(broker: Any, state: Path, port: int) -> str:
    cfg = {
        "site": "bench", "gateway": "gw1", "timezone": "Europe/Paris", "state_dir": str(state),
        "log": {"level": "warning", "format": "json"},
        "status": {"listen": f"127.0.0.1:{port}"},
        "mqtt": {"host": broker.host, "port": broker.port, "watch_dropped": False},
        "sources": [{"type": "mqtt", "name": "probes", "profile": "sht4x-esphome",
                     "zone": "floor"}],
        "channels": [{"name": name, "limits": {"high_warn": 45, "hold": 0}} for name in HOT],
    }  # fmt: skip
    return json.dumps(cfg)


class Agent:
    """The agent's process and what the bench reads of it."""

    def __init__(self, config: Path, base: str) -> None:
        self.base = base
        self.work = config.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=_common.ROOT,
        )  # fmt: skip

    async def readings_in(self, http: aiohttp.ClientSession) -> int:
        """Readings taken so far, from /metrics (counted now, not a cached snapshot)."""
        async with http.get(self.base + "metrics") as resp:
            text = await resp.text()
        line = next(x for x in text.splitlines() if x.startswith("driftgate_readings_in_total"))
        return int(line.rsplit(" ", 1)[1])

    async def status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.base + "api/status") as resp:
            data: dict[str, Any] = await resp.json()
        return data

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def until_up(agent: Agent, http: aiohttp.ClientSession, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            status = await agent.status(http)
            if len(status["channels"]) >= CHANNELS:
                return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the agent did not show {CHANNELS} channels within {limit} s")


async def fetch_timed(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """(loopback ms, the agent's own ms from Server-Timing, body bytes)."""
    started = time.perf_counter()
    async with http.get(url) as resp:
        body = await resp.read()
        server = resp.headers.get("Server-Timing", "app;dur=0").split("dur=")[1]
    return (time.perf_counter() - started) * 1000, float(server), len(body)


async def render_phase(agent: Agent, http: aiohttp.ClientSession) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("", "kiosk", "api/status"):
        # The first answer builds what later ones reuse (the sparklines: 200 history reads
        # on the history's thread): shown apart.
        cold_wire, cold_server, size = await fetch_timed(http, agent.base + path)
        wire, server = [], []
        for _ in range(20):
            w, s, size = await fetch_timed(http, agent.base + path)
            wire.append(w)
            server.append(s)
            await asyncio.sleep(0.05)
        out["/" + path] = {"server": summary(server), "wire": summary(wire), "bytes": size,
                           "first_server_ms": round(cold_server, 2),
                           "first_wire_ms": round(cold_wire, 2)}  # fmt: skip
    return out


def browser_phase(base: str, loads: int) -> dict[str, Any]:
    """Navigation timing of the floor page in headless chromium, ``loads`` times."""
    sys.path.insert(0, str(_common.ROOT / "tests"))
    from browser import headless_chromium
    from selenium.webdriver.common.by import By

    driver = headless_chromium(1280, 800)
    timings: dict[str, list[float]] = {"first_byte_ms": [], "dom_ready_ms": [], "load_ms": [],
                                       "live_ms": []}  # fmt: skip
    try:
        for _ in range(loads):
            started = time.perf_counter()
            driver.get(base)
            nav = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return [n.responseStart, n.domContentLoadedEventEnd, n.loadEventEnd];"
            )
            while driver.find_element(By.ID, "live").text != "live":
                time.sleep(0.01)
            timings["live_ms"].append((time.perf_counter() - started) * 1000)
            for key, value in zip(("first_byte_ms", "dom_ready_ms", "load_ms"), nav, strict=True):
                timings[key].append(float(value))
            cards = len(driver.find_elements(By.CSS_SELECTOR, ".card[data-channel]"))
    finally:
        driver.quit()
    return {
        "loads": loads,
        "cards": cards,
        **{k: round(statistics.median(v), 1) for k, v in timings.items()},
    }


async def settle(agent: Agent, http: aiohttp.ClientSession, limit: float = 30.0) -> None:
    """Wait until the agent has caught up with what was sent (a backlog at the broker from the
    phase before would otherwise be counted as this phase's readings)."""
    deadline = time.monotonic() + limit
    behind = None
    while time.monotonic() < deadline:
        now = published(agent.work) - await agent.readings_in(http)
        if behind is not None and abs(now - behind) < 100:
            return
        behind = now
        await asyncio.sleep(0.5)


async def ingest_window(
    agent: Agent, http: aiohttp.ClientSession, seconds: float, load: Any = None
) -> dict[str, Any]:
    """Readings/s and CPU of the agent over ``seconds``, with ``load`` running meanwhile."""
    await settle(agent, http)
    before, sent0 = await agent.readings_in(http), published(agent.work)
    cpu0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
    task = asyncio.create_task(load) if load is not None else None
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
    readings, sent = await agent.readings_in(http) - before, published(agent.work) - sent0
    result = await task if task is not None else None
    after = await agent.status(http)
    return {
        "seconds": round(t1 - t0, 1),
        "readings_per_s": round(readings / (t1 - t0), 1),
        "published_per_s": round(sent / (t1 - t0), 1),
        "cpu_share_of_one_core": round((cpu1 - cpu0) / (t1 - t0), 3),
        "loop_lag_max_ms": after["health"]["loop_lag"]["max_ms"],
        "loop_lag_p99_ms": after["health"]["loop_lag"]["p99_ms"],
        "clients": result,
    }


async def screens(base: str, seconds: float, *, back_to_back: bool) -> dict[str, Any]:
    """SCREENS clients on /api/status: once a second each (spread), or back to back."""
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=SCREENS)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(k: int) -> None:
            nonlocal errors
            if not back_to_back:
                await asyncio.sleep(k / SCREENS)
            next_at = time.monotonic()
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    async with http.get(base + "api/status") as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)
                if not back_to_back:
                    next_at += 1.0
                    await asyncio.sleep(max(next_at - time.monotonic(), 0))

        await asyncio.gather(*(one(k) for k in range(SCREENS)))
    return {"requests_per_s": round(len(latencies) / seconds, 1), "errors": errors,
            **summary(latencies)}  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    machine = _common.print_header(
        f"status page: {CHANNELS} channels, {SCREENS} screens, floor load {args.rate:,.0f} msgs/s"
    )
    servers = _common.load_servers()
    seconds = 10.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory(prefix="driftgate-status-bench-") as tmp:
        work = Path(tmp)
        broker = servers.MosquittoServer(work / "broker", "set_tcp_nodelay true\n")
        broker.start()
        publisher = None
        agent = None
        try:
            state = work / "state"
            await prefill_history(state)
            port = servers.free_port()
            config = work / "agent.yaml"
            config.write_text(agent_yaml(broker, state, port))
            agent = Agent(config, f"http://127.0.0.1:{port}/")
            publisher = start_publisher(work, broker, args.rate, 30 + 3 * seconds + 40)
            async with aiohttp.ClientSession() as http:
                await until_up(agent, http)
                await asyncio.sleep(5)  # warm: the sparklines are built, the JIT-free loop settles
                render = await render_phase(agent, http)
                browser = await asyncio.to_thread(browser_phase, agent.base, 3 if args.quick else 5)
                alone = await ingest_window(agent, http, seconds)
                polled = await ingest_window(
                    agent, http, seconds, screens(agent.base, seconds, back_to_back=False)
                )
                hammer_s = min(seconds, 10.0)
                hammered = await ingest_window(
                    agent, http, hammer_s, screens(agent.base, hammer_s, back_to_back=True)
                )
                last = await agent.status(http)
        finally:
            if publisher is not None:
                publisher.terminate()
                publisher.wait(10)
            if agent is not None:
                agent.stop()
            broker.stop()
    print("render with 200 channels (one client: a first fetch, then 20; the agent's own time")
    print("from its Server-Timing header, and the time on the loopback)")
    _common.table(
        ["page", "first: agent ms", "agent p50 ms", "agent p99 ms", "loopback p50 ms",
         "loopback p99 ms", "KiB"],
        [[p, f"{r['first_server_ms']:.1f}", f"{r['server']['p50_ms']:.2f}",
          f"{r['server']['p99_ms']:.2f}", f"{r['wire']['p50_ms']:.2f}",
          f"{r['wire']['p99_ms']:.2f}", f"{r['bytes'] / 1024:.0f}"]
         for p, r in render.items()],
    )  # fmt: skip
    print()
    print(f"browser (headless chromium, {browser['loads']} loads of /, {browser['cards']} cards):"
          f" first byte {browser['first_byte_ms']} ms, DOM ready {browser['dom_ready_ms']} ms, "
          f"load {browser['load_ms']} ms, live stream {browser['live_ms']} ms")  # fmt: skip
    print()
    rows = []
    for name, phase in (("ingestion alone", alone), (f"{SCREENS} screens, 1/s each", polled),
                        (f"{SCREENS} clients back to back", hammered)):  # fmt: skip
        c = phase["clients"] or {}
        rows.append([
            name, f"{phase['published_per_s']:,.0f}", f"{phase['readings_per_s']:,.0f}",
            f"{100 * phase['cpu_share_of_one_core']:.1f}%", f"{phase['loop_lag_p99_ms']:.1f}",
            f"{c.get('requests_per_s', 0):,.0f}",
            f"{c.get('p50_ms', 0):.1f}" if c else "-", f"{c.get('p99_ms', 0):.1f}" if c else "-",
            f"{c.get('max_ms', 0):.1f}" if c else "-",
        ])  # fmt: skip
    _common.table(["phase", "sent/s", "readings/s", "agent CPU", "loop lag p99 ms", "req/s",
                   "p50 ms", "p99 ms", "max ms"], rows)  # fmt: skip
    # What the agent took of what was sent, alone and beside the screens (1.0: all of it).
    kept = {k: round(p["readings_per_s"] / p["published_per_s"], 4) if p["published_per_s"]
            else 0.0 for k, p in (("alone", alone), ("screens", polled),
                                  ("back_to_back", hammered))}  # fmt: skip
    change = kept["screens"] - kept["alone"]
    met = polled["clients"]["p99_ms"] <= TARGET_P99_MS
    print()
    print(f"/api/status p99 with {SCREENS} screens: {polled['clients']['p99_ms']:.1f} ms "
          f"(target ≤ {TARGET_P99_MS:.0f} ms: {'met' if met else 'NOT met'}); readings taken of "
          f"those sent: {kept['alone']:.1%} alone, {kept['screens']:.1%} beside {SCREENS} screens, "
          f"{kept['back_to_back']:.1%} beside {SCREENS} clients back to back; "
          f"incidents open at the end: {len(last['incidents'])}")  # fmt: skip
    print()
    _common.emit_json(
        "status_page",
        machine,
        quick=args.quick,
        channels=CHANNELS,
        screens=SCREENS,
        floor_rate_msgs_per_s=args.rate,
        render=render,
        browser=browser,
        ingest={"alone": alone, "screens": polled, "back_to_back": hammered},
        kept=kept,
        ingest_change=round(change, 4),
        target_p99_ms=TARGET_P99_MS,
        p99_met=met,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="10 s phases, 3 browser loads")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="floor load, MQTT msgs/s")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
