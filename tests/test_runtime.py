"""The runtime cannot die silently: every task is supervised (a crash is logged with its
traceback and the task restarted, repeated crashes end the agent with a non-zero exit), alert
events kept in memory are capped, and nothing blocks the event loop."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import serial
import yaml
from servers import InfluxDB1Server, MosquittoServer, SerialPair, require_binary
from waiting import until

from agent.backoff import Backoff
from agent.cli import main as cli_main
from agent.color.colorimetry import Colorimetry
from agent.color.references import ReferenceStore
from agent.config import config_from_dict
from agent.context import ContextStore
from agent.drift.alerts import AlertEvent, Level
from agent.drift.baselines import BaselineStore
from agent.errors import SpoolError
from agent.logs import configure_logging
from agent.runtime.agent import Agent
from agent.runtime.sinks import EventRecord
from agent.runtime.supervisor import Supervisor
from agent.sim.devices import DEMO_START, DeviceEmulator

START = "2026-01-05T00:00:00Z"
FAST = Backoff(base=0.01, factor=2.0, cap=0.05)


def demo_cfg(state: Path, *, days: float = 2.0, speed: float = 2e6, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "site": "rt",
        "gateway": "gw1",
        "state_dir": str(state),
        "self_metrics": {"interval": 1},  # the shortest the config allows: ~6 runs per test
        "sources": [
            {"type": "simulated", "name": "workshop", "speed": speed, "start": START,
             "days": days, "interval": 60},
        ],
        **extra,
    }  # fmt: skip
    return config_from_dict(data, env={})


def json_logs(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def fail_once(obj: object, name: str, exc: BaseException | None = None) -> Callable[[], int]:
    """Make ``obj.name`` raise once, then behave; returns how often it was called."""
    original = getattr(obj, name)
    calls = [0]
    error = exc if exc is not None else RuntimeError(f"injected failure in {name}")

    if asyncio.iscoroutinefunction(original):

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise error
            return await original(*args, **kwargs)

        setattr(obj, name, async_wrapper)
    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise error
            return original(*args, **kwargs)

        setattr(obj, name, wrapper)
    return lambda: calls[0]


def crash_run_once(obj: object, name: str) -> None:
    """Make a task's run coroutine crash shortly after its first start."""
    original: Callable[[], Awaitable[None]] = getattr(obj, name)
    starts = [0]

    async def run() -> None:
        starts[0] += 1
        if starts[0] == 1:
            await asyncio.sleep(0.02)
            raise RuntimeError(f"injected failure in {name}")
        await original()

    setattr(obj, name, run)


class Flaky:
    """A workshop whose first sample fails (a slotted class cannot be patched in place)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def sample(self, t: float) -> Any:
        self.calls += 1
        if self.calls == 100:
            raise RuntimeError("injected failure in the simulated source")
        return self.inner.sample(t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def quick_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The maintenance tick every 0.1 s instead of every second: the same code, sooner."""
    monkeypatch.setattr("agent.runtime.agent.MAINTENANCE_S", 0.1)


@pytest.mark.usefixtures("quick_ticks")
async def test_a_crash_in_any_task_is_logged_restarted_and_nothing_is_lost(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    """One injected failure in every long-running task of a run that forwards to a real
    InfluxDB: each is logged with its traceback and restarted, and every line still arrives
    (before: one spool read error ended the forwarder for good, lines stuck, nothing logged)."""
    server, db = influx_db
    cfg = demo_cfg(
        tmp_path / "state",
        days=3,
        speed=150_000,  # 1.7 s: every task runs at least once
        influx={"url": server.url, "database": db, "flush_interval": 0.1, "max_backoff": 0.2},
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(cfg)
    agent.supervisor = Supervisor(backoff=FAST)
    source = agent.sources[0]
    fail_once(agent.spool, "read_batch", SpoolError("injected: cannot read the spool"))  # forwarder
    fail_once(agent.spool, "flush")  # the spool's commit task
    fail_once(agent.pipeline, "flush_rejected")  # detect
    fail_once(agent, "self_metrics_lines")  # self-metrics
    fail_once(agent, "maintain")  # maintenance
    assert agent.history is not None
    agent.history.flush_interval = 0.2
    fail_once(agent.history, "flush")  # history
    crash_run_once(agent.lag, "run")  # loop-lag
    source.workshop = Flaky(source.workshop)  # type: ignore[attr-defined]  # the source

    result = await agent.run(drain_at_end=10, handle_signals=False)

    assert result.failure is None
    logs = json_logs(stream)
    crashed = {e["task"]: e for e in logs if e["event"].endswith(" crashed")}
    expected = {"forwarder", "spool", "detect", "self-metrics", "maintenance", "history",
                "loop-lag", "source:workshop"}  # fmt: skip
    assert set(crashed) == expected
    for task, entry in crashed.items():
        assert entry["level"] == "error"
        assert "Traceback" in entry["exception"], task
        assert "injected" in entry["exception"], task
    restarted = {e["task"] for e in logs if e["event"].endswith(" restarting")}
    assert restarted == expected
    assert result.metrics.task_restarts == len(expected)
    # The simulation resumed where it crashed: every reading once (the frame that failed
    # half-way is sent again: at least once, never lost).
    assert result.metrics.readings_in >= 3 * 1440 * 12
    assert result.pending_lines == 0
    assert result.metrics.forwarded == result.metrics.spool_appended
    stored = await asyncio.to_thread(server.rows, "SELECT COUNT(tension_cn) AS n FROM tension", db)
    assert int(stored[0]["n"]) == 3 * 1440 * 8


@pytest.mark.usefixtures("quick_ticks")
async def test_a_task_that_keeps_failing_ends_the_agent_with_the_reason(tmp_path: Path) -> None:
    cfg = demo_cfg(tmp_path / "state", days=30, speed=86400)
    agent = Agent(cfg)
    agent.supervisor = Supervisor(backoff=FAST, max_failures=3)

    async def broken() -> None:
        raise OSError("injected: disk gone")

    agent.maintain = broken  # type: ignore[method-assign]
    result = await asyncio.wait_for(agent.run(handle_signals=False), 30)
    assert result.failure is not None
    assert "task maintenance failed 3 times" in result.failure
    assert result.metrics.task_restarts == 2


@pytest.mark.usefixtures("quick_ticks")
def test_driftgate_run_exits_1_when_the_supervisor_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1, not 2: systemd's Restart=on-failure restarts the process (2 means a bad config,
    which restarting cannot fix)."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "rt",
                "gateway": "gw1",
                "state_dir": str(tmp_path / "state"),
                "sources": [{"type": "simulated", "name": "w", "speed": 86400, "days": 30}],
            }
        )
    )

    async def broken(self: Agent) -> None:
        raise OSError("injected: disk gone")

    monkeypatch.setattr(Agent, "maintain", broken)
    monkeypatch.setattr("agent.runtime.agent.Supervisor", lambda: Supervisor(backoff=FAST))
    assert cli_main(["run", "-c", str(path)]) == 1
    assert "task maintenance failed 5 times" in capsys.readouterr().err


def test_events_kept_in_memory_are_capped_and_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.drift.alerts import AlertEvent, Level
    from agent.metrics import AgentMetrics
    from agent.reading import Channel

    configure_logging("info", "json")
    metrics = AgentMetrics()
    record = EventRecord(metrics, limit=100)
    channel = Channel(name="c", measurement="m", field="f")
    for i in range(250):
        record(AlertEvent(i, channel, "stale", "raised", Level.WARN, 0.0, 0.0, 0.0, 0.0, i, "", ""))
    assert [e.ts_ns for e in record.events] == list(range(150, 250))
    assert metrics.events_dropped == 150
    told = [line for line in capsys.readouterr().err.splitlines() if "newest alert events" in line]
    assert len(told) == 1


async def _stop(agent: Agent, task: asyncio.Task[Any]) -> Any:
    agent.stop_event.set()
    return await asyncio.wait_for(task, 20)


async def test_colour_context_and_baselines_never_stall_the_event_loop(
    tmp_path: Path,
    serial_pair: SerialPair,
    mosquitto: MosquittoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first colour measurement (colour-science's weights), context set over MQTT
    (context.json) and a baseline locking during detection (baselines.json) used to run on the
    event loop, ~190 ms for the first. Each now runs on a thread: checked by where it ran, not
    by the loop's lag (a timing, which a loaded machine would make flaky)."""
    ran_on = on_threads(monkeypatch)
    state = tmp_path / "state"
    ReferenceStore(state / "references").request_capture("4711", "clasp")
    cfg = config_from_dict(
        {
            "site": "rt",
            "gateway": "gw1",
            "state_dir": str(state),
            "self_metrics": {"interval": 1},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
            "channels": [  # a baseline that locks 30 simulated minutes (0.5 s) into the run
                {"name": "sewing.m05.tension", "baseline": {"window": "1h", "learn": "30m"}},
            ],
            "sources": [
                {"type": "serial", "name": "spectro", "profile": "spectro-31", "zone": "qc",
                 "port": serial_pair.device, "baud": 115200,
                 "tags": {"sku": "4711", "part": "clasp"}},
                {"type": "simulated", "name": "workshop", "speed": 3600, "interval": 60},
            ],
        },
        env={},
    )  # fmt: skip
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(handle_signals=False))
    try:
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 10)
        spectro = agent.sources[0]
        await until(lambda: spectro.health.connected, 5, "the port")  # type: ignore[attr-defined]
        agent.lag.worst_ms = 0.0  # from here on: start-up itself is not the question
        emulator = DeviceEmulator("spectro-31", device="plating")
        port = serial.Serial(serial_pair.emulator, 115200, write_timeout=2)
        for i in range(8):
            port.write(emulator.frames(DEMO_START + 60 * i)[0].data)
            port.flush()
            await pub(mosquitto, "driftgate/rt/context/line/L2", json.dumps({"lot": f"LOT-{i}"}))
            await asyncio.sleep(0.15)
        port.close()
        await until(lambda: agent.color is not None and agent.color.stats.compared >= 7, 10,
                    "seven colour comparisons")  # fmt: skip
        await until((state / "context.json").exists, 5, "context.json")
        m05 = agent.engine.drift(agent.registry.channels["sewing.m05.tension"])
        assert m05 is not None
        await until(lambda: m05.baseline.locked is not None, 10, "the m05 baseline to lock")
        await until((state / "baselines.json").exists, 5, "baselines.json")
        await asyncio.sleep(0.3)
    finally:
        result = await _stop(agent, task)
    assert result.failure is None
    assert agent.context.scopes["line:L2"]["lot"] == "LOT-7"
    assert json.loads((state / "context.json").read_text())["line:L2"]["lot"] == "LOT-7"
    assert "sewing.m05.tension" in json.loads((state / "baselines.json").read_text())
    assert set(ran_on) == {"colour weights", "context.json", "baselines.json"}, ran_on
    on_loop = {what for what, thread in ran_on.items() if thread == "MainThread"}
    assert not on_loop, f"ran on the event loop's thread: {sorted(on_loop)}"


def on_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Record the thread the slow state work runs on: colour-science's weights (a cache miss),
    writing context.json and baselines.json."""
    ran_on: dict[str, str] = {}

    def spy(cls: Any, name: str, what: str, slow: Callable[..., bool] = lambda *a: True) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, *args: Any) -> Any:
            if slow(self, *args):
                ran_on[what] = threading.current_thread().name
            return original(self, *args)

        monkeypatch.setattr(cls, name, wrapper)

    spy(Colorimetry, "weights", "colour weights", lambda self, *key: key not in self._weights)
    spy(ContextStore, "save", "context.json")
    spy(BaselineStore, "save", "baselines.json")
    return ran_on


async def pub(broker: MosquittoServer, topic: str, payload: str) -> None:
    """One QoS 1 message with the real mosquitto_pub."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("/usr/bin/mosquitto_pub", "mosquitto-clients"),
        "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload,
    )  # fmt: skip
    assert await proc.wait() == 0


async def test_the_mqtt_link_and_alert_publisher_restart_after_a_crash(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    cfg = config_from_dict(
        {
            "site": "rt",
            "gateway": "gw1",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
            "sources": [{"type": "mqtt", "name": "probes", "profile": "tasmota-sht3x"}],
        },
        env={},
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(cfg)
    agent.supervisor = Supervisor(backoff=FAST)
    assert agent.mqtt is not None
    assert agent.publisher is not None
    fail_once(agent.mqtt, "_connected")
    fail_once(agent.mqtt, "publish")  # the publisher's first publish
    task = asyncio.create_task(agent.run(handle_signals=False))
    try:
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 10)
        payload = json.dumps(
            {"Time": "2026-01-05T10:00:00", "SHT3X": {"Temperature": 21.5, "Humidity": 48.0},
             "TempUnit": "C"}
        )  # fmt: skip
        await pub(mosquitto, "tele/probe1/SENSOR", payload)
        await until(lambda: agent.metrics.readings_in >= 2, 10, "the probe's readings")
        agent.pipeline.alert(
            AlertEvent(1, agent.channels[0], "stale", "raised", Level.WARN, 0.0, 0.0, 0.0, 0.0,
                       1, "", "a test alert")
        )  # fmt: skip
        await until(lambda: agent.publisher.published >= 1, 10, "the alert published")  # type: ignore[union-attr]
    finally:
        await _stop(agent, task)
    crashed = {e["task"] for e in json_logs(stream) if e["event"].endswith(" crashed")}
    assert crashed == {"mqtt", "mqtt-publisher"}
