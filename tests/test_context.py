"""Production context: stored per line or zone, survives restarts, tags readings from then on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
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
