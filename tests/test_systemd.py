"""The notify protocol with systemd (agent/runtime/systemd.py): READY once the spool is open and
the sources started, STATUS lines, WATCHDOG pings from the event loop itself (a blocked loop
sends none), STOPPING at shutdown; abstract socket names; the wedge hook is off by default.

A real datagram socket stands in for systemd's: what arrives is what systemd would read. The
whole protocol under a real systemd is in tests/system/."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waiting import until

from agent.config import config_from_dict
from agent.logs import configure_logging, get_logger
from agent.runtime import agent as agent_module
from agent.runtime.agent import Agent
from agent.runtime.systemd import WEDGE_HOOK_ENV, Notifier, wedge_requested
from agent.store.spool import spool_path


@dataclass
class Listener:
    """systemd's side: a datagram socket and every message received, with its arrival time."""

    sock: socket.socket
    address: str  # as $NOTIFY_SOCKET gives it
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]


def _listen(sock: socket.socket, address: str) -> Iterator[Listener]:
    listener = Listener(sock, address)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    yield listener
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    thread.join(5)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield from _listen(sock, path)


def test_messages_reach_the_socket_as_systemd_reads_them(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    notifier.ready("spool 0 lines waiting")
    notifier.status("12.0 readings/s")
    notifier.ping()
    notifier.reloading()
    notifier.stopping("stopping")
    notifier.close()
    deadline = time.monotonic() + 5
    while len(listener.messages) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    got = [m for _, m in listener.messages]
    assert got[0] == {"READY": "1", "STATUS": "spool 0 lines waiting"}
    assert got[1] == {"STATUS": "12.0 readings/s"}
    assert got[2] == {"WATCHDOG": "1"}
    assert got[3]["RELOADING"] == "1"
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_us - int(got[3]["MONOTONIC_USEC"]) < 60_000_000
    assert got[4] == {"STOPPING": "1", "STATUS": "stopping"}


def test_an_abstract_socket_name_starts_with_an_at_sign() -> None:
    name = f"driftgate-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    for listener in _listen(sock, "@" + name):
        Notifier({"NOTIFY_SOCKET": listener.address}).ready("ok")
        deadline = time.monotonic() + 5
        while not listener.messages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.messages[0][1] == {"READY": "1", "STATUS": "ok"}


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert Notifier({}).send(READY=1) is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.send(READY=1) is False  # logged at debug level, never raised


def test_the_watchdog_interval_is_read_only_when_meant_for_this_process() -> None:
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_s == 3.0
    assert Notifier({"WATCHDOG_USEC": "3000000"}).watchdog_s == 3.0
    assert Notifier({**mine, "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None


def test_the_wedge_hook_is_off_unless_its_variable_names_a_file(tmp_path: Path) -> None:
    wedge = tmp_path / "wedge"
    wedge.touch()
    assert not wedge_requested({})
    assert wedge.exists()
    env = {WEDGE_HOOK_ENV: str(wedge)}
    assert wedge_requested(env)
    assert not wedge.exists()  # once: the restarted agent is not wedged again
    assert not wedge_requested(env)


def _cfg(state: Path) -> object:
    return config_from_dict(
        {
            "site": "sd",
            "gateway": "gw1",
            "state_dir": str(state),
            "sources": [{"type": "simulated", "name": "workshop", "interval": 0.05}],
        },
        env={},
    )


async def test_ready_status_pings_and_stopping_from_a_running_agent(
    tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "STATUS_INTERVAL_S", 0.2)
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "300000"}
    agent = Agent(_cfg(tmp_path / "state"), notifier=Notifier(env))  # type: ignore[arg-type]
    spool_opened = []

    def on_ready() -> bool:
        ready = listener.with_key("READY")
        if ready and not spool_opened:
            spool_opened.append(spool_path(tmp_path / "state").exists())
        return bool(ready)

    task = asyncio.create_task(agent.run(handle_signals=False))
    await until(on_ready, 30, "READY=1")
    assert spool_opened == [True]
    assert agent.supervisor.task("source:workshop") is not None
    await until(lambda: len(listener.with_key("WATCHDOG")) >= 3, 10, "watchdog pings")
    await until(
        lambda: any("readings/s" in m["STATUS"] for _, m in listener.with_key("STATUS")),
        10,
        "a STATUS line with the rate",
    )
    status = [m["STATUS"] for _, m in listener.with_key("STATUS") if "readings/s" in m["STATUS"]]
    assert "spool" in status[-1]
    assert "no InfluxDB configured" in status[-1]

    # Pings come from the event loop itself: while it is blocked, none goes out.
    blocked_from = time.monotonic()
    time.sleep(1.0)  # noqa: ASYNC251 (the point: a call that blocks the loop)
    blocked_to = time.monotonic()
    await until(lambda: listener.with_key("WATCHDOG")[-1][0] > blocked_to, 5, "pings again")
    during = [t for t, _ in listener.with_key("WATCHDOG") if blocked_from + 0.15 < t < blocked_to]
    assert during == []

    agent.stop_event.set()
    await asyncio.wait_for(task, 20)
    stopping = listener.with_key("STOPPING")
    assert len(stopping) == 1
    assert stopping[0][1]["STATUS"] == "stopping: committing the spool"


def test_log_lines_to_the_journal_carry_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journald stores every line of stderr as info unless the line says otherwise (`<4>`):
    the prefix makes `journalctl -p warning` select the agent's warnings and errors."""
    with (tmp_path / "journal").open("w+") as journal, (tmp_path / "other").open("w+") as other:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        for stream in (journal, other):
            configure_logging("info", "json", stream)
            log = get_logger("driftgate.test")
            log.info("spool opened")
            log.warning("serial device lost")
            log.error("cannot reach InfluxDB")
            stream.seek(0)
        to_journal = journal.read().splitlines()
        elsewhere = other.read().splitlines()
    assert [line[:4] for line in to_journal] == ["<6>{", "<4>{", "<3>{"]
    assert json.loads(to_journal[1][3:])["event"] == "serial device lost"
    assert all(line.startswith("{") for line in elsewhere)  # a file, a pipe: plain JSON
