"""Approved-sample baselines: captured from the local history with the CLI, persisted in
state_dir, used by a restarted agent, quoted by its alerts; list, show and clear."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from spoolfile import committed_lines

from agent.config import AgentConfig, config_from_dict
from agent.runtime.agent import Agent

CHANNEL = "sewing.m05.tension"
NOTE = "sample approval SKU 4711"


def _cfg(state_dir: Path) -> AgentConfig:
    return config_from_dict(
        {
            "site": "atelier",
            "gateway": "gw1",
            "state_dir": str(state_dir),
            "alerts": {"console": False},
            "sources": [
                {"type": "simulated", "name": "sim", "speed": 200000, "days": 3, "seed": 1,
                 "interval": 60},
            ],
        }
    )  # fmt: skip


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "baseline", *args, "--state-dir", str(state_dir)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _m05_readings(state_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every m05 tension reading the agent spooled (nothing was forwarded: no influx)."""
    ts: list[int] = []
    xs: list[float] = []
    for line in committed_lines(state_dir, "tension"):
        if ",station=m05," in line:
            _head, value, stamp = line.rsplit(" ", 2)
            xs.append(float(value.split("=", 1)[1]))
            ts.append(int(stamp))
    return np.asarray(ts, dtype=np.int64), np.asarray(xs)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir after three simulated days of the demo workshop."""
    import asyncio

    state_dir = tmp_path_factory.mktemp("baselines")
    asyncio.run(Agent(_cfg(state_dir)).run(handle_signals=False))
    return state_dir


def _check_against_spool(state_dir: Path, got: dict[str, object]) -> None:
    ts, xs = _m05_readings(state_dir)
    start, end = int(got["start_ns"]), int(got["end_ns"])  # type: ignore[call-overload]
    sel = (ts >= start) & (ts < end)
    assert got["n"] == int(sel.sum())
    assert math.isclose(float(got["mean"]), float(xs[sel].mean()), rel_tol=1e-12)  # type: ignore[arg-type]
    assert math.isclose(float(got["std"]), float(xs[sel].std(ddof=1)), rel_tol=1e-9)  # type: ignore[arg-type]


def test_capture_last_matches_the_readings_and_survives_a_restart(simulated: Path) -> None:
    state_dir = simulated
    run = _cli(state_dir, "capture", "--channel", CHANNEL, "--last", "6h", "--note", NOTE)
    assert run.returncode == 0, run.stderr
    assert "captured mean" in run.stdout
    assert "360 readings" in run.stdout
    shown = _cli(state_dir, "show", CHANNEL)
    assert shown.returncode == 0, shown.stderr
    got = json.loads(shown.stdout)
    assert got["source"] == "captured"
    assert got["note"] == NOTE
    assert got["n"] == 360  # one reading a minute for six hours
    ts, _ = _m05_readings(state_dir)
    assert got["end_ns"] == (int(ts.max()) // 60_000_000_000 + 1) * 60_000_000_000  # newest data
    _check_against_spool(state_dir, got)

    # A new agent on the same state_dir compares against it, and its alerts say so.
    agent = Agent(_cfg(state_dir))
    m05 = agent.registry.channels[CHANNEL]
    drift = agent.engine.drift(m05)
    assert drift is not None
    assert drift.baseline.locked is not None
    assert drift.baseline.locked.source == "captured"
    assert drift.baseline.describe().startswith("captured ")
    assert NOTE in drift.baseline.describe()
    t0 = int(ts.max()) + 60_000_000_000
    for i in range(240):  # four hours 10 cN above the approved sample
        agent.pipeline.ingest(m05, t0 + i * 60_000_000_000, got["mean"] + 10.0)
        if i % 20 == 19:
            agent.pipeline.process()
    # Change points compare each segment with the one before; the rest with the baseline.
    events = [e for e in agent.events if e.channel is m05 and e.detector != "changepoint"]
    assert events, "a 10 cN shift against the captured baseline raised nothing"
    for event in events:
        assert event.baseline_note.startswith("captured ")
        assert NOTE in event.baseline_note
    assert any("captured " in e.message and NOTE in e.message for e in events)


def test_capture_from_to_list_and_clear(simulated: Path) -> None:
    state_dir = simulated
    ts, _ = _m05_readings(state_dir)
    day = datetime.fromtimestamp(int(ts.min()) / 1e9, UTC) + timedelta(days=1)
    start = (day + timedelta(hours=8)).astimezone(timezone(timedelta(hours=1))).isoformat()
    end = (day + timedelta(hours=12)).isoformat().replace("+00:00", "Z")
    run = _cli(
        state_dir, "capture", "--channel", "edge_paint.humidity", "--from", start, "--to", end,
        "--note", "edge paint trial",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(_cli(state_dir, "show", "edge_paint.humidity").stdout)
    assert got["n"] == 240
    assert got["start_ns"] == int((day + timedelta(hours=8)).timestamp()) * 10**9
    listed = _cli(state_dir, "list")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["channel", "source", "mean", "std", "n", "span", "note"]
    row = next(r for r in rows if r.startswith("edge_paint.humidity "))
    assert "captured" in row
    assert " 240 " in row
    assert "edge paint trial" in row
    assert "08:00 to 12:00 UTC" in row

    agent = Agent(_cfg(state_dir))  # as if running: it reloads baselines.json every second
    humidity = agent.engine.drift(agent.registry.channels["edge_paint.humidity"])
    assert humidity is not None
    assert humidity.baseline.locked is not None
    cleared = _cli(state_dir, "clear", "edge_paint.humidity")
    assert cleared.returncode == 0, cleared.stderr
    assert "rolling window" in cleared.stdout
    assert agent.engine.reload_baselines()
    assert humidity.baseline.locked is None
    assert humidity.baseline.describe().startswith("rolling")
    again = _cli(state_dir, "clear", "edge_paint.humidity")
    assert again.returncode == 1
    assert "no locked baseline" in again.stderr
    assert "edge_paint.humidity" not in _cli(state_dir, "list").stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--last", "5m"], "only 5 readings of sewing.m05.tension in "),
        (["--last", "5m", "--min-readings", "5"], None),
        (["--from", "2001-01-01T00:00Z", "--to", "2001-01-02T00:00Z"], "only 0 readings"),
        (["--from", "2026-03-02T08:00", "--to", "2026-03-02T09:00Z"], "has no timezone"),
        (["--from", "2026-03-02T09:00Z", "--to", "2026-03-02T08:00Z"], "must be after --from"),
        (["--from", "yesterday", "--to", "2026-03-02T08:00Z"], "is not an ISO 8601 time"),
        (["--from", "2026-03-02T08:00Z"], "both --from TIME and --to TIME"),
        (["--last", "30 parsecs"], "is not a duration"),
        (["--last", "1h", "--to", "2026-03-02T08:00Z"], "--to goes with --from"),
    ],
)
def test_bad_spans_give_clear_errors(simulated: Path, args: list[str], needle: str | None) -> None:
    run = _cli(simulated, "capture", "--channel", CHANNEL, "--note", "x", *args)
    if needle is None:
        assert run.returncode == 0, run.stderr
        _cli(simulated, "clear", CHANNEL)
        return
    assert run.returncode == 1
    assert needle in run.stderr
    if "only" in needle:
        assert "needs at least 30" in run.stderr
        assert "The history has this channel from" in run.stderr


def test_unknown_channel_and_missing_history(simulated: Path, tmp_path: Path) -> None:
    run = _cli(simulated, "capture", "--channel", "nope", "--last", "1h")
    assert run.returncode == 1
    assert "no history for channel 'nope'" in run.stderr
    assert CHANNEL in run.stderr
    empty = _cli(tmp_path, "capture", "--channel", CHANNEL, "--last", "1h")
    assert empty.returncode == 1
    assert "no local history at" in empty.stderr
