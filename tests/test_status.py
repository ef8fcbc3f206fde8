"""The status page served by a running agent, over real HTTP on 127.0.0.1: the floor and its
JSON, live updates by server-sent events, /healthz and /metrics, the actions (acknowledge,
baseline capture) and what guards them (login, CSRF token, same-site Origin, a line's PIN,
the lockout), the audit log, `driftgate status` and `driftgate users`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from mailserver import self_signed
from servers import free_port
from structlog.testing import capture_logs
from waiting import until

from agent.backoff import Backoff
from agent.cli import main as cli_main
from agent.config import config_from_dict, load_config
from agent.drift.alerts import AlertEvent, Level
from agent.errors import ConfigError
from agent.incidents.store import read_incidents, store_path
from agent.metrics import AgentMetrics
from agent.reading import Channel
from agent.runtime.agent import Agent
from agent.web.auth import UsersFile
from agent.web.prometheus import GAUGES

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
PIN_L1 = "4711"
MINUTE = 60_000_000_000

CHANNELS = {  # name: (label, unit, zone, line)
    "edge_paint.humidity": ("Edge paint room humidity", "%RH", "edge_paint", ""),
    "sewing.m02.tension": ("Sewing machine M02 thread tension", "cN", "sewing", "L1"),
    "sewing.m05.tension": ("Sewing machine M05 thread tension", "cN", "sewing", "L2"),
}


@dataclass
class Running:
    """An agent with its status page, and what the tests feed it."""

    agent: Agent
    url: str
    state: Path
    channels: dict[str, Channel]

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def readings(self, name: str, values: list[float], start_ns: int) -> None:
        """Readings one minute apart, judged at once."""
        ch = self.channels[name]
        for i, x in enumerate(values):
            self.agent.pipeline.ingest(ch, start_ns + i * MINUTE, x)
        self.agent.pipeline.process()

    def incident(self, name: str, level: Level = Level.ALARM) -> str:
        """Open an incident on a channel (a limit event); its id."""
        ch = self.channels[name]
        now = self.agent.incident_clock()
        self.agent.pipeline.alert(
            AlertEvent(
                ts_ns=now,
                channel=ch,
                detector="limit",
                transition="raised",
                level=level,
                value=62.0,
                baseline=60.0,
                delta=2.0,
                rate_per_h=math.nan,
                since_ns=now,
                baseline_note="upper alarm limit",
                message=f"{level.label.upper()}: {ch.label} is above its upper limit",
            )
        )
        return self.agent.incidents.manager.open[name].id

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def config(state: Path, **status: Any) -> dict[str, Any]:
    return {
        "site": "atelier-nord",
        "gateway": "gw-floor2",
        "timezone": "Europe/Paris",
        "state_dir": str(state),
        "status": {"listen": "127.0.0.1:0", **status},
        "channels": [
            {
                "name": "edge_paint.humidity",
                "label": "Edge paint room humidity",
                "limits": {"low_warn": 40, "high_warn": 58, "high_alarm": 62},
            }
        ],
    }


@contextlib.asynccontextmanager
async def running(data: dict[str, Any], *, channels: bool = True) -> AsyncIterator[Running]:
    agent = Agent(config_from_dict(data))
    task = asyncio.create_task(agent.run(handle_signals=False))
    try:
        assert agent.status is not None
        await asyncio.wait_for(agent.status.bound.wait(), 10)
        made: dict[str, Channel] = {}
        for name, (label, unit, zone, line) in CHANNELS.items() if channels else ():
            kind = "tension" if unit == "cN" else "climate"
            tags = {"zone": zone, **({"line": line} if line else {})}
            made[name] = agent.registry.add(
                Channel(
                    name=name,
                    measurement=kind,
                    field="value",
                    unit=unit,
                    kind=kind,
                    label=label,
                    tags=tags,
                )
            )
        yield Running(agent, agent.status.url, Path(data["state_dir"]), made)
    finally:
        agent.stop_event.set()
        await asyncio.wait_for(task, 20)


@pytest_asyncio.fixture
async def floor(tmp_path: Path) -> AsyncIterator[Running]:
    users = UsersFile(tmp_path / "status-users")
    users.put("marie", PASSWORD)
    users.put("@L1", PIN_L1)
    async with running(config(tmp_path)) as r:
        yield r


def client() -> aiohttp.ClientSession:
    # unsafe: keep the cookies a server at an IP address (127.0.0.1) sets
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(
    http: aiohttp.ClientSession,
    r: Running,
    name: str = "marie",
    secret: str = PASSWORD,
    **form: str,
) -> aiohttp.ClientResponse:
    async with http.post(
        r.url + "login",
        data={"kind": "password", "name": name, "secret": secret, **form},
        headers={"Origin": r.origin},
        allow_redirects=False,
    ) as resp:
        await resp.read()
        return resp


async def csrf_of(http: aiohttp.ClientSession, r: Running) -> str:
    async with http.get(r.url) as resp:
        page = await resp.text()
    found = re.search(r'<meta name="csrf" content="([^"]+)">', page)
    assert found, "a logged-in page carries its CSRF token"
    return found[1]


async def ack(
    http: aiohttp.ClientSession,
    r: Running,
    incident: str,
    headers: dict[str, str],
    **form: str,
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{r.url}incidents/{incident}/ack", data=form, headers=headers, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp


# -- the configuration -------------------------------------------------------------------------


def test_status_section_refuses_what_cannot_listen_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "s",
                "gateway": "g",
                "state_dir": str(tmp_path),
                "status": {
                    "listen": "gateway.local:8765",
                    "session": "1s",
                    "tls_cert_file": str(path),
                },
            },
            sort_keys=False,
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    assert re.search(
        r"agent\.yaml:\d+: status\.listen: 'gateway\.local:8765': 'gateway\.local'"
        r" is not an IP address",
        text,
    ), text
    assert "status.session: 1 s is too short: at least 5 min" in text
    path.write_text(
        yaml.safe_dump(
            {
                "site": "s",
                "gateway": "g",
                "state_dir": str(tmp_path),
                "status": {"tls_cert_file": str(path)},
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "status.tls_key_file: tls_cert_file needs tls_key_file too" in caught.value.problems[0]
    cfg = config_from_dict({"site": "s", "gateway": "g", "status": {"listen": "[::1]:0"}})
    assert cfg.status.address == ("::1", 0)
    assert config_from_dict({"site": "s", "gateway": "g"}).status.listen == "127.0.0.1:8765"


def test_a_page_open_on_the_lan_without_tls_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "s",
                "gateway": "g",
                "state_dir": str(tmp_path),
                "status": {"listen": "0.0.0.0:8765"},
            }
        )
    )
    warnings = [str(w) for w in load_config(path).warnings]
    assert any(
        "status.listen: warning: status page logins sent over plain http" in w for w in warnings
    ), warnings


# -- reading the floor -------------------------------------------------------------------------


async def test_every_channel_is_listed_with_its_state_and_incidents_come_first(
    floor: Running,
) -> None:
    t0 = floor.agent.incident_clock() - 30 * MINUTE
    floor.readings("edge_paint.humidity", [50.0, 50.5, 51.2], t0)
    floor.readings("sewing.m02.tension", [120.0, 121.0], t0)
    incident = floor.incident("sewing.m05.tension")
    async with client() as http:
        async with http.get(floor.url + "api/status") as resp:
            status = await resp.json()
        async with http.get(floor.url) as resp:
            page = await resp.text()
    by_name = {c["name"]: c for c in status["channels"]}
    assert set(by_name) == set(floor.agent.registry.channels)
    assert by_name["edge_paint.humidity"]["value_text"] == "51.2 %RH"
    assert (by_name["edge_paint.humidity"]["state"], by_name["edge_paint.humidity"]["word"]) == (
        "ok",
        "normal",
    )
    assert by_name["edge_paint.humidity"]["band"]["what"] == "spec"
    assert (by_name["sewing.m05.tension"]["state"], by_name["sewing.m05.tension"]["word"]) == (
        "alarm",
        "alarm",
    )
    assert by_name["sewing.m05.tension"]["incident"] == incident
    assert (by_name["sewing.m02.tension"]["state"]) == "ok"
    (listed,) = status["incidents"]
    assert (listed["id"], listed["level"], listed["acknowledged"]) == (incident, "alarm", False)
    for name, ch in by_name.items():  # each channel with its colour class and its word
        card = re.search(
            rf'<a class="card st-(\w+)" href="[^"]+" data-channel="{re.escape(name)}"'
            rf'>.*?<span class="state st-\1">([^<]+)</span>',
            page,
        )
        assert card, f"{name} is not on the page"
        assert (card[1], card[2]) == (ch["state"], ch["word"])
    assert page.index(f'data-incident="{incident}"') < page.index('id="floor"')
    assert 'name="csrf"' in page
    assert '<meta name="csrf"' not in page


async def test_the_kiosk_has_no_controls_and_the_channel_page_its_chart(floor: Running) -> None:
    floor.incident("edge_paint.humidity")
    t0 = floor.agent.incident_clock() - 90 * MINUTE
    floor.readings("edge_paint.humidity", [50.0 + 0.01 * i for i in range(90)], t0)
    assert floor.agent.history is not None
    await floor.agent.history.flush()
    async with client() as http:
        async with http.get(floor.url + "kiosk") as resp:
            kiosk = await resp.text()
        async with http.get(floor.url + "channels/edge_paint.humidity?days=1") as resp:
            channel = await resp.text()
        async with http.get(floor.url + "kiosk?zone=sewing") as resp:
            one_room = await resp.text()
        async with http.get(floor.url + "channels/no.such") as resp:
            assert resp.status == 404
    assert "Edge paint room humidity" in kiosk
    shown = set(re.findall(r'<div class="card st-\w+" data-channel="([^"]+)"', one_room))
    assert shown == {"sewing.m02.tension", "sewing.m05.tension"}  # a wall screen per room
    assert 'data-incident="' in one_room  # incidents of the whole gateway stay on every wall
    assert not re.search(r"<(form|button|input|select|textarea)\b|<a\s", kiosk), kiosk
    assert 'class="chart"' in channel
    assert 'class="chart-mean" d="M' in channel
    assert "spec band: low warn 40.0 %RH, high warn 58.0 %RH, high alarm 62.0 %RH" in channel
    assert 'action="/channels/edge_paint.humidity/capture"' in channel


async def test_an_incident_reaches_an_open_event_stream_at_once(floor: Running) -> None:
    async with client() as http, http.get(floor.url + "events") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        got: list[tuple[str, str]] = []

        async def read() -> None:
            event = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    got.append((event, line[6:]))

        reader = asyncio.create_task(read())
        try:
            await until(lambda: any(e == "incidents" for e, _ in got), 10, "the first state")
            assert not any("data-incident" in d for e, d in got if e == "incidents")
            incident = floor.incident("sewing.m05.tension")
            await until(
                lambda: any(f'data-incident="{incident}"' in d for e, d in got if e == "incidents"),
                10,
                "the incident",
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


# -- the actions and what guards them --------------------------------------------------------


async def test_acknowledging_needs_a_login_a_token_and_this_sites_origin(floor: Running) -> None:
    incident = floor.incident("edge_paint.humidity")
    inc = floor.agent.incidents.manager.by_id[incident]
    origin = {"Origin": floor.origin}
    async with client() as http:
        # Without a login: to the login page, nothing done.
        resp = await ack(http, floor, incident, origin, csrf="x")
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/login?")
        # A wrong password: refused, no session.
        resp = await login(http, floor, secret="wrong password")
        assert resp.status == 401
        assert "driftgate_session" not in {c.key for c in http.cookie_jar}
        # A login from another site's page is refused too.
        async with http.post(
            floor.url + "login",
            data={"name": "marie", "secret": PASSWORD},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
        resp = await login(http, floor)
        assert resp.status == 303
        token = await csrf_of(http, floor)
        forged = [
            (origin, {}),  # no token
            (origin, {"csrf": "not-the-token"}),  # a wrong token
            ({"Origin": "http://evil.example"}, {"csrf": token}),  # another site's page
            ({}, {"csrf": token}),  # no Origin, no Referer
            ({"Referer": "http://evil.example/x"}, {"csrf": token}),
        ]
        for headers, form in forged:
            resp = await ack(http, floor, incident, headers, **form)
            assert resp.status == 403, (headers, form)
            assert inc.state == "open"
        resp = await ack(http, floor, incident, origin, csrf=token, note="dehumidifier on")
        assert resp.status == 303
        told = inc.seq
        resp = await ack(http, floor, incident, origin, csrf=token)  # a second click
        assert resp.status == 303
        assert inc.seq == told  # not acknowledged (and told to every route) twice
    assert (inc.state, inc.acked_by, inc.acked_note) == ("acknowledged", "marie", "dehumidifier on")
    await floor.agent.incidents.store.flush()
    stored = {i.id: i for i in read_incidents(store_path(floor.state))}
    assert stored[incident].acked_by == "marie"
    results = [(e["action"], e["who"], e["result"]) for e in floor.audit()]
    assert results == [
        ("acknowledge", "", "refused: not logged in"),
        ("login", "marie", "refused: wrong name, password or PIN"),
        ("login", "", "refused: request from another site"),
        ("login", "marie", "done"),
        ("acknowledge", "marie", "refused: missing or wrong CSRF token"),
        ("acknowledge", "marie", "refused: missing or wrong CSRF token"),
        ("acknowledge", "marie", "refused: request from another site (Origin http://evil.example)"),
        ("acknowledge", "marie", "refused: request from another site (Origin missing)"),
        ("acknowledge", "marie", "refused: request from another site (Origin missing)"),
        ("acknowledge", "marie", "done"),
        ("acknowledge", "marie", "refused: already acknowledged by marie"),
    ]
    entry = floor.audit()[-2]
    assert (entry["target"], entry["via"], entry["detail"]) == (
        incident,
        "password:marie",
        "dehumidifier on",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["time"])
    assert PASSWORD not in (floor.state / "audit.log").read_text()


async def test_a_line_pin_acts_on_its_own_line_only(floor: Running) -> None:
    mine = floor.incident("sewing.m02.tension")  # line L1
    theirs = floor.incident("sewing.m05.tension")  # line L2
    manager = floor.agent.incidents.manager
    async with client() as http:
        resp = await login(http, floor, kind="pin", line="L1", name="Luca", secret="0000")
        assert resp.status == 401
        async with http.post(
            floor.url + "login",
            data={
                "kind": "pin",
                "line": "L1",
                "name": "Luca",
                "secret": PIN_L1,
            },
            headers={"Origin": floor.origin},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        token = await csrf_of(http, floor)
        origin = {"Origin": floor.origin}
        assert (await ack(http, floor, theirs, origin, csrf=token)).status == 403
        assert manager.by_id[theirs].state == "open"
        assert (await ack(http, floor, mine, origin, csrf=token)).status == 303
    assert manager.by_id[mine].acked_by == "Luca (line L1 PIN)"
    refused = next(e for e in floor.audit() if e["action"] == "acknowledge")
    assert refused["result"] == "refused: the PIN of line L1 does not act on line L2"
    assert refused["via"] == "pin:L1"


async def test_failed_logins_lock_the_address_out_for_a_while(floor: Running) -> None:
    async with client() as http:
        for _ in range(5):
            assert (await login(http, floor, secret="guess")).status == 401
        resp = await login(http, floor)  # the right password, but too late
        assert resp.status == 429
    assert floor.audit()[-1]["result"] == "refused: too many failed logins"


async def test_a_baseline_capture_is_confirmed_before_it_is_locked(floor: Running) -> None:
    t0 = floor.agent.incident_clock() - 120 * MINUTE
    floor.readings("sewing.m02.tension", [120.0 + (i % 5) for i in range(120)], t0)
    assert floor.agent.history is not None
    await floor.agent.history.flush()
    path = "channels/sewing.m02.tension/capture"
    baselines = floor.state / "baselines.json"
    async with client() as http:
        await login(http, floor)
        token = await csrf_of(http, floor)
        headers = {"Origin": floor.origin}
        form = {"csrf": token, "last": "1h", "note": "sample approval SKU 4711"}
        async with http.post(floor.url + path, data=form, headers=headers) as resp:
            assert resp.status == 200
            asked = await resp.text()
        assert "Capture this baseline?" in asked
        assert "mean 122 cN" in asked
        assert "over 60 readings" in asked
        assert not baselines.exists()  # nothing locked before the confirmation
        hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', asked))
        assert hidden["confirm"] == "yes"
        assert hidden["last"] == "1h"
        async with http.post(
            floor.url + path, data=hidden, headers=headers, allow_redirects=False
        ) as resp:
            assert resp.status == 303
        async with http.post(
            floor.url + path, data={**form, "last": "90d"}, headers=headers
        ) as resp:
            assert resp.status == 200  # a span past the history is the same question, asked
        async with http.post(
            floor.url + path, data={**form, "last": "", "from": "", "to": ""}, headers=headers
        ) as resp:
            assert resp.status == 400
            assert "choose a span" in await resp.text()
    stored = json.loads(baselines.read_text())["sewing.m02.tension"]
    assert (stored["source"], stored["n"], stored["note"]) == (
        "captured",
        60,
        "sample approval SKU 4711",
    )
    await until(
        lambda: (
            floor.agent.engine.drift(floor.channels["sewing.m02.tension"]).baseline.locked
            is not None
        ),
        5,
        "the agent's detectors to take it",
    )
    done = [e for e in floor.audit() if e["action"] == "baseline capture"]
    assert [(e["who"], e["result"], e["target"]) for e in done] == [
        ("marie", "done", "sewing.m02.tension")
    ]
    assert "60 readings" in done[0]["detail"]


async def test_no_secret_is_ever_on_a_page(tmp_path: Path) -> None:
    secrets = {"influx": "influx-Pa55-word", "mqtt": "mqtt-Pa55-word"}
    for name, secret in secrets.items():
        (tmp_path / name).write_text(secret)
        (tmp_path / name).chmod(0o600)
    data = config(tmp_path / "state")
    data["influx"] = {
        "url": f"http://127.0.0.1:{free_port()}",
        "database": "d",
        "username": "u",
        "password_file": str(tmp_path / "influx"),
    }
    data["mqtt"] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "username": "u",
        "password_file": str(tmp_path / "mqtt"),
    }
    users = UsersFile(tmp_path / "state" / "status-users")
    users.put("marie", PASSWORD)
    stored = users.logins()["marie"].stored
    async with running(data) as r, client() as http:
        r.incident("edge_paint.humidity")
        await login(http, r)
        async with http.get(r.url + "events") as stream:
            first = await stream.content.read(2000)
        bodies = [first.decode()]
        for path in (
            "",
            "kiosk",
            "channels/edge_paint.humidity",
            "login",
            "api/status",
            "healthz",
            "metrics",
            "static/status.js",
        ):
            async with http.get(r.url + path) as resp:
                bodies.append(await resp.text())
        session = next(c.value for c in http.cookie_jar if c.key == "driftgate_session")
    for body in bodies:
        for secret in (*secrets.values(), PASSWORD, stored, stored.split("$")[-1], session):
            assert secret not in body


# -- health, metrics, the port ------------------------------------------------------------------


async def test_healthz_answers_503_with_the_reason_once_a_source_is_down(tmp_path: Path) -> None:
    data = config(tmp_path, health_grace="1s")
    async with running(data) as r, client() as http, http.get(r.url + "healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok\n")
    data["sources"] = [
        {
            "type": "serial",
            "name": "probe",
            "profile": "sht4x-serial",
            "port": str(tmp_path / "no-such-tty"),
            "zone": "edge_paint",
        }
    ]
    data["influx"] = {
        "url": f"http://127.0.0.1:{free_port()}",
        "database": "d",
        "timeout": "1s",
        "max_backoff": "1s",
    }
    async with running(data, channels=False) as r, client() as http:
        r.agent.spool.extend(["m v=1 1"])
        text = ""

        async def unhealthy() -> bool:
            nonlocal text
            async with http.get(r.url + "healthz") as resp:
                text = await resp.text()
                return resp.status == 503 and "InfluxDB" in text and "probe" in text

        for _ in range(100):
            if await unhealthy():
                break
            await asyncio.sleep(0.1)
        assert text.startswith("unhealthy: serial source probe not connected for ")
        assert "InfluxDB has not taken a write for " in text
        async with http.get(r.url + "metrics") as resp:
            metrics = await resp.text()
        assert 'driftgate_healthy{site="atelier-nord",gateway="gw-floor2"} 0' in metrics
        assert re.search(r'driftgate_source_connected\{[^}]*source="probe"\} 0', metrics)


async def test_metrics_are_the_self_metrics_in_the_prometheus_format(floor: Running) -> None:
    floor.readings("edge_paint.humidity", [50.0, 51.0], floor.agent.incident_clock())
    async with client() as http, http.get(floor.url + "metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    types = dict(re.findall(r"^# TYPE (\S+) (counter|gauge)$", text, re.M))
    labels = '{site="atelier-nord",gateway="gw-floor2"}'
    for field in AgentMetrics().fields():
        name = f"driftgate_{field}" + ("" if field in GAUGES else "_total")
        assert types.get(name) == ("gauge" if field in GAUGES else "counter"), name
        assert re.search(rf"^{name}{re.escape(labels)} \S+$", text, re.M), name
    assert f"driftgate_readings_in_total{labels} 2" in text
    assert f"driftgate_channels{labels} 3" in text
    for line in text.splitlines():  # every sample line parses: name{labels} number
        if not line.startswith("#"):
            assert re.fullmatch(r'[a-z0-9_]+\{(\w+="[^"]*",?)+\} (-?[\d.e+-]+|NaN)', line), line


def test_the_gauges_of_metrics_are_the_gauges_of_the_schema() -> None:
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    part = text.split("### `driftgate_agent`", 1)[1].split("### ", 1)[0]
    marked = set(re.findall(r"^\| field \| `(\w+)` \| \w+ \| \*gauge\*", part, re.M))
    assert marked == GAUGES


async def test_a_taken_port_is_tried_again_while_the_agent_works_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.web.server.STATUS_LISTEN", Backoff(base=0.1, factor=1.0, cap=0.1))
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    agent = Agent(config_from_dict(config(tmp_path, listen=f"127.0.0.1:{port}")))
    with capture_logs() as logs:
        task = asyncio.create_task(agent.run(handle_signals=False))
        try:
            await asyncio.sleep(0.5)
            assert agent.status is not None
            assert not agent.status.bound.is_set()
            assert not task.done()
            assert agent.supervisor.restarts == 0
            holder.close()
            await asyncio.wait_for(agent.status.bound.wait(), 10)
            assert agent.status.port == port
        finally:
            holder.close()
            agent.stop_event.set()
            await asyncio.wait_for(task, 20)
    told = [(e["log_level"], e["event"]) for e in logs if "status page" in e["event"]]
    assert told[0] == ("warning", "status page cannot listen")  # once, then quietly
    assert set(told[1:-1]) <= {("debug", "status page cannot listen")}
    assert told[-1] == ("info", "status page listening")
    # The demo's agent takes another port instead.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    agent = Agent(
        config_from_dict(config(tmp_path, listen=f"127.0.0.1:{port}")), status_fallback=True
    )
    task = asyncio.create_task(agent.run(handle_signals=False))
    try:
        assert agent.status is not None
        await asyncio.wait_for(agent.status.bound.wait(), 10)
        assert agent.status.port not in (port, 0)
    finally:
        holder.close()
        agent.stop_event.set()
        await asyncio.wait_for(task, 20)


# -- the command line --------------------------------------------------------------------------


async def test_driftgate_status_prints_the_running_agents_screen(
    floor: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    floor.readings("edge_paint.humidity", [50.0, 51.2], floor.agent.incident_clock())
    incident = floor.incident("sewing.m05.tension")
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, ["status", "--url", floor.url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("driftgate atelier-nord / gw-floor2 ")
    assert "Open incidents (1)" in out
    assert f"[{incident}]" in out
    assert re.search(r"edge_paint +Edge paint room humidity +51\.2 %RH +learning +normal ", out)
    assert re.search(r"sewing +Sewing machine M05 thread tension +– +learning +alarm ", out)
    assert re.search(r"spool: \d lines waiting, kept: no InfluxDB configured", out), out
    assert f"The page: {floor.url}" in out
    assert await asyncio.to_thread(cli_main, ["status", "--url", floor.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["incidents"][0]["id"] == incident
    # No agent at the address a config names: a clear message, exit 1.
    idle = tmp_path / "idle.yaml"
    idle.write_text(
        yaml.safe_dump(
            {"site": "s", "gateway": "g", "status": {"listen": f"127.0.0.1:{free_port()}"}}
        )
    )
    assert await asyncio.to_thread(cli_main, ["status", "-c", str(idle)]) == 1
    err = capsys.readouterr().err
    assert "driftgate status: no agent answers at http://127.0.0.1:" in err
    assert "systemctl status driftgate" in err


def test_users_are_added_as_hashes_listed_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_main(["users", "add", "marie", "--password-stdin", "--state-dir", state]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("4711\n"))
    assert cli_main(["users", "pin", "L2", "--pin-stdin", "--state-dir", state]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_main(["users", "add", "bob", "--password-stdin", "--state-dir", state]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("12\n"))
    assert cli_main(["users", "pin", "L3", "--pin-stdin", "--state-dir", state]) == 1
    text = (tmp_path / "status-users").read_text()
    assert PASSWORD not in text
    assert "4711" not in text
    assert re.search(r"^marie:scrypt\$16384\$8\$1\$", text, re.M)
    assert (tmp_path / "status-users").stat().st_mode & 0o777 == 0o640
    capsys.readouterr()
    assert cli_main(["users", "list", "--state-dir", state]) == 0
    listed = capsys.readouterr().out
    assert "1 people, 1 line PINs" in listed
    assert "  marie" in listed
    assert "@L2" in listed
    assert "scrypt" not in listed
    # A new file takes its directory's group (/etc/driftgate is root:driftgate): the agent
    # reads it, other accounts do not; a file that every account could read is warned about.
    group = tmp_path / "etc"
    group.mkdir()
    os.chown(group, -1, 1)
    UsersFile(group / "status-users").put("marie", PASSWORD)
    assert (group / "status-users").stat().st_gid == 1
    (tmp_path / "status-users").chmod(0o644)
    assert cli_main(["check-config", "-c", str(_config_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "status.users_file: warning: secret file readable by every user" in out, out
    assert cli_main(["users", "remove", "@L2", "--state-dir", state]) == 0
    assert cli_main(["users", "remove", "nobody", "--state-dir", state]) == 1
    assert set(UsersFile(tmp_path / "status-users").logins()) == {"marie"}


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"site": "s", "gateway": "g", "state_dir": str(tmp_path)}))
    return path


async def test_the_page_is_served_over_https_with_a_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = self_signed(tmp_path)
    data = config(tmp_path / "state", tls_cert_file=str(cert), tls_key_file=str(key))
    users = UsersFile(tmp_path / "state" / "status-users")
    users.put("marie", PASSWORD)
    async with running(data) as r, client() as http:
        assert r.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with http.get(r.url + "healthz", ssl=trusted) as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        async with http.post(
            r.url + "login",
            data={"kind": "password", "name": "marie", "secret": PASSWORD},
            headers={"Origin": r.origin},
            ssl=trusted,
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        with pytest.raises(aiohttp.ClientError):  # plain http is not answered
            await http.get(r.url.replace("https://", "http://") + "healthz")
        # `driftgate status` asks the loopback address, which the certificate need not name.
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, ["status", "--url", r.url]) == 0
        assert f"The page: {r.url}" in capsys.readouterr().out
