"""Replay: recorded readings through the live detectors give the live events; bad input is named."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from engines import watch
from servers import InfluxDB1Server, MissingBinaryError, require_binary

from agent.cli import main
from agent.config import config_from_dict
from agent.pipeline import Pipeline
from agent.reading import Channel
from agent.replay.inputs import (
    CsvInput,
    InfluxCsvInput,
    LineProtocolInput,
    ReplayError,
    ReplayInput,
    TimeParser,
    guess_kind,
    guess_unit,
    open_input,
    parse_line,
    parse_tags_cell,
)
from agent.replay.plot import NEEDS_MATPLOTLIB
from agent.replay.run import ReplayResult, replay
from agent.runtime.agent import Agent
from agent.words import iso

FIXTURES = Path(__file__).parent / "fixtures" / "replay"
T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
STEP = 300  # s between readings, like a climate probe every 5 minutes
COLUMNS = ("edge_paint.humidity", "edge_paint.temperature", "sewing.m05.tension")


def drifting_stream(days: int = 30, seed: int = 4) -> Iterator[tuple[int, list[float | None]]]:
    """A daily humidity cycle that ramps up from day 14 (and a 1 h outage), a steady temperature
    with gaps, and a thread tension that steps up 8 cN on day 20 (seeded noise, one outlier)."""
    rng = random.Random(seed)
    for i in range(days * 86400 // STEP):
        d = i * STEP / 86400
        ramp = min(max(d - 14, 0) * 1.5, 10)
        rh = 50 + 3 * math.sin(2 * math.pi * d) + rng.gauss(0, 0.3) + ramp
        temp: float | None = 21.5 + math.sin(2 * math.pi * d) + rng.gauss(0, 0.1)
        if i % 211 == 3:
            temp = None  # sensor gap: an empty cell
        cn = 120 + rng.gauss(0, 1.5) + (8 if d >= 20 else 0) + (25 if i == 4000 else 0)
        humidity = None if 1440 <= i < 1452 else round(rh, 3)  # a 1 h outage on day 5: stale
        yield T0 + i * STEP, [humidity, None if temp is None else round(temp, 3), round(cn, 2)]


def write_csv(path: Path, rows: list[tuple[int, list[float | None]]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("time," + ",".join(COLUMNS) + "\n")
        for ts, values in rows:
            stamp = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
            cells = ["" if v is None else repr(v) for v in values]
            f.write(f"{stamp},{','.join(cells)}\n")


CONFIG = {
    "site": "atelier",
    "gateway": "gw1",
    "channels": [
        {"name": "edge_paint.humidity", "label": "Edge paint room humidity", "unit": "%RH",
         "affects": "edge paint drying", "kind": "climate"},
        {"name": "sewing.m05.tension", "label": "Sewing machine M05 thread tension",
         "unit": "cN", "kind": "tension"},
    ],
}  # fmt: skip


class RecordedSource:
    """A live source playing the readings in bursts of varying size, as a serial or MQTT source
    hands them to the pipeline, yielding to the event loop (and its 50 ms detect loop) between."""

    name = "recorded"

    def __init__(self, agent: Agent, rows: list[tuple[int, list[float | None]]]) -> None:
        self.rows = rows
        self._channels = [
            agent.registry.get_or_create(
                name,
                measurement=guess_kind(name),
                field=name,
                unit=guess_unit(name),
                kind=guess_kind(name),
                tags={},
            )
            for name in COLUMNS
        ]

    def channels(self) -> list[Channel]:
        return self._channels

    async def run(self, pipeline: Pipeline) -> None:
        import asyncio

        rng = random.Random(11)
        i = 0
        while i < len(self.rows):
            burst = rng.choice((1, 3, 17, 64, 250, 1500))
            for ts, values in self.rows[i : i + burst]:
                for channel, value in zip(self._channels, values, strict=True):
                    if value is not None:
                        pipeline.ingest(channel, ts * 1_000_000_000, value)
            i += burst
            if rng.random() < 0.5:
                pipeline.process()  # a source's end-of-burst call; otherwise the detect loop's
            await asyncio.sleep(0.001 if rng.random() < 0.1 else 0)


def event_view(events: list[dict[str, object]]) -> list[tuple[object, ...]]:
    keys = ("time", "channel", "detector", "transition", "severity", "value", "baseline", "message")
    rows = [tuple(e[k] for k in keys) for e in events]
    return sorted(rows, key=lambda r: (str(r[0]), str(r[1]), str(r[2])))


class RealTimeAgent(Agent):
    """The live agent as it runs on a gateway receiving these readings as they happen: its
    clock (for stale checks) is the newest reading's time, not today's date."""

    def clock(self) -> float:
        self.pipeline.process()  # readings already received count (see the report on stale)
        return self.pipeline.clock_ns / 1e9


@pytest.mark.parametrize("configured", [True, False], ids=["with-config", "defaults"])
async def test_replay_equals_live(
    tmp_path: Path, configured: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = list(drifting_stream())
    data = dict(CONFIG) if configured else {"site": "atelier", "gateway": "gw1"}
    cfg = config_from_dict({**data, "state_dir": str(tmp_path / "live")})
    agent = RealTimeAgent(cfg)
    source = RecordedSource(agent, rows)
    agent.sources.append(source)
    await agent.run(handle_signals=False)
    live = [e.as_dict() for e in agent.events]

    csv_path = tmp_path / "recorded.csv"
    write_csv(csv_path, rows)
    argv = ["replay", str(csv_path)]
    if configured:
        cfg_path = tmp_path / "agent.yaml"
        cfg_path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
        argv += ["-c", str(cfg_path)]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    replayed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    assert event_view(replayed) == event_view(live)
    kinds = {(e["channel"], e["detector"], e["transition"]) for e in replayed}
    assert ("edge_paint.humidity", "baseline_shift", "raised") in kinds  # the ramp
    assert any(c == "sewing.m05.tension" and k == "raised" for c, _, k in kinds)  # the step
    assert ("edge_paint.humidity", "stale", "raised") in kinds  # the outage
    assert not any(c == "edge_paint.temperature" for c, _, _ in kinds)  # cycle + gaps: quiet
    times = [e["time"] for e in replayed]
    assert times == sorted(times)
    for e in replayed:
        assert {"time", "channel", "detector", "transition", "value", "baseline"} <= e.keys()
    if configured:
        assert any("edge paint drying" in str(e["message"]) for e in replayed)
    table = out[out.index("\nchannel") :]
    assert "edge_paint.humidity" in table
    assert str(sum(1 for _, v in rows if v[0] is not None)) in table  # readings per channel


@pytest.mark.parametrize(
    ("name", "line", "column", "text"),
    [
        ("missing_time.csv", 1, "time", "missing"),
        ("bad_time.csv", 5, "time", "'yesterday' is not a time"),
        ("bad_value.csv", 4, "humidity", "'abc' is not a number"),
        ("short_row.csv", 3, "tension_cn", "missing"),
    ],
)
def test_bad_csv_names_line_and_column(
    name: str, line: int, column: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = FIXTURES / name
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}:{line}: column '{column}': ")
    assert text in err


def test_bad_value_message_exactly(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    rows = ["time,humidity"] + [f"{T0 + 60 * i},{50 + i / 10}" for i in range(15)]
    rows.append(f"{T0 + 900},abc")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ReplayError) as info:
        replay(open_input(path))
    assert str(info.value) == f"{path}:17: column 'humidity': 'abc' is not a number"


def test_named_time_column_missing(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "workshop_4d.csv"
    assert main(["replay", str(path), "--time-column", "when"]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:1: column 'when': missing")


def test_time_formats() -> None:
    parse = TimeParser()
    ns = 1_772_409_600_000_000_000
    assert parse("2026-03-02T00:00:00Z") == ns
    assert parse("2026-03-02T01:00:00.5+01:00") == ns + 500_000_000
    assert parse("2026-03-02T00:00:00.000000123Z") == ns + 123  # influx -precision rfc3339
    assert parse("2026-03-02T00:00:00.123456789Z") == ns + 123_456_789
    with pytest.raises(ValueError, match="no timezone"):
        parse("2026-03-02T00:00:00")
    for text, unit in (("1772409600", "s"), ("1772409600000", "ms"), (str(ns), "ns")):
        fresh = TimeParser()
        assert fresh(text) == ns
        assert fresh.unit is not None
        assert fresh.unit[0] == unit
    assert TimeParser()("1772409600.25") == ns + 250_000_000
    mixed = TimeParser()
    mixed("1772409600")
    with pytest.raises(ValueError, match="started with epoch s"):
        mixed("1772409600000")


@pytest.mark.parametrize(
    ("name", "kind", "unit"),
    [
        ("humidity", "climate", "%RH"),
        ("edge_paint.rh", "climate", "%RH"),
        ("Temperature_C", "climate", "°C"),
        ("tension_cn", "tension", "cN"),
        ("m05 load", "tension", "cN"),
        ("de00_d65", "color", ""),
        ("deltaE", "color", ""),
        ("L", "color", ""),
        ("b", "color", ""),
        ("pressure", "generic", ""),
    ],
)
def test_default_detector_guess(name: str, kind: str, unit: str, tmp_path: Path) -> None:
    assert (guess_kind(name), guess_unit(name)) == (kind, unit)
    path = tmp_path / "one.csv"
    path.write_text(f"time,{name}\n{T0},1.0\n", encoding="utf-8")
    result = replay(open_input(path))
    channel = result.channels[name]
    assert (channel.kind, channel.unit) == (kind, unit)
    fresh = Channel(name=name, measurement=kind, field="f", kind=kind)
    engine = watch(fresh)
    replayed = result.engine.drift(channel)
    alone = engine.drift(fresh)
    assert replayed is not None
    assert alone is not None
    assert [d.name for d in replayed.detectors] == [d.name for d in alone.detectors]


def test_csv_streams_with_empty_cells() -> None:
    source = CsvInput(FIXTURES / "workshop_4d.csv")
    readings = source.readings()
    first = [next(readings) for _ in range(4)]
    assert first[0] == (0, 1_772_409_600_000_000_000, 47.92)
    result = replay(CsvInput(FIXTURES / "workshop_4d.csv"))
    assert result.summaries["humidity"].readings == 1152 - 12  # every 97th cell is empty
    assert result.summaries["tension_cn"].readings == 1152


def test_line_protocol_parser_escapes() -> None:
    m, tags, fields, ts = parse_line(
        r'weird\ meas\,x,tag\ key=a\=b\,c field\ key=2.5,n=3i,ok=T,s="say \"hi\", \\o/" 17'
    )
    assert m == "weird meas,x"
    assert tags == {"tag key": "a=b,c"}
    assert fields == {"field key": 2.5, "n": 3, "ok": True, "s": 'say "hi", \\o/'}
    assert ts == 17
    _, tags, _, _ = parse_line(r"m,path=C:\temp v=1 5")
    assert tags == {"path": r"C:\temp"}  # a backslash before an ordinary character is literal
    with pytest.raises(ValueError, match="not a number"):
        parse_line("m v=abc 1")


def test_line_protocol_round_trips_our_encoder() -> None:
    from agent.store.lineprotocol import encode_point

    tags = {"zone": "edge paint", "k,=": "v =,", "path": "C:\\temp"}
    fields: dict[str, float | int | bool | str] = {"x y": 1.5, "n": 7, "msg": 'a "b" \\ c\nd'}
    line = encode_point("clim ate,x", tags, fields, 123)
    assert parse_line(line) == ("clim ate,x", tags, fields, 123)


def test_line_protocol_input_names_and_config_match(tmp_path: Path) -> None:
    path = FIXTURES / "export.lp"
    plain = LineProtocolInput(path)
    names = {s.name for s in plain.series}
    assert names == {
        "climate.humidity_rh.edge_paint",
        "climate.temperature_c.edge_paint",
        "climate.humidity_rh.cutting",
        "climate.temperature_c.cutting",
        "tension.tension_cn",
        "weird meas,x.field key",
    }  # the lot tag (production context) does not split a channel; drift_alert is skipped
    matched = LineProtocolInput(path, ["edge_paint.humidity", "sewing.m01.tension"])
    by_name = {s.name: s for s in matched.series}
    assert by_name["edge_paint.humidity"].unit == "%RH"
    assert by_name["sewing.m01.tension"].kind == "tension"
    assert by_name["sewing.m01.tension"].tags["station"] == "m01"
    result = replay(matched)
    assert result.summaries["edge_paint.humidity"].readings == 2
    assert result.summaries["sewing.m01.tension"].readings == 2  # 121.5 and 121i
    assert matched.skipped == {  # counted, not replayed
        "values of field 'ok' of measurement 'tension' (not numbers)": 1,
        "values of field 'note' of measurement 'tension' (not numbers)": 1,
        "points of measurement 'drift_alert' (the agent's own, not readings)": 1,
    }
    assert isinstance(open_input(path), LineProtocolInput)
    assert isinstance(open_input(FIXTURES / "workshop_4d.csv"), CsvInput)
    assert isinstance(open_input(FIXTURES / "influx_group_by.csv"), InfluxCsvInput)
    assert isinstance(open_input(FIXTURES / "influx_select_star.csv"), InfluxCsvInput)


def test_line_protocol_replay_equals_csv_replay(tmp_path: Path) -> None:
    rows = list(drifting_stream(days=22))  # the 8 cN step comes on day 20
    csv_path = tmp_path / "r.csv"
    write_csv(csv_path, rows)
    lp_path = tmp_path / "r.lp"
    with lp_path.open("w", encoding="utf-8") as f:
        f.write("# DML\n# CONTEXT-DATABASE: driftgate\n")
        for ts, values in rows:
            cn = values[2]
            f.write(f"tension,station=m05,zone=sewing tension_cn={cn!r} {ts * 10**9}\n")
    from_csv = replay(open_input(csv_path), only=["sewing.m05.tension"])
    from_lp = replay(open_input(lp_path, configured=["sewing.m05.tension"]))
    assert from_csv.events
    assert [e.as_dict() for e in from_csv.events] == [e.as_dict() for e in from_lp.events]


def test_line_protocol_cli_counts_what_it_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "export.lp"
    assert main(["replay", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}: skipped 1 points of measurement 'drift_alert'" in err
    assert f"{path}: skipped 1 values of field 'note' of measurement 'tension'" in err


def test_bad_line_protocol_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.lp"
    path.write_text("m,a=b v=1 1\nm,a=b v=1\n", encoding="utf-8")
    assert main(["replay", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:2: no timestamp")


def test_state_dir_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "workshop_4d.csv"
    state = tmp_path / "state"
    assert main(["replay", str(path)]) == 0
    assert not state.exists()
    assert main(["replay", str(path), "--state-dir", str(state)]) == 0
    assert (state / "baselines.json").exists()  # learned baselines kept where asked


def test_channel_filter(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "workshop_4d.csv"
    assert main(["replay", str(path), "--channel", "humidity"]) == 0
    out = capsys.readouterr().out
    assert "tension_cn" not in out
    assert main(["replay", str(path), "--channel", "nope"]) == 2
    assert "no channel 'nope'" in capsys.readouterr().err


def test_plot_is_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    csv_path = tmp_path / "r.csv"
    write_csv(csv_path, list(drifting_stream(days=24)))
    png = tmp_path / "out.png"
    assert main(["replay", str(csv_path), "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


# ------------------------------------------------------------------------ influx CLI CSV


def _counts(result: ReplayResult) -> dict[str, tuple[int, int | None, int | None]]:
    return {n: (s.readings, s.first_ns, s.last_ns) for n, s in result.summaries.items()}


def _events(result: ReplayResult) -> list[tuple[int, str]]:
    """Every event with its exact time, in an order that does not depend on the input's."""
    return sorted((e.ts_ns, json.dumps(e.as_dict(), sort_keys=True)) for e in result.events)


@pytest.mark.parametrize("name", ["influx_select_star.csv", "influx_group_by.csv"])
@pytest.mark.parametrize("configured", [(), ("edge_paint.humidity", "sewing.m05.tension")])
def test_influx_cli_fixture_replays_as_its_line_protocol(
    name: str, configured: tuple[str, ...]
) -> None:
    """Recorded from a real InfluxDB 1.6 loaded with influx_points.lp, with
    influx -format csv -execute 'SELECT * FROM climate, tension, press, drift_alert' (epoch ns,
    tags as plain columns) and influx -format csv -precision rfc3339 -execute 'SELECT * FROM
    climate GROUP BY *; SELECT * FROM tension, press, drift_alert GROUP BY *' (a tags column, a
    header per series, two statements with different columns)."""
    source = open_input(FIXTURES / name, configured=configured)
    assert isinstance(source, InfluxCsvInput)
    from_lp = replay(LineProtocolInput(FIXTURES / "influx_points.lp", configured))
    from_csv = replay(source)
    humidity, tension = configured or ("climate.humidity_rh.edge_paint", "tension.tension_cn.m05")
    assert set(from_csv.summaries) == {
        humidity,
        "climate.temperature_c.edge_paint",
        "climate.humidity_rh.cutting",
        "climate.temperature_c.cutting",
        tension,
        "tension.tension_cn.m06",
        "press.force_kn.p1",  # machine: not driftgate's tag, told apart as text in SELECT *
        "press.force_kn.p2",
    }  # lot L7 does not split a channel; line=2 is a tag, not a reading; drift_alert skipped
    assert _counts(from_csv) == _counts(from_lp)  # ns times survive -precision rfc3339
    assert from_csv.summaries["climate.temperature_c.edge_paint"].readings == 3  # an empty cell
    assert from_csv.summaries[tension].readings == 3
    assert source.skipped == {
        "points of measurement 'drift_alert' (the agent's own, not readings)": 1,
        "values of field 'ok' of measurement 'tension' (not numbers)": 2,
    }
    assert _events(from_csv) == _events(from_lp)


def test_influx_cli_fixture_cli_counts_what_it_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "influx_select_star.csv"
    assert main(["replay", str(path)]) == 0
    captured = capsys.readouterr()
    assert "climate.humidity_rh.edge_paint" in captured.out
    assert "taken as tags (no GROUP BY" in captured.err
    assert "'machine' of 'press'" in captured.err  # the guess is said, with how to avoid it
    assert f"{path}: skipped 2 values of field 'ok' of measurement 'tension'" in captured.err
    assert f"{path}: skipped 1 points of measurement 'drift_alert'" in captured.err


def test_tags_cell_as_the_cli_prints_it() -> None:
    # Printed by the influx 1.6 CLI for tags zone="a,b", k="x=v w" and an absent lot.
    assert parse_tags_cell("k=x=v w,lot=,sensor=s1,zone=a,b") == {
        "k": "x=v w",
        "sensor": "s1",
        "zone": "a,b",
    }
    assert parse_tags_cell("") == {}
    with pytest.raises(ValueError, match="not a tag list"):
        parse_tags_cell("edge_paint")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "name,tags,time,humidity_rh\nclimate,zone=a,1772409600000000000,50\n"
            "climate,zone=a,yesterday,51\n",
            "{path}:3: column 'time': 'yesterday' is not a time",
        ),
        (
            "name,time,note,tension_cn\ntension,1772409600000000000,a,b,121\n",
            "{path}:2: 5 cells under a header of 4 columns (line 1): a tab inside",
        ),
        (
            "name,time,tension_cn\ntension,1772409600000000000\n",
            "{path}:2: column 'tension_cn': missing (the row has 2 of 3 columns)",
        ),
        (
            "name,tags,time,humidity_rh\nclimate,edge_paint,1772409600000000000,50\n",
            "{path}:2: column 'tags': 'edge_paint' is not a tag list",
        ),
        (
            "ERR: database not found: driftgate\n",
            "{path}:1: the influx CLI wrote an error, not data: ERR: database not found",
        ),
        (
            "name,time,humidity_rh\nclimate,1772409600000000000,50\nERR: partial results\n",
            "{path}:3: the influx CLI wrote an error, not data: ERR: partial results",
        ),
    ],
    ids=["bad-time", "tab-split", "short-row", "bad-tags", "err-only", "err-after-data"],
)
def test_bad_influx_csv_names_the_line(
    tmp_path: Path, text: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "export.csv", text)
    assert main(["replay", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(error.format(path=path))
    assert not captured.out


def _influx_cli(server: InfluxDB1Server, db: str, query: str, extra: Sequence[str]) -> str:
    try:
        influx = require_binary("/usr/bin/influx", "influxdb-client")
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    done = subprocess.run(
        [influx, "-host", "127.0.0.1", "-port", str(server.port), "-database", db,
         "-format", "csv", *extra, "-execute", query],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stderr
    return done.stdout


def _workshop_lines(days: int) -> tuple[list[str], dict[str, int]]:
    """drifting_stream as the agent writes it (ns times off the whole second, the lot changing on
    day 10, an ok flag now and then), a quiet second zone; the readings each channel gets."""
    lines: list[str] = []
    counts = dict.fromkeys(
        ("edge_paint.humidity", "climate.temperature_c.edge_paint",
         "climate.humidity_rh.cutting", "climate.temperature_c.cutting", "sewing.m05.tension"),
        0,
    )  # fmt: skip
    rng = random.Random(7)
    for i, (ts, (rh, temp, cn)) in enumerate(drifting_stream(days=days)):
        ns = ts * 10**9 + (i * 7919) % 1000  # sub-microsecond: only RFC 3339 ns keep it
        lot = "L7" if ts < T0 + 10 * 86400 else "L8"
        fields = [f"humidity_rh={rh!r}" if rh is not None else "",
                  f"temperature_c={temp!r}" if temp is not None else ""]  # fmt: skip
        if any(fields):
            tags = f"gateway=gw1,lot={lot},sensor=sht41-ep1,site=atelier,zone=edge_paint"
            lines.append(f"climate,{tags} {','.join(f for f in fields if f)} {ns}")
            counts["edge_paint.humidity"] += rh is not None
            counts["climate.temperature_c.edge_paint"] += temp is not None
        cut_rh = round(45 + 2 * math.sin(2 * math.pi * i * STEP / 86400) + rng.gauss(0, 0.3), 3)
        cut_t = round(20.5 + rng.gauss(0, 0.1), 3)
        tags = f"gateway=gw1,lot={lot},sensor=sht41-ct1,site=atelier,zone=cutting"
        lines.append(f"climate,{tags} humidity_rh={cut_rh!r},temperature_c={cut_t!r} {ns + 1}")
        counts["climate.humidity_rh.cutting"] += 1
        counts["climate.temperature_c.cutting"] += 1
        ok = ",ok=true" if i % 50 == 0 else ""
        tags = f"gateway=gw1,line=2,lot={lot},site=atelier,station=m05,zone=sewing"
        lines.append(f"tension,{tags} tension_cn={cn!r}{ok} {ns}")
        counts["sewing.m05.tension"] += 1
    return lines, counts


QUERIES = {
    "select-star": ([], "SELECT * FROM climate, tension, drift_alert"),
    "group-by-all-rfc3339": (
        ["-precision", "rfc3339"],
        "SELECT * FROM climate, tension, drift_alert GROUP BY *",
    ),
    "two-statements-group-by-zone": (
        [],
        "SELECT humidity_rh, temperature_c FROM climate GROUP BY zone; "
        "SELECT tension_cn FROM tension GROUP BY *",
    ),
}


@pytest.mark.parametrize("variant", list(QUERIES))
def test_influx_cli_export_replays_like_line_protocol(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str], variant: str
) -> None:
    server, db = influx_db
    lines, counts = _workshop_lines(days=22)  # the 8 cN step comes on day 20
    alerts = [
        "drift_alert,channel=edge_paint.humidity,detector=baseline_shift,severity=warn,"
        f'zone=edge_paint state="raised",message="humidity up,\tcheck\nthe door" {T0 + i}'
        for i in range(3)
    ]  # a tab splits the CLI's cells, a newline makes a quoted cell span two lines
    status, body = server.write("\n".join(lines + alerts) + "\n", db)
    assert status == 204, body
    lp_path = tmp_path / "export.lp"
    lp_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extra, query = QUERIES[variant]
    csv_path = tmp_path / "export.csv"
    csv_path.write_text(_influx_cli(server, db, query, extra), encoding="utf-8")

    cfg = config_from_dict(CONFIG)
    configured = [c.name for c in cfg.channels]
    source: ReplayInput = open_input(csv_path, configured=configured)
    assert isinstance(source, InfluxCsvInput)
    from_csv = replay(source, cfg)
    from_lp = replay(open_input(lp_path, configured=configured), cfg)

    assert {n: s.readings for n, s in from_csv.summaries.items()} == counts
    assert _counts(from_csv) == _counts(from_lp)
    assert from_csv.events
    assert _events(from_csv) == _events(from_lp)
    kinds = {(e.channel.name, e.detector, e.transition) for e in from_csv.events}
    assert ("edge_paint.humidity", "baseline_shift", "raised") in kinds  # the ramp
    assert ("edge_paint.humidity", "stale", "raised") in kinds  # the outage
    assert any(c == "sewing.m05.tension" and k == "raised" for c, _, k in kinds)  # the step
    if "drift_alert" in query:
        assert source.skipped[
            "points of measurement 'drift_alert' (the agent's own, not readings)"
        ] == len(alerts)
    if "SELECT *" in query:
        assert source.skipped["values of field 'ok' of measurement 'tension' (not numbers)"] == sum(
            1 for line in lines if "ok=true" in line
        )


# ---------------------------------------------------------------------------------- --plot


def test_plot_without_matplotlib_fails_before_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled one looks like
    png = tmp_path / "out.png"
    assert main(["replay", str(FIXTURES / "workshop_4d.csv"), "--plot", str(png)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == NEEDS_MATPLOTLIB
    assert NEEDS_MATPLOTLIB.startswith("--plot needs matplotlib: pip install 'driftgate[plot]'")
    assert not captured.out  # no JSON events, no summary table
    assert not png.exists()
    # Not even the input is read: a missing file gets the same answer.
    assert main(["replay", str(tmp_path / "absent.csv"), "--plot", str(png)]) == 2
    assert capsys.readouterr().err.strip() == NEEDS_MATPLOTLIB


def test_replay_honours_the_flapping_settings_of_the_config(tmp_path: Path) -> None:
    """Before: replay built its registry with alerts.repeat only, so flap_count/flap_window
    of the config were ignored and a replay flapped differently from the live agent."""
    path = tmp_path / "toggle.csv"
    rows = ["time,line.gauge"]
    for i in range(40):  # ten readings high, ten low, twice: four level changes in 40 min
        rows.append(f"{T0 + 60 * i},{5.0 if (i // 10) % 2 == 0 else 0.0}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    def transitions(alerts: dict[str, object]) -> list[str]:
        cfg = config_from_dict(
            {
                "site": "s",
                "gateway": "g",
                "alerts": alerts,
                "channels": [
                    {
                        "name": "line.gauge",
                        "baseline": {"value": 0.0, "std": 1.0},
                        "detectors": [
                            {"type": "baseline_shift", "window": "1m", "warn": 1.0,
                             "min_samples": 2},
                        ],
                    }
                ],
            }
        )  # fmt: skip
        return [e.transition for e in replay(open_input(path), cfg).events]

    assert transitions({}) == ["raised", "cleared", "raised", "cleared"]
    assert transitions({"flap_count": 3}) == ["raised", "cleared", "flapping"]


def test_replay_without_a_config_judges_any_column_and_says_what_never_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """13 hours at one reading a minute. Before: every column was judged as climate, whose
    baseline needs days: no event, and nothing said why."""
    rng = random.Random(5)
    rows = ["time,pressure,humidity"]
    for i in range(13 * 60):
        step = 3.0 if i >= 400 else 0.0
        rows.append(f"{T0 + i * 60},{1000 + step + rng.gauss(0, 1):.2f},{50 + rng.gauss(0, 1):.2f}")
    path = _write(tmp_path / "short.csv", "\n".join(rows) + "\n")
    assert main(["replay", str(path)]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["channel"], e["detector"], e["transition"]) for e in events] == [
        ("pressure", "changepoint", "changed")
    ]
    assert events[0]["since"] == iso((T0 + 400 * 60) * 10**9)
    assert (
        "driftgate replay: humidity: baseline_shift never judged a reading: baseline needs 3 d "
        "of readings (at least 30), the readings span 12 h 59 min (780 readings)"
    ) in err
