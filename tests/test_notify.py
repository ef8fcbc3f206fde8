"""Notices reach people: routes with shifts in the site's time zone, quiet hours and rate limits;
a webhook that fails for a while gets every notice exactly once; a kill -9 loses none; the
incident board on MQTT shows a late subscriber what is open now."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from servers import MosquittoServer, free_port, require_binary
from waiting import until

from agent.backoff import Backoff
from agent.cli import main as cli_main
from agent.config import config_from_dict
from agent.context import ContextStore
from agent.drift.alerts import AlertEvent, Level
from agent.incidents.manager import IncidentManager
from agent.incidents.model import Notice
from agent.incidents.store import IncidentStore, read_incidents, store_path
from agent.metrics import AgentMetrics
from agent.notify.outbox import Outbox
from agent.notify.router import Router
from agent.notify.targets import make_target
from agent.reading import Channel
from agent.runtime.agent import Agent

PARIS = ZoneInfo("Europe/Paris")
EDGE = Channel(name="edge_paint.humidity", measurement="climate", field="humidity_rh", unit="%RH",
               kind="climate", label="Edge paint room humidity", affects="edge paint drying",
               tags={"zone": "edge_paint"})  # fmt: skip


def at(local: str) -> int:
    """A local Paris time as epoch ns."""
    return int(datetime.fromisoformat(local).replace(tzinfo=PARIS).timestamp() * 1e9)


def event(transition: str, level: Level, ts: int, detector: str = "limit") -> AlertEvent:
    return AlertEvent(
        ts_ns=ts, channel=EDGE, detector=detector, transition=transition, level=level,
        value=61.0, baseline=60.0, delta=1.0, rate_per_h=math.nan, since_ns=ts,
        baseline_note="upper alarm limit", message=f"{transition} {level.label}",
    )  # fmt: skip


def notify_cfg(**notify: Any) -> Any:
    return config_from_dict(
        {"site": "s1", "gateway": "gw1", "timezone": "Europe/Paris", "notify": notify}
    )


# -- routing ----------------------------------------------------------------------------------


def routed(cfg: Any, now: int, notice: Notice) -> list[tuple[str, str, int]]:
    router = Router(cfg.notify, PARIS, lambda: now)
    return [(d.target, d.recipient, d.due_ns) for d in router.deliveries(notice)]


def a_notice(level: str = "warn", transition: str = "opened", seq: int = 1) -> Notice:
    incident = {"id": "20261118-0001", "zone": "edge_paint", "kind": "climate",
                "channel": "edge_paint.humidity", "level": level, "peak": level,
                "state": "open", "label": "x", "action": "", "affects": "", "opened_ns": 0,
                "acked_by": "", "context": {}}  # fmt: skip
    return Notice(incident, transition, seq, 0, "sentence", "details")


SHIFTS = {
    "targets": [{"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x"}],
    "routes": [
        {
            "name": "supervisors",
            "match": {"zones": ["edge_paint"]},
            "shifts": [
                {"name": "morning", "days": "mon-fri", "start": "06:00", "end": "14:00",
                 "to": ["hook:morning-lead"]},
                {"name": "afternoon", "days": "mon-fri", "start": "14:00", "end": "22:00",
                 "to": ["hook:afternoon-lead"]},
                {"name": "night", "days": "mon-fri", "start": "22:00", "end": "06:00",
                 "to": ["hook:night-lead"]},
            ],
            "to": ["hook:weekend-duty"],
        }
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("local", "who"),
    [
        ("2026-11-17T05:59", "night-lead"),  # Tuesday before 06:00: Monday's night shift
        ("2026-11-17T06:00", "morning-lead"),
        ("2026-11-17T13:59", "morning-lead"),
        ("2026-11-17T14:00", "afternoon-lead"),
        ("2026-11-17T22:00", "night-lead"),
        ("2026-11-21T03:00", "night-lead"),  # Saturday 03:00: Friday's night shift
        ("2026-11-21T10:00", "weekend-duty"),  # Saturday: no shift, the route's own `to`
        ("2026-11-23T05:00", "weekend-duty"),  # Monday 05:00: Sunday night has no shift
        ("2026-03-29T06:30", "weekend-duty"),  # the DST change in Paris falls on a Sunday
        ("2026-03-30T06:30", "morning-lead"),  # and Monday's 06:30 is local summer time
    ],
)
def test_the_shift_on_duty_gets_the_notice_in_the_sites_time_zone(local: str, who: str) -> None:
    cfg = notify_cfg(**SHIFTS)
    (delivery,) = routed(cfg, at(local), a_notice())
    assert delivery[1] == who


def test_quiet_hours_hold_warnings_till_morning_but_not_alarms() -> None:
    routes = [{"name": "r", "to": ["hook"], "quiet_hours": {"start": "22:00", "end": "06:00"}}]
    cfg = notify_cfg(targets=SHIFTS["targets"], routes=routes)
    night = at("2026-11-17T23:30")
    ((_, _, due),) = routed(cfg, night, a_notice("warn"))
    assert due == at("2026-11-18T06:00")
    ((_, _, due),) = routed(cfg, night, a_notice("alarm"))
    assert due == night
    ((_, _, due),) = routed(cfg, at("2026-11-18T07:00"), a_notice("warn"))
    assert due == at("2026-11-18T07:00")


def test_a_rate_limit_per_recipient_holds_the_excess() -> None:
    routes = [{"name": "r", "to": ["hook:a"], "rate_limit": {"count": 2, "per": "1h"}}]
    cfg = notify_cfg(targets=SHIFTS["targets"], routes=routes)
    now = at("2026-11-17T10:00")
    router = Router(cfg.notify, PARIS, lambda: now)
    dues = [router.deliveries(a_notice(seq=i))[0].due_ns for i in range(1, 5)]
    hour = 3600 * 10**9
    assert dues == [now, now, now + hour, now + hour]


def test_routes_match_zone_and_severity_and_clears_follow_the_opening() -> None:
    routes = [
        {"name": "alarms", "to": ["hook:manager"], "match": {"severity": "alarm"}},
        {"name": "sewing", "to": ["hook:sewing"], "match": {"zones": ["sewing"]}},
    ]
    cfg = notify_cfg(targets=SHIFTS["targets"], routes=routes)
    now = at("2026-11-17T10:00")
    assert routed(cfg, now, a_notice("warn")) == []
    assert [r[1] for r in routed(cfg, now, a_notice("alarm"))] == ["manager"]
    cleared = a_notice("alarm", "cleared")
    cleared.incident["level"] = "ok"  # the peak was alarm: who was told it opened hears it end
    assert [r[1] for r in routed(cfg, now, cleared)] == ["manager"]


def test_a_config_naming_unknown_targets_or_routes_is_refused() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        notify_cfg(routes=[{"name": "r", "to": ["nowhere"], "escalate_after": "1h",
                            "escalate_to": "boss"}])  # fmt: skip
    text = str(err.value)
    assert "notify.routes[0].to[0]: no target named 'nowhere'" in text
    assert "no route named 'boss'" in text


# -- delivery through a real HTTP server ------------------------------------------------------


class Receiver:
    """A real aiohttp server on 127.0.0.1 that fails while ``failing`` and records the rest."""

    def __init__(self) -> None:
        self.failing = True
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.failing:
            self.refused += 1
            return web.Response(status=503, text="maintenance")
        self.got.append((request.headers["Idempotency-Key"], await request.json()))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def test_a_webhook_that_fails_for_a_while_gets_every_notice_exactly_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    cfg = config_from_dict(
        {"site": "s1", "gateway": "gw1", "timezone": "Europe/Paris", "state_dir": str(tmp_path),
         "notify": {"targets": [{"type": "webhook", "name": "hook", "url": receiver.url}],
                    "routes": [{"name": "all", "to": ["hook"], "rate_limit": None}]}}
    )  # fmt: skip
    now = [at("2026-11-17T10:00")]
    store = IncidentStore(store_path(tmp_path))
    router = Router(cfg.notify, PARIS, lambda: now[0])
    manager = IncidentManager(cfg, ContextStore(None), lambda: now[0], zone=PARIS)
    fast = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.5)
    outbox = Outbox(store, router, [make_target(t) for t in cfg.notify.targets],
                    AgentMetrics(), backoff=fast)  # fmt: skip
    manager.saves.append(store.save)
    manager.listeners.append(outbox)
    manager.restore(await store.open())
    tasks = [asyncio.create_task(c) for c in (store.run(), outbox.watch(), outbox.work("hook"))]
    try:
        t0 = now[0]
        manager(event("raised", Level.WARN, t0))
        manager(event("escalated", Level.ALARM, t0 + 60 * 10**9))
        (inc,) = manager.by_id.values()
        manager.acknowledge(inc.id, "Marie")
        manager(event("cleared", Level.OK, t0 + 3600 * 10**9))
        await asyncio.sleep(1.0)  # failing all along: retried with backoff
        assert receiver.refused >= 2
        assert receiver.got == []
        receiver.failing = False
        await until(lambda: len(receiver.got) >= 4, 10)
        await asyncio.sleep(0.5)  # nothing more comes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        await outbox.close()
    keys = [k for k, _ in receiver.got]
    assert len(keys) == len(set(keys)) == 4  # every transition, exactly once
    assert [b["transition"] for _, b in receiver.got] == [
        "opened", "escalated", "acknowledged", "cleared"
    ]  # fmt: skip
    assert receiver.got[0][1]["sentence"].startswith("WARNING: Edge paint room humidity")
    assert all(b["id"] == inc.id for _, b in receiver.got)


def _agent_config(tmp: Path, url: str, *, sources: bool) -> Path:
    data: dict[str, Any] = {
        "site": "s1", "gateway": "gw1", "timezone": "Europe/Paris",
        "state_dir": str(tmp / "state"),
        "notify": {"targets": [{"type": "webhook", "name": "hook", "url": url,
                                "timeout": "2s"}],
                   "routes": [{"name": "all", "to": ["hook"], "rate_limit": None}]},
    }  # fmt: skip
    if sources:  # the demo workshop until M05's shift on day 10 opens an incident, and on
        data["sources"] = [{"type": "simulated", "name": "w", "speed": 2e5,
                            "start": "2026-11-01T00:00:00Z", "interval": 60}]  # fmt: skip
    path = tmp / ("run.yaml" if sources else "idle.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _pending(state: Path) -> int:
    path = store_path(state)
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_kill_9_with_notices_undelivered_then_restart_delivers_all(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.stop()  # the endpoint is down while the incidents open
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "-c",
        str(_agent_config(tmp_path, receiver.url, sources=True)),
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "first.err").open("w"), env=env,
    )  # fmt: skip
    try:
        await until(lambda: _pending(tmp_path / "state") >= 2, 60)
        assert _pending(tmp_path / "state") >= 2, (tmp_path / "first.err").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    incidents = read_incidents(store_path(tmp_path / "state"))
    assert incidents
    with sqlite3.connect(store_path(tmp_path / "state")) as conn:
        expected = {k for (k,) in conn.execute("SELECT key FROM deliveries")}
    await receiver.start()  # the endpoint is back
    receiver.failing = False
    again = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "-c",
        str(_agent_config(tmp_path, receiver.url, sources=False)),
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "second.err").open("w"), env=env,
    )  # fmt: skip
    try:
        await until(lambda: len(receiver.got) >= len(expected), 30)
        await asyncio.sleep(0.5)
    finally:
        again.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(again.wait(), 20) == 0
    keys = Counter(k for k, _ in receiver.got)
    assert set(keys) == expected, (tmp_path / "second.err").read_text()
    assert max(keys.values()) == 1


# -- the incident board on MQTT ---------------------------------------------------------------


async def retained(broker: MosquittoServer, topic: str) -> list[str]:
    """What a subscriber that connects now gets at once (retained messages only)."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("/usr/bin/mosquitto_sub", "mosquitto-clients"),
        "-h", broker.host, "-p", str(broker.port), "-t", topic, "-v", "--retained-only",
        "-W", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return [line for line in out.decode().splitlines() if line.strip()]


async def test_a_late_screen_sees_what_is_open_and_not_what_cleared(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    cfg = config_from_dict(
        {"site": "s1", "gateway": "gw1", "state_dir": str(tmp_path),
         "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}
    )  # fmt: skip
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(handle_signals=False))
    prefix = "driftgate/s1/gw1/incidents"
    try:
        assert agent.mqtt is not None
        await asyncio.wait_for(agent.mqtt.connected_event.wait(), 10)
        t0 = at("2026-11-17T10:00")
        room = Channel(name="cutting.humidity", measurement="climate", field="humidity_rh",
                       unit="%RH", kind="climate", label="Cutting room humidity",
                       tags={"zone": "cutting"})  # fmt: skip
        agent.pipeline.alert(event("raised", Level.WARN, t0))
        agent.pipeline.alert(AlertEvent(
            t0, room, "limit", "raised", Level.ALARM, 70.0, 65.0, 5.0, math.nan, t0, "", "x"
        ))  # fmt: skip
        manager = agent.incidents.manager
        edge_id = manager.open["edge_paint.humidity"].id
        room_id = manager.open["cutting.humidity"].id
        agent.pipeline.alert(AlertEvent(
            t0 + 60 * 10**9, room, "limit", "cleared", Level.OK, 60.0, 65.0, -5.0, math.nan,
            t0, "", "x",
        ))  # fmt: skip
        assert agent.publisher is not None
        await asyncio.wait_for(agent.publisher.drained.wait(), 10)
        late = await retained(mosquitto, f"{prefix}/+")
        assert [line.split(" ", 1)[0] for line in late] == [f"{prefix}/{edge_id}"]
        body = json.loads(late[0].split(" ", 1)[1])
        assert body["label"] == "Edge paint room humidity"
        assert body["severity"] == "warn"
        assert room_id != edge_id
        # An acknowledgement from a screen (or a phone) over MQTT.
        ack = await asyncio.create_subprocess_exec(
            require_binary("/usr/bin/mosquitto_pub", "mosquitto-clients"),
            "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1",
            "-t", f"{prefix}/{edge_id}/ack", "-m", json.dumps({"by": "Luca", "note": "on it"}),
        )  # fmt: skip
        assert await ack.wait() == 0
        await until(lambda: manager.by_id[edge_id].state == "acknowledged", 10)
        assert manager.by_id[edge_id].acked_by == "Luca"
        await asyncio.wait_for(agent.publisher.drained.wait(), 10)
        (line,) = await retained(mosquitto, f"{prefix}/+")
        acked = json.loads(line.split(" ", 1)[1])
        assert (acked["acknowledged_by"], acked["transition"]) == ("Luca", "acknowledged")
        # A broker that lost its retained messages (no persistence, a replaced broker): after
        # the reconnect the agent says again what is open, in the same shape.
        wipe = await asyncio.create_subprocess_exec(
            "/usr/bin/mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1",
            "-r", "-n", "-t", f"{prefix}/{edge_id}",
        )  # fmt: skip
        assert await wipe.wait() == 0
        assert await retained(mosquitto, f"{prefix}/+") == []
        said = agent.publisher.by_topic[f"{prefix}/{edge_id}"]
        await asyncio.to_thread(mosquitto.restart)
        await until(lambda: agent.mqtt is not None and agent.mqtt.health.reconnects == 1, 15)
        await until(lambda: agent.publisher.by_topic[f"{prefix}/{edge_id}"] > said, 10)  # type: ignore[union-attr]
        (again,) = await retained(mosquitto, f"{prefix}/+")
        assert json.loads(again.split(" ", 1)[1]) == acked
    finally:
        agent.stop_event.set()
        await asyncio.wait_for(task, 20)


# -- the CLI ----------------------------------------------------------------------------------


async def test_alerts_list_show_and_ack_from_the_cli_reach_the_running_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_from_dict({"site": "s1", "gateway": "gw1", "state_dir": str(tmp_path)})
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run(handle_signals=False))
    state = str(tmp_path)
    try:
        await asyncio.sleep(0.2)
        agent.core.context.set("zone", "edge_paint", {"lot": "LOT-2411-B"}, save=False)
        agent.pipeline.alert(event("raised", Level.ALARM, at("2026-11-17T10:00")))
        (inc,) = agent.incidents.manager.open.values()
        await agent.incidents.store.flush()
        capsys.readouterr()
        assert cli_main(["alerts", "list", "--state-dir", state]) == 0
        listed = capsys.readouterr().out
        assert inc.id in listed
        assert "Edge paint room humidity" in listed
        assert " alarm " in listed
        assert cli_main(["alerts", "ack", inc.id, "--by", "Marie", "--note", "fan on",
                         "--state-dir", state]) == 0  # fmt: skip
        await until(lambda: inc.state == "acknowledged", 5)
        assert (inc.acked_by, inc.acked_note) == ("Marie", "fan on")
        await agent.incidents.store.flush()
        capsys.readouterr()
        assert cli_main(["alerts", "show", inc.id, "--state-dir", state]) == 0
        told = capsys.readouterr().out
        assert f"{inc.id}  Edge paint room humidity: alarm, acknowledged by Marie" in told
        assert told.rstrip().endswith("deliveries  none (no route matched)")
        assert "    lot: LOT-2411-B\n" in told  # the lot to hold for inspection
        assert cli_main(["alerts", "show", inc.id, "--json", "--state-dir", state]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["acked_by"], shown["context"]) == ("Marie", {"lot": ["LOT-2411-B"]})
        assert cli_main(["alerts", "ack", "19990101-0001", "--by", "x", "--state-dir",
                         state]) == 1  # fmt: skip
    finally:
        agent.stop_event.set()
        await asyncio.wait_for(task, 20)


async def test_alerts_test_sends_a_sample_through_a_route(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.failing = False
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "site": "s1", "gateway": "gw1", "state_dir": str(tmp_path),
        "notify": {"targets": [{"type": "webhook", "name": "hook", "url": receiver.url}],
                   "routes": [{"name": "day", "to": ["hook:alice", "hook:bob"]}]},
    }))  # fmt: skip
    assert (
        await asyncio.to_thread(cli_main, ["alerts", "test", "--route", "day", "-c", str(path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "sent to hook:alice" in out
    assert sorted(b["recipient"] for _, b in receiver.got) == ["alice", "bob"]
    assert receiver.got[0][1]["sentence"].startswith("TEST from driftgate on s1/gw1")
