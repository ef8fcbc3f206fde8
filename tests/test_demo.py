"""The embedded demo (`driftgate run` without a config) as a real subprocess: what it prints,
whether its summary adds up against the spool file on disk, forwarding to a real InfluxDB 1.6,
and an early stop by SIGINT/SIGTERM that loses nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import InfluxDB1Server
from spoolfile import committed_lines

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PER_DAY = 86400 // 60  # the demo samples every channel once a simulated minute
CHANNELS = 12  # 2 rooms x (humidity, temperature) + 8 sewing machines

STATUS_LINE = re.compile(
    r"^status page: http://127\.0\.0\.1:(\d+)/ \(the floor, live in a browser\)$"
)
NOTICE_LINE = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2} \w+\] (!!|! |ok|\.\.) ")
PROGRESS_LINE = re.compile(
    r"^simulated \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC \(day (\d+) of ([\d.]+)\): "
    r"([\d,]+) readings, (\d+) alert events, spool ([\d,]+) lines waiting, ([\d,]+) forwarded$"
)
SPOOL_LINE = re.compile(
    r"^spool: ([\d,]+) lines written this run \(([\d,]+) readings, (\d+) alert events, "
    r"(-?\d+) self-metrics\); ([\d,]+) lines \([\d.]+ MB\) waiting in (.+); "
    r"dropped (\d+); dead letters (\d+)$"
)
FORWARDED_LINE = re.compile(
    r"^forwarded: ([\d,]+) lines to (\S+) \((v1|v2), (\S+)\) in ([\d,]+) batches; "
    r"([\d,]+) retries$"
)


def num(text: str) -> int:
    return int(text.replace(",", ""))


def demo_cmd(state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "run", "--state-dir", str(state_dir), *args]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("DRIFTGATE_INFLUX_PASSWORD", None)
    out.pop("DRIFTGATE_INFLUX_TOKEN", None)
    out["PYTHONUNBUFFERED"] = "1"
    return out


@dataclass
class Summary:
    """The figures of the demo's one-screen summary."""

    per_channel: dict[str, int]
    total: int
    events: int
    incidents: int
    notices: int
    written: int
    readings: int
    alert_events: int
    self_metrics: int
    waiting: int
    state_dir: str
    dropped: int
    dead_letters: int
    forwarded_line: str


def parse_summary(stdout: str) -> Summary:
    lines = stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("driftgate demo summary:")]
    assert len(heads) == 1, f"no (or several) summaries in:\n{stdout}"
    rest = lines[heads[0] + 1 :]
    assert rest[0] == "readings per channel:"
    per_channel: dict[str, int] = {}
    total = None
    for line in rest[1:]:
        name, count = line.split()
        if name == "total":
            total = num(count)
            break
        per_channel[name] = num(count)
    assert total is not None, stdout
    alerts = next(line for line in rest if line.startswith("alerts "))
    found = re.search(r": ([\d,]+) events", alerts)
    events = num(found[1]) if found else 0
    told = next(line for line in rest if line.startswith("incidents: "))
    counted = re.fullmatch(r"incidents: (\d+) \((\d+) notices\)", told)
    incidents, notices = (int(counted[1]), int(counted[2])) if counted else (0, 0)
    spool = [m for line in rest if (m := SPOOL_LINE.match(line))]
    assert len(spool) == 1, f"no spool line in:\n{stdout}"
    m = spool[0]
    forwarded = [line for line in rest if line.startswith("forwarded: ")]
    assert len(forwarded) == 1, stdout
    return Summary(
        per_channel=per_channel,
        total=total,
        events=events,
        incidents=incidents,
        notices=notices,
        written=num(m[1]),
        readings=num(m[2]),
        alert_events=int(m[3]),
        self_metrics=int(m[4]),
        waiting=num(m[5]),
        state_dir=m[6],
        dropped=int(m[7]),
        dead_letters=int(m[8]),
        forwarded_line=forwarded[0],
    )


def spool_lines(state_dir: Path) -> list[str]:
    """Every line committed in the spool file, read with sqlite3 (not through agent code)."""
    return committed_lines(state_dir)


def by_measurement(lines: list[str]) -> Counter[str]:
    return Counter(line.split(",", 1)[0] for line in lines)


def check_summary_adds_up(s: Summary, state_dir: Path) -> None:
    assert s.per_channel, "no channel figures"
    assert sum(s.per_channel.values()) == s.total
    assert s.readings == s.total
    assert s.alert_events == s.events
    assert s.self_metrics >= 1  # at least the final self-metrics point at shutdown
    assert s.written == s.readings + s.alert_events + s.self_metrics
    assert s.dropped == 0
    assert s.dead_letters == 0
    assert Path(s.state_dir) == state_dir


def notice_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if NOTICE_LINE.match(line)]


def test_demo_alerts_progress_and_summary_match_the_spool(tmp_path: Path) -> None:
    state = tmp_path / "state"
    days = 21
    proc = subprocess.run(
        demo_cmd(state, "--days", str(days), "--speed", "1000000"),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env=env(),
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"

    # The edge-paint room's humidity creeps up from day 14: a plain-words notice names it,
    # says what it affects and what to do.
    alerts = notice_lines(out)
    edge = [
        line
        for line in alerts
        if "Edge paint room humidity" in line
        and re.search(r"\b(WARNING|ALARM)\b", line)
        and "edge paint drying" in line
        and "What to do: check the dehumidifier" in line
    ]
    assert edge, f"no edge-paint humidity notice in:\n{out}"
    assert not [line for line in alerts if "Cutting room" in line], out
    # M05's tension shift is one incident, however many detectors see it.
    m05 = [line for line in alerts if "Sewing machine M05" in line]
    assert len(m05) == 2, m05  # opened (warning), then escalated (alarm)
    assert "WARNING:" in m05[0]
    assert "ALARM" in m05[1]

    # The page's address comes first, before any progress: a newcomer opens it at once.
    lines = out.splitlines()
    (page,) = [i for i, line in enumerate(lines) if STATUS_LINE.match(line)]
    assert page == 1, lines[:3]
    assert int(STATUS_LINE.match(lines[page])[1]) > 0  # type: ignore[index]

    progress = [m for line in out.splitlines() if (m := PROGRESS_LINE.match(line))]
    assert progress, f"no progress line in:\n{out}"
    assert all(m[2] == str(days) for m in progress)
    assert all(1 <= int(m[1]) <= days for m in progress)

    s = parse_summary(out)
    check_summary_adds_up(s, state)
    assert s.notices == len(alerts)  # every notice was printed as it happened
    assert s.incidents == 2  # the M05 shift and the edge paint humidity, one each
    assert s.events > s.notices  # the detector events are the evidence, not the news
    assert set(s.per_channel) >= {"edge_paint.humidity", "cutting.humidity"}
    assert len(s.per_channel) == CHANNELS
    assert set(s.per_channel.values()) == {days * SAMPLES_PER_DAY}
    assert s.forwarded_line.startswith("forwarded: nothing (no --influx given)")

    # Nothing was forwarded: the spool file holds exactly what the summary says was written.
    assert s.waiting == s.written
    lines = spool_lines(state)
    assert len(lines) == s.written
    kinds = by_measurement(lines)
    assert kinds["climate"] + kinds["tension"] == s.readings
    assert kinds["drift_alert"] == s.alert_events
    assert kinds["driftgate_agent"] == s.self_metrics
    assert set(kinds) == {"climate", "tension", "drift_alert", "driftgate_agent"}
    assert any("channel=edge_paint.humidity" in line for line in lines if "drift_alert" in line)


# Each line is one field; the humidity and temperature lines of one room share tags and a
# timestamp, so InfluxDB stores them as one row of two fields: count field values, not rows.
LINE_COUNTS = {
    "climate": "SELECT COUNT(humidity_rh) + COUNT(temperature_c) AS n FROM climate",
    "tension": "SELECT COUNT(tension_cn) AS n FROM tension",
    "drift_alert": "SELECT COUNT(state) AS n FROM drift_alert",
    "driftgate_agent": "SELECT COUNT(readings_in) AS n FROM driftgate_agent",
}


def influx_line_counts(server: InfluxDB1Server, db: str) -> dict[str, int]:
    out = {}
    for measurement, q in LINE_COUNTS.items():
        rows = server.rows(q, db)
        out[measurement] = int(rows[0]["n"]) if rows else 0
    return out


def test_demo_forwards_everything_to_influxdb(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    server, db = influx_db
    state = tmp_path / "state"
    days = 7
    proc = subprocess.run(
        demo_cmd(
            state, "--days", str(days), "--speed", "1000000",
            "--influx", server.url, "--influx-db", db,
        ),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env=env(),
        check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    s = parse_summary(out)
    check_summary_adds_up(s, state)
    m = FORWARDED_LINE.match(s.forwarded_line)
    assert m, s.forwarded_line
    forwarded = num(m[1])
    assert m[2] == server.url
    assert (m[3], m[4]) == ("v1", db)
    assert num(m[5]) >= 1

    counts = influx_line_counts(server, db)
    assert sum(counts.values()) == forwarded
    assert forwarded == s.written  # all of it: the run drained the spool before exiting
    assert counts["climate"] + counts["tension"] == s.readings == days * SAMPLES_PER_DAY * CHANNELS
    assert counts["drift_alert"] == s.alert_events
    assert counts["driftgate_agent"] == s.self_metrics
    # The spool is empty afterwards, in the summary and on disk.
    assert s.waiting == 0
    assert spool_lines(state) == []


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_stops_on_signal_with_summary_and_loses_nothing(
    tmp_path: Path, sig: signal.Signals
) -> None:
    state = tmp_path / "state"
    out_path = tmp_path / "stdout.txt"
    err_path = tmp_path / "stderr.txt"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            demo_cmd(state, "--days", "365", "--speed", "300000"),
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env(),
        )
    try:
        # The agent installs its signal handlers before its first progress line.
        wait_for(
            lambda: any(PROGRESS_LINE.match(x) for x in out_path.read_text().splitlines()),
            30,
            "the first progress line",
        )
        time.sleep(1.0)  # let some days pass, with commits under way
        assert proc.poll() is None, out_path.read_text()
        sent = time.monotonic()
        proc.send_signal(sig)
        # The agent bounds its own shutdown (SHUTDOWN_BUDGET_S = 5 in agent/runtime.py); the
        # test only insists that it exits, generously, since tests never assert timings.
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit after {sig.name}")
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = out_path.read_text()
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err_path.read_text()}"
    print(f"exited {elapsed:.2f} s after {sig.name}")
    s = parse_summary(out)
    check_summary_adds_up(s, state)
    assert 0 < s.total < 365 * SAMPLES_PER_DAY * CHANNELS  # stopped early
    # None lost: every line the run wrote was committed to the spool file before exit.
    assert s.waiting == s.written
    lines = spool_lines(state)
    assert len(lines) == s.written
    kinds = by_measurement(lines)
    assert kinds["climate"] + kinds["tension"] == s.readings
    assert kinds["drift_alert"] == s.alert_events
    assert kinds["driftgate_agent"] == s.self_metrics
