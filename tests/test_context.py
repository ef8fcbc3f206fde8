"""Production context: stored per line or zone, survives restarts, tags readings from then on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from servers import InfluxDB1Server
from spoolfile import committed_lines

from agent.config import config_from_dict
from agent.context import ContextError, ContextStore
from agent.runtime.agent import Agent


def test_set_merge_remove_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "context.json"
    store = ContextStore(path)
    assert store.set("line", "L2", {"lot": "LOT-1", "operator": "op17"})
    assert not store.set("line", "L2", {"lot": "LOT-1"})  # unchanged
    assert store.set("line", "L2", {"operator": None, "shift": "B"})
    again = ContextStore(path)
    assert again.scopes == {"line:L2": {"lot": "LOT-1", "shift": "B"}}
    assert again.for_tags({"zone": "sewing", "line": "L2"}) == {"lot": "LOT-1", "shift": "B"}
    assert again.for_tags({"zone": "sewing", "line": "L1"}) == {}


def test_line_context_wins_over_zone_context(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "c.json")
    store.set("zone", "sewing", {"lot": "ZONE-LOT", "shift": "A"})
    store.set("line", "L2", {"lot": "LINE-LOT"})
    assert store.for_tags({"zone": "sewing", "line": "L2"}) == {"lot": "LINE-LOT", "shift": "A"}


@pytest.mark.parametrize(
    ("scope", "tags", "needle"),
    [
        ("bay", {"lot": "x"}, "scope"),
        ("line", {"zone": "x"}, "location tag"),
        ("line", {"bad key": "x"}, "not a tag name"),
    ],
)
def test_bad_updates_are_refused(tmp_path: Path, scope: str, tags: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ContextError, match=needle):
        ContextStore(tmp_path / "c.json").set(scope, "L2", tags)


def test_cli_sets_and_shows(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "agent", "context"]
    out = subprocess.run(
        [*cmd, "set", "--state-dir", str(tmp_path), "--line", "L2", "lot=LOT-2411-B", "shift=B"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "line L2: lot=LOT-2411-B, shift=B" in out
    shown = subprocess.run(
        [*cmd, "show", "--state-dir", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert '"lot": "LOT-2411-B"' in shown
    bad = subprocess.run(
        [*cmd, "set", "--state-dir", str(tmp_path), "--line", "L2", "nonsense"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "KEY=VALUE" in bad.stderr


def _spooled(state_dir: Path) -> list[str]:
    return committed_lines(state_dir)


async def test_running_agent_tags_readings_after_a_cli_change(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "site": "atelier",
            "gateway": "gw1",
            "state_dir": str(tmp_path),
            "sources": [
                {"type": "simulated", "name": "sim", "speed": 3600.0, "interval": 60, "seed": 2}
            ],
        }
    )
    agent = Agent(cfg)
    run = asyncio.create_task(agent.run(handle_signals=False))
    await asyncio.sleep(1.0)
    ContextStore(tmp_path / "context.json").set("line", "L2", {"lot": "LOT-B", "operator": "op17"})
    await asyncio.sleep(2.5)
    agent.stop_event.set()
    await run
    tension = [line for line in _spooled(tmp_path) if line.startswith("tension,")]
    l2 = [line for line in tension if ",line=L2," in line]
    l1 = [line for line in tension if ",line=L1," in line]
    assert l2
    assert l1
    tagged = [line for line in l2 if ",lot=LOT-B," in line and ",operator=op17," in line]
    assert tagged, "no L2 reading carries the new context"
    assert not [line for line in l1 if "lot=" in line]
    # The change applies from then on: the first L2 readings came before it.
    assert "lot=" not in l2[0]
    first_tagged = l2.index(tagged[0])
    assert all("lot=LOT-B" in line for line in l2[first_tagged:])
    # ...and survives a restart: a new agent on the same state_dir starts with it.
    again = Agent(cfg)
    m05 = next(c for c in again.channels if c.name == "sewing.m05.tension")
    assert ",lot=LOT-B," in m05.prefix


# -- caps and poisoned files -----------------------------------------------------------------

SIXTEEN = {f"k{i:02d}": "v" for i in range(16)}


@pytest.mark.parametrize(
    ("tags", "needle"),
    [
        ({f"k{i:04d}": "v" * 200 for i in range(2000)}, "2000 tags in one update"),
        ({"lot": "x" * 257}, "257 characters long: at most 256"),
        ({"lot": "LOT-1\nLOT-2"}, r"control character U\+000A"),
        ({"lot": "LOT\u0000"}, r"control character U\+0000"),
        ({"lot": "\ud800"}, r"lone surrogate \(not UTF-8\) U\+D800"),  # JSON can carry one
        ({"x" * 65: "v"}, "not a tag name"),
        ({"": "v"}, "not a tag name"),
    ],
    ids=["2000-tags", "long-value", "newline", "nul", "surrogate", "long-key", "empty-key"],
)
def test_context_influxdb_would_refuse_is_refused_up_front(
    tmp_path: Path,
    tags: dict[str, str],
    needle: str,
) -> None:
    """Before: one message with 2,000 tags (430 KB) was accepted and saved; every reading of
    the line was then refused by InfluxDB and dead-lettered, even after a restart."""
    store = ContextStore(tmp_path / "c.json")
    with pytest.raises(ContextError, match=needle):
        store.set("line", "L2", tags)
    assert store.scopes == {}
    assert not (tmp_path / "c.json").exists()


def test_a_scope_holds_at_most_16_tags_and_the_store_256_scopes(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "c.json")
    assert store.set("line", "L2", SIXTEEN)
    with pytest.raises(ContextError, match="would carry 17 context tags: at most 16"):
        store.set("line", "L2", {"lot": "LOT-1"})
    assert store.set("line", "L2", {"k00": None, "lot": "LOT-1"})  # remove one, add one
    for i in range(255):
        store.set("zone", f"z{i}", {"lot": "x"}, save=False)
    with pytest.raises(ContextError, match="256 lines and zones have a context already"):
        store.set("zone", "one-more", {"lot": "x"})
    with pytest.raises(ContextError, match="cannot be a tag"):
        store.set("zone", "bad\nname", {"lot": "x"})


def test_a_poisoned_context_file_keeps_its_valid_part_and_says_what_it_dropped(
    tmp_path: Path,
) -> None:
    import io
    import json

    from agent.logs import configure_logging

    path = tmp_path / "context.json"
    path.write_text(
        json.dumps(
            {
                "line:L2": {
                    "lot": "LOT-9",
                    **{f"k{i:04d}": "v" * 200 for i in range(2000)},
                    "bad key": "x",
                    "zone": "reserved",
                    "order": "4711\n4712",
                },
                "zone:sewing": {"shift": "B"},
                "zone:z": "not tags",
                "bay:b1": {"lot": "x"},
            }
        )
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    store = ContextStore(path)
    kept = store.scopes["line:L2"]
    assert len(kept) == 16
    assert kept["lot"] == "LOT-9"  # the documented keys first
    assert not {"order", "zone", "bad key"} & set(kept)
    assert store.scopes["zone:sewing"] == {"shift": "B"}
    assert set(store.scopes) == {"line:L2", "zone:sewing"}
    (warning,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert warning["event"] == "context file entries dropped: they cannot be tags"
    assert warning["dropped"] == 3 + (2000 - 15) + 2
    assert len(warning["first"]) == 10


async def test_a_poisoned_context_file_no_longer_poisons_readings_in_influxdb(
    tmp_path: Path, influx_db: tuple[InfluxDB1Server, str]
) -> None:
    """An older version saved the 2,000-tag context: after the upgrade the line's readings
    reach the real InfluxDB with the kept tags, and a context at every cap (16 tags of 256
    two-byte characters on the line and on its zone) is one InfluxDB takes."""
    import json

    server, db = influx_db
    state = tmp_path / "state"
    state.mkdir()
    wide = "é" * 256
    (state / "context.json").write_text(
        json.dumps(
            {
                "line:L2": {"lot": "LOT-9", **{f"k{i:04d}": "v" * 200 for i in range(2000)}},
                "zone:sewing": {f"z{i:02d}_{'x' * 59}": wide for i in range(16)},
            }
        )
    )
    cfg = config_from_dict(
        {
            "site": "atelier",
            "gateway": "gw1",
            "state_dir": str(state),
            "influx": {"url": server.url, "database": db, "flush_interval": 0.2},
            "sources": [
                {"type": "simulated", "name": "sim", "speed": 2e6, "interval": 60, "seed": 2,
                 "start": "2026-01-05T00:00:00Z", "days": 0.02}
            ],
        },
        env={},
    )  # fmt: skip
    result = await Agent(cfg).run(drain_at_end=10, handle_signals=False)
    assert result.dead_letters == 0
    assert result.pending_lines == 0
    rows = await asyncio.to_thread(
        server.rows, "SELECT tension_cn, lot, k0000 FROM tension WHERE line = 'L2'", db
    )
    assert rows
    assert {(row["lot"], row["k0000"]) for row in rows} == {("LOT-9", "v" * 200)}
    zone = await asyncio.to_thread(
        server.rows, f"SELECT tension_cn, z15_{'x' * 59} FROM tension", db
    )
    assert {row[f"z15_{'x' * 59}"] for row in zone} == {wide}
