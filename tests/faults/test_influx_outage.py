"""InfluxDB goes away for a while and comes back: the log is never silent about it (a status line
every interval while it lasts, progress lines with an ETA while the backlog drains), and every
line the agent took in arrives exactly once.

The real InfluxDB 1.6 is stopped and started on the same port; the status and progress
intervals are shortened here (the policy's 60 s and 15 s with --soak, over a three-minute
outage).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from ledger import FaultRow
from servers import InfluxDB1Server
from test_agent_e2e import START, agent_config, influx_count, influx_reading_count

from agent.config import config_from_dict
from agent.logs import configure_logging
from agent.runtime.agent import Agent
from agent.store.forwarder import PROGRESS_INTERVAL_S, STATUS_INTERVAL_S

GATEWAY = "e2e-gw"


def json_logs(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in json_logs(stream) if e["event"] == name]


def influx_lines(server: InfluxDB1Server, db: str) -> int:
    """Readings (one field a line), alert events and this agent's self-metrics points."""
    measurements = {r["name"] for r in server.rows("SHOW MEASUREMENTS", db)}
    assert measurements <= {"climate", "tension", "drift_alert", "driftgate_agent"}
    return (
        influx_reading_count(server, db)
        + influx_count(server, db, "SELECT COUNT(transition) AS n FROM drift_alert")
        + influx_count(server, db, "SELECT COUNT(readings_in) AS n FROM driftgate_agent")
    )


@pytest.mark.timeout(900)  # --soak: three minutes down, then the drain
async def test_influxdb_down_then_back_is_never_silent_and_loses_nothing(
    influxdb_private: InfluxDB1Server,
    tmp_path: Any,
    fault_report: Callable[[FaultRow], None],
    soak: bool,
) -> None:
    """Before: with InfluxDB down for three minutes the log had one line at the start and
    nothing for 182 s, and nothing said how the backlog was draining afterwards."""
    server = influxdb_private
    db = "outage"
    server.create_database(db)
    down_for, interval, progress = (
        (180.0, STATUS_INTERVAL_S, PROGRESS_INTERVAL_S) if soak else (20.0, 1.0, 0.5)
    )
    batch = 100  # small batches: the backlog takes several status intervals to drain
    influx = {"url": server.url, "api": "v1", "database": db, "timeout": 2, "batch_size": batch}
    source = {"speed": 20_000, "start": START, "seed": 4, "interval": 60}
    cfg = config_from_dict(agent_config(tmp_path / "state", influx=influx, source=source), env={})
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    agent = Agent(cfg)
    assert agent.forwarder is not None
    agent.forwarder.status_interval = interval
    agent.forwarder.progress_interval = progress
    m = agent.metrics
    run = asyncio.create_task(agent.run(drain_at_end=120, handle_signals=False))
    try:
        while m.forwarded == 0:
            assert not run.done()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(server.stop)
        stopped = time.monotonic()
        await asyncio.sleep(down_for)
        assert not run.done()
        statuses = events(stream, "InfluxDB still not taking writes: readings wait in the spool")
        # One line per interval while it lasts (a loaded machine may fall behind, never ahead).
        assert 2 <= len(statuses) <= down_for / interval + 1, len(statuses)
        for earlier, later in itertools.pairwise(statuses):
            assert later["down_s"] > earlier["down_s"]
            assert later["backlog_lines"] > earlier["backlog_lines"]  # readings keep coming
            assert later["retries"] >= earlier["retries"]
        assert statuses[-1]["oldest_age_s"] > 0
        assert statuses[-1]["retries"] > 0
        assert statuses[-1]["status"] == 0  # no answer at all
        assert server.url in statuses[-1]["target"]

        await asyncio.to_thread(server.start)
        while m.spool_pending_lines > batch or not events(stream, "backlog forwarded"):
            assert not run.done()
            assert time.monotonic() - stopped < down_for + 240, "the backlog never drained"
            await asyncio.sleep(0.1)
        workshop = agent.sources[0]
        workshop.end = workshop.sim_time  # type: ignore[attr-defined]
        result = await asyncio.wait_for(run, 150)
    finally:
        if not run.done():
            agent.stop_event.set()
            await asyncio.gather(run, return_exceptions=True)

    back = events(stream, "InfluxDB is taking writes again")
    assert len(back) == 1
    # The whole outage, not since the last retry or status line (no wall-clock comparison: the
    # agent's outage starts at its first failed write, a moment after the server stopped).
    assert back[0]["down_s"] > statuses[-1]["down_s"]
    assert back[0]["backlog_lines"] > 0
    progress = events(stream, "forwarding the backlog")
    assert progress, "no progress line while the backlog drained"
    assert all(p["lines_per_s"] > 0 for p in progress)
    assert any(p["eta_s"] is not None for p in progress)
    done = events(stream, "backlog forwarded")
    assert len(done) == 1
    assert done[0]["lines"] >= back[0]["backlog_lines"]
    # Still one error line for the whole outage: the status lines are information.
    errors = [e for e in json_logs(stream) if e["level"] == "error"]
    assert [e["logger"] for e in errors] == ["driftgate.forwarder"], errors

    assert result.pending_lines == 0
    assert m.spool_dropped == 0
    arrived = await asyncio.to_thread(influx_lines, server, db)
    fault_report(
        FaultRow(
            f"InfluxDB down {down_for:.0f} s, then back",
            sent=m.spool_appended,
            acknowledged=m.spool_appended,
            arrived=arrived,
        )
    )
