"""Reloading the configuration (SIGHUP, `systemctl reload`): the file is validated first (a bad
one is refused whole and the running config goes on), then only what changed restarts: the
spool, the readings it holds and the detectors of unchanged channels carry on. Sections that
cannot change live are kept and named as needing a restart.

The same on a real systemd, through `systemctl reload`: tests/system/test_system_reload.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
import serial
import yaml
from servers import InfluxDB1Server, SerialPair
from test_notify import Receiver
from waiting import until, wait_for

from agent.config import load_config
from agent.logs import configure_logging
from agent.runtime.agent import Agent
from agent.runtime.reload import ANSWER_FILE, plan_reload, read_answer
from agent.runtime.systemd import hold_sighup, sighup_held
from agent.sim.devices import DeviceEmulator

PROBE = "bench.sht41-ep1.humidity"  # the serial probe's channel
ROOM = "cutting.humidity"  # one of the simulated workshop's channels


def base(state: Path, port: str | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "site": "rl",
        "gateway": "gw1",
        "state_dir": str(state),
        "sources": [{"type": "simulated", "name": "workshop", "interval": 0.05}],
        "channels": [
            {"name": ROOM, "detectors": [{"type": "ewma", "lam": 0.1, "warn": 5, "alarm": 8}]},
            {"name": PROBE, "detectors": [{"type": "ewma", "lam": 0.1, "warn": 5, "alarm": 8}]},
        ],
        **extra,
    }
    if port is not None:
        data["sources"].append(
            {"type": "serial", "name": "probe", "port": port, "profile": "sht4x-serial",
             "zone": "bench", "reconnect_max": 0.5}
        )  # fmt: skip
    return data


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Running:
    """An agent started from a config file, reloadable like under systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.agent = Agent(load_config(path), reload_config=lambda: load_config(path))
        self.task = asyncio.create_task(self.agent.run(handle_signals=False))

    async def ready(self) -> Agent:
        """The agent once every task is started (READY=1 under systemd)."""
        await asyncio.wait_for(self.agent.started.wait(), 30)
        return self.agent

    async def stop(self) -> None:
        self.agent.stop_event.set()
        await asyncio.wait_for(self.task, 20)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if not run.task.done():
            await run.stop()


def send_frames(pair: SerialPair, n: int, t: float = 1.7e9) -> None:
    emulator = DeviceEmulator("sht4x-serial")
    with serial.Serial(pair.emulator, 115200, write_timeout=2) as port:
        for i in range(n):
            for frame in emulator.frames(t + i):
                port.write(frame.data)


def test_the_plan_applies_live_sections_and_keeps_the_rest_for_a_restart(tmp_path: Path) -> None:
    old = load_config(write(tmp_path / "a.yaml", base(tmp_path, "/dev/ttyUSB0")))
    assert plan_reload(old, old).empty

    changed = base(tmp_path, "/dev/ttyUSB1", spool={"max_bytes": "1MiB"})
    changed["sources"][0]["interval"] = 0.1  # the simulated source changes too
    changed["sources"].append({"type": "simulated", "name": "second", "interval": 1})
    changed["channels"][1]["detectors"][0]["lam"] = 0.2
    changed["influx"] = {"url": "http://127.0.0.1:8086", "database": "d"}
    new = load_config(write(tmp_path / "b.yaml", changed))
    plan = plan_reload(old, new)
    assert plan.sources_changed == ("workshop", "probe")
    assert plan.sources_added == ("second",)
    assert plan.channels_changed == (PROBE,)
    assert plan.influx
    assert not plan.notify
    assert plan.needs_restart == ("spool",)
    assert plan.config.spool == old.spool  # kept as it runs
    assert plan.config.influx == new.influx
    assert [s.name for s in plan.config.sources] == ["workshop", "probe", "second"]

    removed = load_config(write(tmp_path / "c.yaml", base(tmp_path)))
    assert plan_reload(old, removed).sources_removed == ("probe",)


def test_mqtt_sources_and_the_broker_need_a_restart(tmp_path: Path) -> None:
    mqtt = {"host": "127.0.0.1", "port": 1883}
    source = {"type": "mqtt", "name": "tasmota", "profile": "tasmota-sht3x"}
    old = load_config(write(tmp_path / "a.yaml", base(tmp_path, mqtt=mqtt)))
    data = base(tmp_path, mqtt={**mqtt, "port": 1884})
    data["sources"].append(source)
    new = load_config(write(tmp_path / "b.yaml", data))
    plan = plan_reload(old, new)
    assert plan.needs_restart == ("mqtt", "sources.tasmota")
    assert plan.config.mqtt == old.mqtt
    assert [s.name for s in plan.config.sources] == ["workshop"]  # not added: needs the link
    assert plan.applied == []


async def test_a_reload_restarts_only_what_changed(
    tmp_path: Path, serial_pair: SerialPair, running: list[Running]
) -> None:
    state = tmp_path / "state"
    path = write(tmp_path / "agent.yaml", base(state, serial_pair.device))
    run = Running(path)
    running.append(run)
    agent = await run.ready()
    await until(lambda: agent.registry.channels.get(ROOM) is not None, 15, "the workshop")
    probe_task = agent.supervisor.task("source:probe")
    await until(lambda: agent.sources[1].health.connected, 15, "the probe's port")  # type: ignore[attr-defined]
    await asyncio.to_thread(send_frames, serial_pair, 20)
    await until(lambda: agent.registry.channels.get(PROBE) is not None, 15, "the probe")
    room, probe = agent.registry.channels[ROOM], agent.registry.channels[PROBE]
    room_drift, probe_drift = agent.engine.drift(room), agent.engine.drift(probe)
    workshop_task = agent.supervisor.task("source:workshop")
    spool = agent.spool
    await until(lambda: agent.metrics.spool_committed > 0, 15, "a commit")
    committed = agent.metrics.spool_committed

    # The probe's detector and its reconnect setting change; the workshop does not.
    data = base(state, serial_pair.device)
    data["sources"][1]["reconnect_max"] = 1.0
    data["channels"][1]["detectors"][0]["lam"] = 0.3
    write(path, data)
    answer = await agent.reload()

    assert answer.accepted, answer
    assert answer.applied == ["sources.probe", f"channels.{PROBE}"]
    assert agent.engine.drift(room) is room_drift  # its windows, baseline, alert state
    new_drift = agent.engine.drift(probe)
    assert new_drift is not probe_drift
    assert new_drift is not None
    assert new_drift.detectors[0].lam == 0.3
    assert agent.supervisor.task("source:workshop") is workshop_task
    assert agent.supervisor.task("source:probe") is not probe_task
    assert agent.spool is spool
    assert agent.metrics.spool_committed >= committed
    last = room_drift.last_ns
    await until(lambda: room_drift.last_ns > last, 10, "the workshop's detectors fed on")
    source = agent.sources[1]
    await until(lambda: source.health.connected, 15, "the probe's port again")  # type: ignore[attr-defined]
    await asyncio.to_thread(send_frames, serial_pair, 5, 1.7e9 + 100)
    await until(lambda: source.health.frames == 5, 15, "frames after the reload")  # type: ignore[attr-defined]
    await run.stop()
    assert agent.cfg.sources[1].reconnect_max == 1.0  # type: ignore[union-attr]


async def test_a_removed_source_is_stopped_and_its_channels_forgotten(
    tmp_path: Path, serial_pair: SerialPair, running: list[Running]
) -> None:
    state = tmp_path / "state"
    path = write(tmp_path / "agent.yaml", base(state, serial_pair.device))
    run = Running(path)
    running.append(run)
    agent = await run.ready()
    await until(lambda: agent.sources[1].health.connected, 15, "the probe's port")  # type: ignore[attr-defined]
    await asyncio.to_thread(send_frames, serial_pair, 5)
    await until(lambda: PROBE in agent.registry.channels, 15, "the probe's channels")
    assert agent.status is not None
    await until(lambda: PROBE in agent.status.latest.values, 15, "the probe on the status page")

    write(path, base(state))
    answer = await agent.reload()

    assert answer.applied == ["sources.probe (removed)"]
    assert [s.name for s in agent.sources] == ["workshop"]
    assert agent.supervisor.task("source:probe") is None
    # No stale alarm for a device taken out of the config: its channels are gone.
    assert PROBE not in agent.registry.channels
    assert all(d.channel.name != PROBE for d in agent.engine)
    assert ROOM in agent.registry.channels
    assert PROBE not in agent.status.latest.values  # nor a last value on the status page


async def test_an_invalid_config_is_refused_and_nothing_changes(
    tmp_path: Path, running: list[Running]
) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    path = write(tmp_path / "agent.yaml", base(tmp_path / "state"))
    run = Running(path)
    running.append(run)
    agent = await run.ready()
    await until(lambda: ROOM in agent.registry.channels, 15, "the workshop")
    cfg, task = agent.cfg, agent.supervisor.task("source:workshop")

    path.write_text(path.read_text().replace("interval: 0.05", "interval: fast"))
    refused = await agent.reload()
    data = base(tmp_path / "state", "/dev/driftgate-no-such-port")
    data["sources"][1]["profile"] = "no-such-profile"
    write(path, data)
    unbuildable = await agent.reload()

    assert not refused.accepted
    assert refused.problems == [
        f"{path}:7: sources[0].interval: 'fast' is not a duration: use e.g. 30s, 5m, 2h, 7d"
    ]
    assert not unbuildable.accepted
    assert "no-such-profile" in unbuildable.problems[0]
    assert agent.cfg is cfg
    assert agent.supervisor.task("source:workshop") is task
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    refusals = [e for e in logs if e["event"] == "configuration refused: the running one stays"]
    assert [e["problems"] for e in refusals] == [refused.problems, unbuildable.problems]


async def test_changes_that_need_a_restart_are_kept_and_named(
    tmp_path: Path, running: list[Running]
) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    state = tmp_path / "state"
    path = write(tmp_path / "agent.yaml", base(state))
    run = Running(path)
    running.append(run)
    agent = await run.ready()
    await until(lambda: ROOM in agent.registry.channels, 15, "the workshop")

    status = agent.status
    write(path, base(state, site="elsewhere", spool={"max_bytes": "1MiB"},
                     self_metrics={"interval": "2s"}, status={"enabled": False}))  # fmt: skip
    answer = await agent.reload()

    assert answer.accepted
    assert answer.applied == ["self_metrics"]
    assert answer.needs_restart == ["site", "spool", "status"]
    # The status page keeps serving: its listener and logged-in sessions go only at a restart.
    assert agent.status is status
    assert agent.supervisor.task("status") is not None
    assert agent.cfg.status.enabled
    assert agent.cfg.site == "rl"
    assert agent.cfg.spool.max_bytes == 1 << 30
    assert agent.cfg.self_metrics.interval == 2.0
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    warned = [e for e in logs if e["event"] == "changes that need a restart were not applied"]
    assert warned[0]["keys"] == ["site", "spool", "status"]
    assert warned[0]["hint"] == "systemctl restart driftgate"


async def test_new_influx_settings_forward_what_the_spool_holds_to_the_new_place(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str], running: list[Running]
) -> None:
    server, db = influx_db
    second = db + "_b"
    await asyncio.to_thread(server.create_database, second)
    state = tmp_path / "state"
    influx = {"url": server.url, "database": db, "flush_interval": "100ms"}
    path = write(tmp_path / "agent.yaml", base(state, influx=influx))
    run = Running(path)
    running.append(run)
    agent = await run.ready()

    def points(database: str) -> int:
        rows = server.rows('SELECT count("humidity_rh") FROM "climate"', database)
        return int(rows[0]["count"]) if rows else 0

    try:
        await until(lambda: points(db) > 0, 20, "readings in the first database")
        write(path, base(state, influx={**influx, "database": second}))
        answer = await agent.reload()
        assert answer.applied == ["influx"]
        await until(lambda: points(second) > 0, 20, "readings in the new database")
        await run.stop()
        result = run.task.result()
        # Nothing left behind by the switch: all the spool held went to one of the two.
        assert result.pending_lines == 0
        assert result.metrics.forwarded == result.metrics.spool_appended
    finally:
        await asyncio.to_thread(server.drop_database, second)


async def test_new_notice_targets_and_routes_take_the_next_notice(
    tmp_path: Path, serial_pair: SerialPair, running: list[Running]
) -> None:
    receiver = Receiver()
    receiver.failing = False
    await receiver.start()
    try:
        state = tmp_path / "state"
        data = base(state, serial_pair.device)
        # A spec band the probe's ~50 %RH is far outside: an alarm at the first readings.
        data["channels"][1]["limits"] = {"high_warn": 20, "high_alarm": 30}
        path = write(tmp_path / "agent.yaml", data)
        run = Running(path)
        running.append(run)
        agent = await run.ready()
        write(path, {**data, "notify": {
            "targets": [{"type": "webhook", "name": "mes", "url": receiver.url}],
            "routes": [{"name": "all", "to": ["mes"], "rate_limit": None}]}})  # fmt: skip
        answer = await agent.reload()
        assert answer.applied == ["notify"]
        assert "notify:mes" in agent.supervisor.names("notify:")
        await until(lambda: agent.sources[1].health.connected, 15, "the probe's port")  # type: ignore[attr-defined]
        await asyncio.to_thread(send_frames, serial_pair, 5)
        await until(lambda: bool(receiver.got), 20, "the notice at the new webhook")
        assert receiver.got[0][1]["channel"] == PROBE
    finally:
        await receiver.stop()


def test_driftgate_reload_waits_for_the_agents_answer(tmp_path: Path) -> None:
    """`driftgate reload` (the unit's ExecReload=) sends SIGHUP and waits for the agent's answer
    in $RUNTIME_DIRECTORY: exit 0 once applied, 2 with the problems when refused."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    path = write(tmp_path / "agent.yaml", base(tmp_path / "state"))
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime), "PYTHONUNBUFFERED": "1"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("w"),
    )  # fmt: skip
    try:
        wait_for((tmp_path / "state" / "spool.sqlite").exists, 30, "the agent")

        def reload() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "agent", "reload", "--pid", str(agent.pid)],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        write(path, base(tmp_path / "state", self_metrics={"interval": "5s"}))
        ok = reload()
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == "configuration reloaded; applied: self_metrics\n"
        path.write_text(path.read_text() + "bogus: 1\n")
        refused = reload()
        assert refused.returncode == 2
        assert f"{path}:" in refused.stderr
        assert "bogus: unknown key 'bogus'" in refused.stderr
        assert refused.stderr.endswith("configuration refused: the running one stays\n")
        assert agent.poll() is None  # SIGHUP did not end it
        answer = read_answer(runtime / ANSWER_FILE)
        assert answer is not None
        assert answer.pid == agent.pid
        assert answer.generation == 2
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0


async def test_a_sighup_while_the_process_starts_is_kept_for_the_agent(tmp_path: Path) -> None:
    """Imports and building take seconds on a Pi: a SIGHUP then must neither end the process
    (its default action) nor be lost."""
    previous = signal.getsignal(signal.SIGHUP)
    try:
        hold_sighup()
        os.kill(os.getpid(), signal.SIGHUP)
        path = write(tmp_path / "agent.yaml", base(tmp_path / "state"))
        agent = Agent(load_config(path), reload_config=lambda: load_config(path))
        task = asyncio.create_task(agent.run())  # handle_signals: takes SIGHUP over
        await until(lambda: agent.reload_attempts == 1, 30, "the held reload")
        agent.stop_event.set()
        await asyncio.wait_for(task, 20)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert not sighup_held()
