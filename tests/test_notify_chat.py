"""Chat and push notices through apprise, end to end: apprise's own HTTP requests go to a local
aiohttp server on 127.0.0.1, for its ``json://`` service (a generic JSON webhook) and its
``ntfy://`` service. The ntfy side is a stand-in for ntfy's HTTP API (a JSON publish to ``/``
answered like ntfy answers it), not an ntfy server. Also: a dead endpoint holds back no other
target, and the URLs (they hold tokens) appear in no log and no error."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mailserver import MailServer
from notices import Notices, Recording, Running, agent_config, delivery
from servers import free_port

from agent.config.notify import AppriseTarget
from agent.drift.alerts import Level
from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.notify.chat import Chat, ChatError
from agent.notify.email import Email
from agent.notify.outbox import NotTried, NotYet
from agent.notify.targets import make_target, origin_of

TOKEN = "tk_9f8e7d6c5b4a-secret"


class Endpoints:
    """A local HTTP server for apprise: ``/hook/<token>`` takes json://, ``/`` stands in for
    ntfy's publish API. ``fail_ntfy(n)`` answers the next n publishes with ntfy's 500 error."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.json: list[dict[str, Any]] = []
        self.ntfy: list[dict[str, Any]] = []
        self.ntfy_refused = 0
        self._fail = 0
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook/{token}", self._json)
        app.router.add_post("/", self._ntfy)
        # No access log: it is the receiving side, and its request lines hold the token.
        self.runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)

    async def _json(self, request: web.Request) -> web.Response:
        self.json.append({**await request.json(), "token": request.match_info["token"]})
        self.arrived.set()
        return web.Response(text="ok")

    async def _ntfy(self, request: web.Request) -> web.Response:
        data = await request.json()
        if self._fail > 0:
            self._fail -= 1
            self.ntfy_refused += 1
            # ntfy's error body: {"code": 50001, "http": 500, "error": "…"}
            return web.json_response(
                {"code": 50001, "http": 500, "error": "internal server error"}, status=500
            )
        self.ntfy.append(data)
        self.arrived.set()
        # ntfy answers a publish with the message it stored.
        stored = {"id": f"m{len(self.ntfy)}", "time": int(time.time()), "event": "message"}
        return web.json_response({**stored, **data})

    def fail_ntfy(self, count: int) -> None:
        self._fail = count

    async def start(self) -> Endpoints:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    def urls(self) -> str:
        return (f"# the floor's chat and phones\n"
                f"json://127.0.0.1:{self.port}/hook/{TOKEN}\n\n"
                f"ntfy://127.0.0.1:{self.port}/floor-alerts\n")  # fmt: skip


def chat_config(tmp_path: Path, urls: str, **extra: Any) -> Any:
    path = tmp_path / "chat-urls"
    path.write_text(urls)
    target = {"type": "apprise", "name": "chat", "urls_file": str(path), **extra}
    return agent_config(tmp_path, {"targets": [target],
                                   "routes": [{"name": "floor", "to": ["chat"],
                                               "rate_limit": None}]})  # fmt: skip


def the_chat(cfg: Any) -> Chat:
    target = cfg.notify.targets[0]
    assert isinstance(target, AppriseTarget)
    return unthrottled(Chat(target, origin_of(cfg)))


def unthrottled(chat: Any) -> Any:
    """apprise waits 5.5 s between two messages to one ntfy server (its courtesy to public
    services); the tests send many in a row to a local stand-in, so they turn that off."""
    for service in chat.services:
        for plugin in service.app:
            plugin.request_rate_per_sec = 0
    return chat


async def test_a_notice_reaches_a_json_webhook_and_ntfy_through_apprise(tmp_path: Path) -> None:
    endpoints = await Endpoints().start()
    try:
        cfg = chat_config(tmp_path, endpoints.urls())
        notices = Notices(cfg)
        notice = notices.event("edge_paint.humidity", Level.ALARM, value=53.1, baseline=50.1)
        chat = make_target(cfg.notify.targets[0], origin_of(cfg))
        assert isinstance(chat, Chat)
        assert await chat.send([delivery(notice, "floor:chat", target="chat")]) == [None]
    finally:
        await endpoints.stop()
    title = "ALARM: Edge paint room humidity (opened) — atelier-nord/gw1"
    (posted,) = endpoints.json
    assert posted["title"] == title
    assert posted["type"] == "failure"  # apprise's word for an alarm
    assert posted["token"] == TOKEN
    first, second = posted["message"].splitlines()
    assert first == notice.sentence
    assert second == (f'Incident 20261117-0001. To acknowledge: driftgate alerts ack '
                      f'20261117-0001 --by "your name" --state-dir {tmp_path}')  # fmt: skip
    (published,) = endpoints.ntfy
    assert published["topic"] == "floor-alerts"
    assert published["title"] == title
    assert published["message"] == posted["message"]


async def test_an_endpoint_away_then_failing_then_back_every_notice_arrives_once_in_order(
    tmp_path: Path,
) -> None:
    endpoints = Endpoints()  # not started: connections refused
    cfg = chat_config(tmp_path, endpoints.urls())
    notices = Notices(cfg)
    chat = Recording(the_chat(cfg))
    sentences = []
    async with Running(cfg, [chat]) as running:
        for name in ("edge_paint.humidity", "cutting.humidity"):
            notice = notices.event(name, Level.WARN, value=60, baseline=50)
            sentences.append(notice.sentence)
            running.tell(notice)
        failed = lambda r: isinstance(r[0], ChatError)  # noqa: E731
        error = (await chat.until(failed))[0]
        assert "line 2 (json://…)" in str(error)
        assert "line 4 (ntfy://…)" in str(error)
        await chat.until(failed)
        # Back, but ntfy fails twice more (HTTP 500) while the JSON webhook takes everything.
        endpoints.fail_ntfy(2)
        await endpoints.start()
        try:
            notice = notices.event("edge_paint.humidity", Level.ALARM, value=70, baseline=50)
            sentences.append(notice.sentence)
            running.tell(notice)
            states = await running.until_sent(3)
        finally:
            await endpoints.stop()
    assert set(states.values()) == {"sent"}
    assert endpoints.ntfy_refused == 2
    assert [m["message"].splitlines()[0] for m in endpoints.json] == sentences
    assert [m["message"].splitlines()[0] for m in endpoints.ntfy] == sentences


async def test_a_failing_url_is_retried_alone_and_holds_back_only_its_own_later_notices(
    tmp_path: Path,
) -> None:
    endpoints = await Endpoints().start()
    try:
        cfg = chat_config(tmp_path, endpoints.urls())
        notices = Notices(cfg)
        first = delivery(notices.event("edge_paint.humidity", Level.WARN, value=60, baseline=50))
        second = delivery(notices.event("cutting.humidity", Level.WARN, value=60, baseline=50))
        chat = the_chat(cfg)
        endpoints.fail_ntfy(1)
        results = await chat.send([first, second])
        assert isinstance(results[0], ChatError)
        assert "line 4 (ntfy://…) did not take it" in str(results[0])
        assert isinstance(results[1], NotTried)
        assert len(endpoints.json) == 2  # the webhook is not held back by ntfy
        assert endpoints.ntfy == []
        assert await chat.send([first, second]) == [None, None]
    finally:
        await endpoints.stop()
    assert len(endpoints.json) == 2  # the retry went to ntfy only
    assert [m["title"] for m in endpoints.ntfy] == [m["title"] for m in endpoints.json]


async def test_a_silent_endpoint_times_out(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = chat_config(tmp_path, f"json://127.0.0.1:{port}/hook/{TOKEN}\n", timeout="300ms")
        notice = Notices(cfg).event("edge_paint.humidity", Level.WARN, value=60, baseline=50)
        (error,) = await the_chat(cfg).send([delivery(notice)])
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert isinstance(error, ChatError)
    assert "did not answer within 0.3 s" in str(error)


async def test_a_dead_smtp_server_or_chat_endpoint_holds_back_no_other_target(
    tmp_path: Path,
) -> None:
    """One worker per target: with the SMTP server and one chat endpoint taking connections and
    never answering (long timeouts), the working chat endpoint gets the notice at once."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    dead = await asyncio.start_server(silent, "127.0.0.1", 0)
    dead_port = dead.sockets[0].getsockname()[1]
    endpoints = await Endpoints().start()
    try:
        (tmp_path / "dead-urls").write_text(f"json://127.0.0.1:{dead_port}/hook/x\n")
        (tmp_path / "live-urls").write_text(f"json://127.0.0.1:{endpoints.port}/hook/live\n")
        cfg = agent_config(tmp_path, {
            "targets": [
                {"type": "email", "name": "email", "host": "127.0.0.1", "port": dead_port,
                 "starttls": False, "sender": "driftgate@atelier-nord.example",
                 "to": ["supervisors@atelier-nord.example"], "batch_window": "10ms",
                 "timeout": "60s"},
                {"type": "apprise", "name": "dead", "urls_file": str(tmp_path / "dead-urls"),
                 "timeout": "60s"},
                {"type": "apprise", "name": "live", "urls_file": str(tmp_path / "live-urls")},
            ],
            "routes": [{"name": "all", "to": ["email", "dead", "live"], "rate_limit": None}],
        })  # fmt: skip
        targets = [Recording(make_target(t, origin_of(cfg))) for t in cfg.notify.targets]
        email, stuck, live = targets
        assert isinstance(email.inner, Email)
        notice = Notices(cfg).event("edge_paint.humidity", Level.ALARM, value=70, baseline=50)
        async with Running(cfg, targets) as running:
            running.tell(notice)
            states = await running.until_sent(1)
            assert len(accepted) >= 2  # both dead ones are connected and waiting
            assert email.rounds == [] or all(isinstance(e, NotYet) for e in email.rounds[0])
            assert stuck.rounds == []
            assert sorted(states.values()) == ["pending", "pending", "sent"]
    finally:
        for writer in accepted:
            writer.close()
        dead.close()
        await dead.wait_closed()
        await endpoints.stop()
    assert endpoints.json[0]["token"] == "live"
    assert live.rounds == [[None]]


async def test_a_held_delivery_is_not_offered_again_and_again(tmp_path: Path) -> None:
    """While a mail is held for its batch window the worker sleeps (no busy loop)."""
    with MailServer() as smtp:
        cfg = agent_config(tmp_path, {
            "targets": [{"type": "email", "name": "email", "host": "127.0.0.1",
                         "port": smtp.port, "starttls": False, "batch_window": "60s",
                         "sender": "driftgate@atelier-nord.example",
                         "to": ["supervisors@atelier-nord.example"]}],
            "routes": [{"name": "all", "to": ["email"]}],
        })  # fmt: skip
        target = cfg.notify.targets[0]
        email = Recording(make_target(target, origin_of(cfg)))
        async with Running(cfg, [email]) as running:
            running.tell(Notices(cfg).event("cutting.humidity", Level.WARN, value=50, baseline=45))
            await email.until(lambda r: isinstance(r[0], NotYet))
            await asyncio.sleep(0.5)
        assert len(email.rounds) <= 2, f"{len(email.rounds)} rounds in 0.5 s: it spins"
        assert smtp.mails == []


# ------------------------------------------------------------------------------- secrets


async def test_the_urls_appear_in_no_log_and_no_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")  # the logging module at its most talkative, for every library
    log = io.StringIO()
    configure_logging("debug", "json", stream=log)
    endpoints = await Endpoints().start()
    where = f"127.0.0.1:{endpoints.port}"
    cfg = chat_config(tmp_path, f"json://driftgate:{TOKEN}@{where}/hook/{TOKEN}\n"
                                f"ntfy://driftgate:{TOKEN}@{where}/floor-alerts\n")  # fmt: skip
    chat = Recording(the_chat(cfg))
    endpoints.fail_ntfy(1)
    try:
        async with Running(cfg, [chat]) as running:
            notice = Notices(cfg).event("edge_paint.humidity", Level.WARN, value=60, baseline=50)
            running.tell(notice)
            await chat.until(lambda r: isinstance(r[0], ChatError))
            await running.until_sent(1)
            stored = json.dumps(await running.states())
    finally:
        await endpoints.stop()
    assert len(endpoints.json) == len(endpoints.ntfy) == 1
    captured = capsys.readouterr()
    logged = log.getvalue()
    assert "notice delivery to chat failing" in logged
    assert "notice delivery to chat works again" in logged
    for text in (logged, captured.out, captured.err, caplog.text, stored, str(chat.rounds)):
        assert TOKEN not in text
    for text in (logged, stored, str(chat.rounds)):
        assert where not in text


def test_a_bad_urls_file_is_named_by_line_never_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        chat_config(tmp_path, f"# chat\nntfy://ntfy.example/floor\nslack {TOKEN}\n")
    (problem,) = caught.value.problems
    assert "line 3 is not one apprise URL (it has no scheme://)" in problem
    assert TOKEN not in problem
    with pytest.raises(ConfigError, match="holds no URL"):
        chat_config(tmp_path, "# nothing yet\n\n")
    cfg = chat_config(tmp_path, f"nosuchservice://{TOKEN}@example/x\n")
    with pytest.raises(ConfigError) as caught:
        make_target(cfg.notify.targets[0], origin_of(cfg))
    (problem,) = caught.value.problems
    assert "line 1: apprise cannot use this nosuchservice:// URL" in problem
    assert TOKEN not in problem


def test_an_apprise_target_takes_no_recipient(tmp_path: Path) -> None:
    (tmp_path / "urls").write_text("ntfy://ntfy.example/floor\n")
    with pytest.raises(ConfigError, match="is an apprise target: it sends to every URL"):
        agent_config(tmp_path, {
            "targets": [{"type": "apprise", "name": "chat", "urls_file": str(tmp_path / "urls")}],
            "routes": [{"name": "r", "to": ["chat:marie"]}],
        })  # fmt: skip
