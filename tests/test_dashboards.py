"""The Grafana provisioning and dashboards in deploy/grafana.

No Grafana here (no Debian package), so nothing is rendered. What is checked: the JSON models
load and follow the conventions Grafana imports cleanly (id null, unique uids, gridPos, raw
InfluxQL targets on the provisioned datasource uid), and EVERY InfluxQL query of every panel,
annotation and template variable runs against a real InfluxDB 1.6 holding the embedded demo's
data, with Grafana's macros and variables substituted the way Grafana does. Key panels must
return series.

The demo has no lot changes, no colour instrument and no real (serial/MQTT) sources, so a few
supplementary points for `lot_summary`, `context_summary`, lot-tagged readings, `color` and
`driftgate_source` are written with the agent's own encoder and field builders (named as such
below).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import InfluxDB1Server

from agent.color.stage import ColorResult
from agent.drift.compare import summary_fields
from agent.ingest.frames import SourceHealth
from agent.store.lineprotocol import encode_point

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DS_UID = "driftgate-influx"
DAY_NS = 86400 * 10**9

TIME_FILTER = "time > now() - 60d"  # the demo's span (days up to today's midnight) and now
INTERVAL = "1h"
ALL = ".*"  # every template variable's allValue, as Grafana substitutes "All"

# Queries allowed to return nothing on the demo data (everything else must return series).
MAY_BE_EMPTY = {
    ("floor.json", "annotation", "Back to normal"): "the 16-day demo clears no alert",
    ("lots.json", "annotation", "Lot changes"): "the demo changes no lot",
    ("lots.json", "panel", "Lot comparisons that found a difference"): "no lot_compare alert",
    ("color.json", "annotation", "Colour alerts"): "no colour alert in the demo",
    # A derivative needs two $__interval buckets; self-metrics span seconds, not hours.
    # test_rates_with_a_short_interval runs these with $__interval = 1s.
    ("agent.json", "panel", "Readings in"): "rate over 1 h buckets",
    ("agent.json", "panel", "Frames per source"): "rate over 1 h buckets",
}
RATE_PANELS = ("Readings in", "Frames per source")


@dataclass(frozen=True)
class Query:
    dashboard: str
    kind: str  # panel | annotation | variable
    title: str
    ref: str
    text: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dashboard, self.kind, self.title)

    def __str__(self) -> str:
        return f"{self.dashboard}:{self.kind}:{self.title}:{self.ref}"


def load(path: Path) -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(path.read_text())
    return dash


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def queries_of(path: Path) -> list[Query]:
    dash = load(path)
    out = []
    for panel in walk_panels(dash["panels"]):
        for t in panel.get("targets", []):
            out.append(Query(path.name, "panel", panel["title"], t["refId"], t["query"]))
    for ann in dash["annotations"]["list"]:
        if not ann.get("builtIn"):
            out.append(Query(path.name, "annotation", ann["name"], "", ann["query"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append(Query(path.name, "variable", var["name"], "", var["query"]))
    return out


QUERIES = [q for path in DASHBOARDS for q in queries_of(path)]


# -- Grafana's substitutions -----------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|{}\[\]/]")


def regex_escape(value: str) -> str:
    """How Grafana escapes a single value substituted into an InfluxQL /regex/."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def substitute(text: str, values: dict[str, str], interval: str = INTERVAL) -> str:
    macros = {"timeFilter": TIME_FILTER, "__interval": interval, "interval": interval}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in macros:
            return macros[name]
        if name not in values:
            raise AssertionError(f"unknown Grafana variable or macro ${name} in {text!r}")
        return values[name]

    return _VAR.sub(one, text)


def series_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for r in answer["results"] for s in r.get("series", [])]


def variable_values(server: InfluxDB1Server, db: str, dashboard: str, mode: str) -> dict[str, str]:
    """Each template variable's value: "all" → Grafana's All (allValue .*), "first" → the
    first value its own query returns (run in order, as Grafana resolves dependencies)."""
    values: dict[str, str] = {}
    for var in load(GRAFANA / "dashboards" / dashboard)["templating"]["list"]:
        if var["type"] == "custom":
            values[var["name"]] = var["current"]["value"]
        elif mode == "all":
            values[var["name"]] = ALL
        else:
            answer = server.query(substitute(var["query"], values), db)
            found = [v[1] for s in series_of(answer) for v in s.get("values", [])]
            values[var["name"]] = regex_escape(sorted(found)[0]) if found else ALL
    return values


# -- the data --------------------------------------------------------------------------------


def supplementary_lines(midnight_ns: int) -> list[str]:
    """Points the demo does not produce, built with the agent's own encoder and fields."""
    base = {"site": "demo-atelier", "gateway": "demo-gw"}
    lines = []
    for i, lot in enumerate(("LOT-2411-A", "LOT-2411-B")):
        start = midnight_ns - (6 - 3 * i) * DAY_NS
        tension = [123.5 + 7.5 * i + 0.1 * (k % 7) for k in range(60)]
        humidity = [50.0 + 2.0 * i + 0.05 * (k % 9) for k in range(60)]
        for k in range(60):
            ts = start + k * 600 * 10**9
            t_tags = {**base, "zone": "sewing", "line": "L2", "station": "m05", "lot": lot}
            lines.append(encode_point("tension", t_tags, {"tension_cn": tension[k]}, ts))
            c_tags = {**base, "zone": "edge_paint", "lot": lot}
            lines.append(encode_point("climate", c_tags, {"humidity_rh": humidity[k]}, ts))
        end = start + 59 * 600 * 10**9
        for channel, zone, line, vals in (
            ("sewing.m05.tension", "sewing", "L2", tension),
            ("edge_paint.humidity", "edge_paint", "", humidity),
        ):
            tags = {**base, "zone": zone, "line": line, "channel": channel, "lot": lot}
            tags = {k: v for k, v in tags.items() if v}
            lines.append(encode_point("lot_summary", tags, summary_fields(vals), end))
            del tags["lot"]
            ctx = {**tags, "key": "lot", "value": lot}
            lines.append(encode_point("context_summary", ctx, summary_fields(vals), end))
    # Per operator and per shift, as compare_on: [lot, operator, shift] writes them.
    for i, (key, value) in enumerate((("operator", "op12"), ("operator", "op17"))):
        end = midnight_ns - (5 - i) * DAY_NS
        vals = [123.5 + 4.0 * i + 0.1 * (k % 7) for k in range(60)]
        tags = {**base, "zone": "sewing", "line": "L2", "channel": "sewing.m05.tension",
                "key": key, "value": value}  # fmt: skip
        lines.append(encode_point("context_summary", tags, summary_fields(vals), end))
    for i, shift in enumerate(("A", "B")):
        vals = [50.0 + 1.5 * i + 0.05 * (k % 9) for k in range(60)]
        tags = {**base, "zone": "edge_paint", "channel": "edge_paint.humidity", "key": "shift",
                "value": shift}  # fmt: skip
        end = midnight_ns - (4 - i) * DAY_NS
        lines.append(encode_point("context_summary", tags, summary_fields(vals), end))
    names = ("D65", "FL11", "LED-B3")
    for k in range(6):
        ts = midnight_ns - (5 - k) * DAY_NS
        drift = 0.3 * k
        result = ColorResult(
            sku="4711",
            part="clasp",
            sample=f"4711-clasp-{k:04d}",
            ts_ns=ts,
            illuminants=names,
            lab={n: (62.0 - drift, 1.5 + 0.1 * j, 14.0 + drift) for j, n in enumerate(names)},
            de00={"D65": 0.2 + drift, "FL11": 0.4 + 2 * drift, "LED-B3": 0.3 + drift},
            metamerism=0.2 + drift,
            metamerism_index={"FL11": 0.3 + drift, "LED-B3": 0.1 + drift},
        )
        tags = {**base, "zone": "qc", "sku": "4711", "part": "clasp", "lot": "LOT-2411-A"}
        lines.append(encode_point("color", {**tags, "sample": result.sample}, result.fields(), ts))
    now = time.time_ns()
    for k, frames in enumerate((1000, 1600)):
        health = SourceHealth(connected=True, frames=frames, readings=2 * frames, decode_errors=k)
        tags = {**base, "source": "sht4x-serial"}
        lines.append(
            encode_point("driftgate_source", tags, health.fields(), now - (1 - k) * 10**10)
        )
    return lines


@pytest.fixture(scope="module")
def demo_db(
    influxdb: InfluxDB1Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[InfluxDB1Server, str]]:
    """A database holding 16 demo days (both M05 and edge-paint alerts), forwarded by a real
    `driftgate run`, plus the supplementary points. Module scope: loaded once, read only."""
    db = "t_dashboards"
    influxdb.create_database(db)
    state = tmp_path_factory.mktemp("dashboards_demo")
    # 16 days at 250,000x: at least 5.5 s of wall time, so several 2 s self-metrics points.
    cmd = [sys.executable, "-m", "agent", "run", "--state-dir", str(state), "--days", "16"]
    cmd += ["--speed", "250000", "--influx", influxdb.url, "--influx-db", db]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    midnight_ns = (time.time_ns() // DAY_NS) * DAY_NS
    status, body = influxdb.write("\n".join(supplementary_lines(midnight_ns)), db)
    assert status == 204, body
    yield influxdb, db
    influxdb.drop_database(db)


# -- static checks ---------------------------------------------------------------------------


def test_dashboards_are_conventional_grafana_json() -> None:
    names = {p.name for p in DASHBOARDS}
    assert {"floor.json", "lots.json", "agent.json", "color.json"} <= names
    uids = []
    for path in DASHBOARDS:
        dash = load(path)
        assert dash["id"] is None, path.name
        assert dash["uid"], path.name
        assert dash["title"], path.name
        assert 36 <= dash["schemaVersion"] <= 41, path.name
        uids.append(dash["uid"])
        panel_ids = []
        for panel in walk_panels(dash["panels"]):
            panel_ids.append(panel["id"])
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, (path.name, panel["title"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DS_UID, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == DS_UID, (path.name, panel["title"])
                assert t["rawQuery"] is True
                assert t["query"].strip()
                assert "$timeFilter" in t["query"], (path.name, panel["title"])
        assert len(panel_ids) == len(set(panel_ids)), f"{path.name}: duplicate panel ids"
        for ann in dash["annotations"]["list"]:
            if not ann.get("builtIn"):
                assert ann["datasource"]["uid"] == DS_UID
                assert "$timeFilter" in ann["query"]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"]["uid"] == DS_UID
                assert var["query"].startswith("SHOW TAG VALUES")
    assert len(uids) == len(set(uids)), f"duplicate dashboard uids: {uids}"
    floor = load(GRAFANA / "dashboards" / "floor.json")
    assert {v["name"] for v in floor["templating"]["list"]} >= {
        "site",
        "gateway",
        "zone",
        "line",
        "lot",
    }


def test_provisioning_points_at_the_datasource_and_dashboards() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/driftgate.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == DS_UID
    assert source["type"] == "influxdb"
    assert source["url"] == "$DRIFTGATE_INFLUX_URL"
    assert source["jsonData"]["dbName"] == "$DRIFTGATE_INFLUX_DB"
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["secureJsonData"]["password"].startswith("$")
    dp = yaml.safe_load((GRAFANA / "provisioning/dashboards/driftgate.yaml").read_text())
    (provider,) = dp["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].endswith("/driftgate")


# -- every query against real data -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["all", "first"])
@pytest.mark.parametrize("q", QUERIES, ids=str)
def test_query_runs_on_demo_data(demo_db: tuple[InfluxDB1Server, str], q: Query, mode: str) -> None:
    """Runs with every variable on "All", and on the first value its query offers. With "All"
    every query not in MAY_BE_EMPTY must return series."""
    server, db = demo_db
    text = substitute(q.text, variable_values(server, db, q.dashboard, mode))
    series = series_of(server.query(text, db))  # raises on any InfluxQL error
    if mode == "all" and q.key not in MAY_BE_EMPTY:
        assert series, f"{q}: no series for\n{text}"
        assert any(s.get("values") for s in series), f"{q}: empty series for\n{text}"


def run(
    server: InfluxDB1Server, db: str, dashboard: str, title: str, ref: str = "A"
) -> list[dict[str, Any]]:
    (q,) = [x for x in QUERIES if x.key == (dashboard, "panel", title) and x.ref == ref]
    text = substitute(q.text, variable_values(server, db, dashboard, "all"))
    return series_of(server.query(text, db))


def test_key_panels_show_every_zone_station_and_alert(
    demo_db: tuple[InfluxDB1Server, str],
) -> None:
    server, db = demo_db
    humidity = run(server, db, "floor.json", "Humidity per zone")
    assert {s["tags"]["zone"] for s in humidity} == {"cutting", "edge_paint"}
    tension = run(server, db, "floor.json", "Thread tension per station")
    assert {s["tags"]["station"] for s in tension} == {f"m0{i}" for i in range(1, 9)}
    assert {s["tags"]["line"] for s in tension} == {"L1", "L2"}

    alerts = run(server, db, "floor.json", "Latest alert events")
    (table,) = alerts
    rows = [dict(zip(table["columns"], v, strict=True)) for v in table["values"]]
    assert set(table["columns"]) >= {"time", "channel", "detector", "transition", "severity"}
    assert {r["channel"] for r in rows} >= {"sewing.m05.tension", "edge_paint.humidity"}
    assert all(r["message"] for r in rows)

    floor = load(GRAFANA / "dashboards" / "floor.json")
    values = variable_values(server, db, "floor.json", "all")
    texts = []
    for ann in floor["annotations"]["list"]:
        if ann.get("builtIn"):
            continue
        for s in series_of(server.query(substitute(ann["query"], values), db)):
            cols = s["columns"]
            assert ann["textColumn"] in cols
            assert set(ann["tagsColumn"].split(",")) <= set(cols)
            texts += [dict(zip(cols, v, strict=True))[ann["textColumn"]] for v in s["values"]]
    assert any("M05" in t for t in texts), texts
    assert any("humidity" in t for t in texts), texts

    lots = run(server, db, "lots.json", "Lot summaries")
    assert {(s["tags"]["channel"], s["tags"]["lot"]) for s in lots} >= {
        ("sewing.m05.tension", "LOT-2411-A"),
        ("sewing.m05.tension", "LOT-2411-B"),
    }
    per_value = run(server, db, "lots.json", "Per context value (operator, shift, …)")
    assert {(s["tags"]["key"], s["tags"]["value"]) for s in per_value} >= {
        ("operator", "op12"), ("operator", "op17"), ("shift", "B"), ("lot", "LOT-2411-A"),
    }  # fmt: skip


def test_rates_with_a_short_interval(demo_db: tuple[InfluxDB1Server, str]) -> None:
    """The derivative panels over $__interval = 1s (Grafana's interval for a short range)."""
    server, db = demo_db
    values = variable_values(server, db, "agent.json", "all")
    for q in QUERIES:
        if q.dashboard == "agent.json" and q.title in RATE_PANELS:
            series = series_of(server.query(substitute(q.text, values, interval="1s"), db))
            assert series, q
            assert all(v[1] >= 0 for s in series for v in s["values"]), q
    (readings_in,) = [
        s
        for q in QUERIES
        if (q.title, q.ref) == ("Readings in", "A")
        for s in series_of(server.query(substitute(q.text, values, interval="1s"), db))
    ]
    assert any(v[1] > 0 for v in readings_in["values"]), readings_in


# -- the example queries of docs/schema.md ----------------------------------------------------

SCHEMA_DOC = ROOT / "docs" / "schema.md"


def schema_doc_queries() -> list[str]:
    """Every SELECT in the ```sql blocks of docs/schema.md."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("SELECT")]


@pytest.mark.parametrize("query", schema_doc_queries())
def test_schema_doc_example_query_runs(demo_db: tuple[InfluxDB1Server, str], query: str) -> None:
    """The documented queries name fields and tags that exist (an unknown field is no error in
    InfluxQL, just no data: so each must return values on the demo's data)."""
    server, db = demo_db
    # A derivative needs two buckets: the demo's self-metrics span seconds (as for RATE_PANELS).
    text = substitute(query, {}, interval="1s" if "derivative" in query else INTERVAL)
    series = series_of(server.query(text, db))
    assert any(s.get("values") for s in series), f"no data for\n{text}"
