"""Shared fixtures: real servers on free 127.0.0.1 ports (see tests/servers.py), and a guard
that fails an async test which leaves asyncio tasks running."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import pytest
import pytest_asyncio
import structlog

if os.path.dirname(__file__) not in sys.path:  # `import servers` under any --import-mode
    sys.path.insert(0, os.path.dirname(__file__))

from ledger import pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401 (hooks)
from servers import (
    InfluxDB1Server,
    MissingBinaryError,
    MosquittoServer,
    SerialPair,
    VictoriaMetricsServer,
)

S = TypeVar("S", InfluxDB1Server, VictoriaMetricsServer, MosquittoServer, SerialPair)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help="run the fault suite's long soak variants (tests/faults; minutes, not seconds)",
    )


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether the long soak variants were asked for (--soak)."""
    return bool(request.config.getoption("--soak"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaked_tasks: do not fail this async test for asyncio tasks left running",
    )


def _started(factory: Callable[[], S]) -> S:
    """Build and start a server; a missing Debian package fails with the apt-get line."""
    try:
        server = factory()
        server.start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


# -- InfluxDB 1.6 ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """One influxd for the whole session. Do not stop it: use ``influxdb_private`` for that.
    Tests isolate by database (see ``influx_db``)."""
    server = _started(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb")))
    yield server
    server.stop()


_db_counter = itertools.count(1)


@pytest.fixture
def influx_db(
    influxdb: InfluxDB1Server, request: pytest.FixtureRequest
) -> Iterator[tuple[InfluxDB1Server, str]]:
    """``(server, dbname)``: a fresh, empty database on the session influxd, dropped after."""
    assert influxdb.running, "the session influxd was stopped by an earlier test"
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    name = f"t{next(_db_counter)}_{base}"
    influxdb.create_database(name)
    yield influxdb, name
    if influxdb.running:
        influxdb.drop_database(name)


@pytest.fixture
def influxdb_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """An influxd of this test's own, free to stop/restart/kill."""
    server = _started(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb_private")))
    yield server
    server.stop()


# -- VictoriaMetrics -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """One victoria-metrics for the session (v2 write path). It has no databases: isolate
    tests by unique measurement names or tags, and filter ``export(match=...)``."""
    server = _started(lambda: VictoriaMetricsServer(tmp_path_factory.mktemp("victoria")))
    yield server
    server.stop()


# -- Mosquitto -----------------------------------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A broker of this test's own (anonymous, persistent, max_queued_messages 100000)."""
    server = _started(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    yield server
    server.stop()


# -- serial pty pair -----------------------------------------------------------------------


@pytest.fixture
def serial_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SerialPair]:
    """A socat pty pair: the agent opens ``.device``, the test writes to ``.emulator``."""
    pair = _started(lambda: SerialPair(tmp_path_factory.mktemp("serial")))
    yield pair
    pair.stop()


# -- asyncio task-leak guard ---------------------------------------------------------------


def _test_loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    if marker is None:
        return "function"
    return str(marker.kwargs.get("loop_scope") or marker.kwargs.get("scope") or "function")


@pytest.fixture(autouse=True)
def _no_leaked_asyncio_tasks(request: pytest.FixtureRequest) -> None:
    """For async tests only: pull in ``_asyncio_task_guard`` (sync tests get no loop).

    Being autouse and requested first, the guard is set up before the test's other
    function-scoped fixtures and torn down after them, so tasks an agent fixture stops in
    its teardown do not count as leaked."""
    func = getattr(request, "function", None)
    if func is None or not inspect.iscoroutinefunction(func):
        return
    if request.node.get_closest_marker("allow_leaked_tasks"):
        return
    if _test_loop_scope(request.node) != "function":
        return  # the guard's loop would not be the test's loop
    request.getfixturevalue("_asyncio_task_guard")


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = ""
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        where = f" at {frame.f_code.co_filename}:{frame.f_lineno}"
    return f"{task.get_name()}: {getattr(coro, '__qualname__', coro)!r}{where}"


@pytest_asyncio.fixture(loop_scope="function")
async def _asyncio_task_guard() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    before = set(asyncio.all_tasks(loop))
    yield
    me = asyncio.current_task()
    # Give tasks cancelled during teardown a few loop iterations to finish.
    for _ in range(5):
        await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks(loop) if t is not me and t not in before and not t.done()
    ]
    if not leaked:
        return
    names = "\n  ".join(_describe(t) for t in leaked)
    for t in leaked:
        t.cancel()
    await asyncio.wait(leaked, timeout=2)
    pytest.fail(f"test left {len(leaked)} asyncio task(s) running:\n  {names}", pytrace=False)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults: a test that logs into a StringIO
    or capsys must not leave later tests writing to a closed stream."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
