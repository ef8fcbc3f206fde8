"""Incidents: one cause, told once, in plain words and the site's time; reminders that say they
are reminders; acknowledgement; what was produced meanwhile; surviving a restart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent.config import config_from_dict
from agent.context import ContextStore
from agent.drift.alerts import AlertEvent, Level
from agent.incidents.manager import RECONFIRM_S, IncidentManager
from agent.incidents.model import Notice
from agent.incidents.store import IncidentStore, read_incidents, store_path
from agent.reading import Channel

T0 = 1_795_000_000 * 10**9  # 2026-11-18 11:06:40 UTC
MIN = 60 * 10**9
H = 60 * MIN

M05 = Channel(name="sewing.m05.tension", measurement="tension", field="tension_cn", unit="cN",
              kind="tension", label="Sewing machine M05 thread tension",
              affects="seam strength", tags={"zone": "sewing", "line": "L2"})  # fmt: skip
EDGE = Channel(name="edge_paint.humidity", measurement="climate", field="humidity_rh", unit="%RH",
               kind="climate", label="Edge paint room humidity", affects="edge paint drying",
               tags={"zone": "edge_paint"})  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def event(
    channel: Channel,
    detector: str,
    transition: str,
    level: Level,
    at: int,
    *,
    value: float = 130.0,
    baseline: float = 124.0,
) -> AlertEvent:
    return AlertEvent(
        ts_ns=at, channel=channel, detector=detector, transition=transition, level=level,
        value=value, baseline=baseline, delta=value - baseline, rate_per_h=math.nan,
        since_ns=at, baseline_note="learned", message=f"{detector} says {transition}",
    )  # fmt: skip


def manager(tmp_path: Path, clock: Clock, **cfg: Any) -> tuple[IncidentManager, list[Notice]]:
    config = config_from_dict(
        {"site": "s", "gateway": "g", "timezone": "Europe/Paris", "state_dir": str(tmp_path),
         "channels": [{"name": "sewing.m05.tension", "action": "check the thread tension"}],
         **cfg}
    )  # fmt: skip
    m = IncidentManager(config, ContextStore(tmp_path / "context.json"), clock)
    notices: list[Notice] = []
    m.listeners.append(notices.append)
    return m, notices


def test_three_detectors_on_one_cause_are_one_incident(tmp_path: Path) -> None:
    """Before: M05's tension shift gave three parallel alerts and five messages."""
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(M05, "cusum", "raised", Level.WARN, T0))
    m(event(M05, "cusum", "escalated", Level.ALARM, T0 + 2 * MIN))
    m(event(M05, "ewma", "raised", Level.WARN, T0 + 2 * MIN))
    m(event(M05, "ewma", "escalated", Level.ALARM, T0 + 5 * MIN))
    m(event(M05, "baseline_shift", "raised", Level.WARN, T0 + H))
    assert [n.transition for n in notices] == ["opened", "escalated"]
    assert len(m.by_id) == 1
    (inc,) = m.by_id.values()
    assert {m.detector for m in inc.members.values()} == {"cusum", "ewma", "baseline_shift"}
    for detector in ("cusum", "ewma", "baseline_shift"):
        m(event(M05, detector, "cleared", Level.OK, T0 + 3 * H))
    told = [n.transition for n in notices if n.people]
    assert told == ["opened", "escalated", "cleared"]
    assert inc.state == "cleared"
    assert "Back to normal: Sewing machine M05 thread tension" in notices[-1].sentence
    assert "for 3 h 0 min" in notices[-1].sentence


def test_the_sentence_is_plain_local_and_says_what_to_do(tmp_path: Path) -> None:
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(M05, "cusum", "raised", Level.WARN, T0, value=129.1, baseline=124.0))
    (opened,) = notices
    # 11:06 UTC is 12:06 in Paris in November.
    assert opened.sentence == (
        "WARNING: Sewing machine M05 thread tension has shifted up by about 5.1 cN, to about "
        "129 cN against 124 cN normally, since today 12:06. This affects seam strength. "
        "What to do: check the thread tension."
    )
    assert "CUSUM" not in opened.sentence.upper()  # statistics go after, for engineers
    assert opened.details == "cusum warn: cusum says raised"
    body = opened.body()
    assert body["transition"] == "opened"
    assert body["time_ns"] == T0  # UTC stays in JSON


def test_reminders_say_they_are_reminders_and_stop_when_acknowledged(tmp_path: Path) -> None:
    """Before: a 21-day run with repeat: 4h sent 191 reminders that read like new alerts."""
    clock = Clock()
    m, notices = manager(tmp_path, clock, alerts={"repeat": "4h"})
    m(event(EDGE, "baseline_shift", "raised", Level.WARN, T0))
    for hours in range(1, 13):
        clock.now = T0 + hours * H
        m.tick()
    reminders = [n for n in notices if n.transition == "reminder"]
    assert len(reminders) == 3  # at 4, 8 and 12 h
    assert reminders[0].sentence.startswith("Reminder, still warning: Edge paint room humidity")
    assert "not acknowledged for 4 h 0 min" in reminders[0].sentence
    (inc,) = m.by_id.values()
    m.acknowledge(inc.id, "Marie", "dehumidifier restarted")
    assert notices[-1].transition == "acknowledged"
    assert notices[-1].sentence.startswith("Acknowledged by Marie (dehumidifier restarted):")
    for hours in range(13, 30):
        clock.now = T0 + hours * H
        m.tick()
    assert [n.transition for n in notices].count("reminder") == 3  # none after the ack
    # Worse than when it was acknowledged: people must take it on again.
    m(event(EDGE, "baseline_shift", "escalated", Level.ALARM, T0 + 30 * H))
    assert notices[-1].transition == "escalated"
    assert inc.state == "open"
    clock.now = T0 + 35 * H
    m.tick()
    assert notices[-1].transition == "reminder"


def test_easing_and_a_return_to_a_known_level_notify_no_one(tmp_path: Path) -> None:
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(EDGE, "limit", "raised", Level.WARN, T0))
    m(event(EDGE, "limit", "escalated", Level.ALARM, T0 + H))
    m(event(EDGE, "limit", "eased", Level.WARN, T0 + 2 * H))  # the daily cycle
    m(event(EDGE, "limit", "escalated", Level.ALARM, T0 + 26 * H))
    assert [(n.transition, n.people) for n in notices] == [
        ("opened", True),
        ("escalated", True),
        ("eased", False),
        ("escalated", False),
    ]


def test_grouping_by_zone_and_the_lots_to_hold(tmp_path: Path) -> None:
    clock = Clock()
    m, notices = manager(tmp_path, clock, incidents={"group": "zone"})
    m.context.set("zone", "sewing", {"lot": "LOT-A"}, save=False)
    m01 = Channel(name="sewing.m01.tension", measurement="tension", field="tension_cn",
                  unit="cN", kind="tension", label="M01", tags={"zone": "sewing"})  # fmt: skip
    m(event(M05, "cusum", "raised", Level.WARN, T0))
    m.context.set("zone", "sewing", {"lot": "LOT-B"}, save=False)
    m.context_changed()
    m(event(m01, "cusum", "raised", Level.WARN, T0 + MIN))
    assert len(m.by_id) == 1
    (inc,) = m.by_id.values()
    assert (inc.key, inc.label) == ("zone:sewing", "Sewing zone")
    assert set(inc.members) == {"sewing.m05.tension/cusum", "sewing.m01.tension/cusum"}
    assert inc.context["lot"] == ["LOT-A", "LOT-B"]
    m(event(M05, "cusum", "cleared", Level.OK, T0 + H))
    assert inc.state == "open"  # M01 is still out
    m(event(m01, "cusum", "cleared", Level.OK, T0 + 2 * H))
    assert notices[-1].transition == "cleared"
    assert "Lots made meanwhile: LOT-A, LOT-B." in notices[-1].sentence


def test_a_lot_finding_stays_open_until_someone_has_seen_it(tmp_path: Path) -> None:
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(M05, "lot_compare", "lot_change", Level.WARN, T0))
    (inc,) = m.by_id.values()
    assert inc.state == "open"
    m.acknowledge(inc.id, "QA")
    assert inc.state == "cleared"
    assert [n.transition for n in notices] == ["opened", "acknowledged"]


async def test_open_incidents_survive_a_restart_and_clear_if_not_seen_again(
    tmp_path: Path,
) -> None:
    clock = Clock()
    m, _ = manager(tmp_path, clock)
    store = IncidentStore(store_path(tmp_path))
    await store.open()
    m.saves.append(store.save)
    m(event(M05, "cusum", "raised", Level.WARN, T0))
    m(event(EDGE, "baseline_shift", "raised", Level.WARN, T0))
    await store.close()
    assert {i.state for i in read_incidents(store_path(tmp_path))} == {"open"}

    # A restart: the detectors start afresh. M05's shift is still there, the room is fine.
    again = IncidentStore(store_path(tmp_path))
    m2, notices = manager(tmp_path, clock)
    m2.restore(await again.open())
    assert len(m2.open) == 2
    m2(event(M05, "cusum", "raised", Level.WARN, T0 + 10 * MIN))
    assert notices == []  # the same incident, already told
    clock.now = T0 + int(RECONFIRM_S * 1e9) + MIN
    m2.tick()
    assert [n.transition for n in notices] == ["cleared"]
    assert "no detector saw it again after a restart" in notices[0].sentence
    assert list(m2.open) == ["sewing.m05.tension"]
    # Ids continue after the restored ones.
    m2(event(EDGE, "limit", "raised", Level.WARN, T0 + 2 * H))
    assert max(m2.by_id) > max(i.id for i in read_incidents(store_path(tmp_path)))
    await again.close()


def test_acknowledging_an_unknown_incident_is_a_key_error(tmp_path: Path) -> None:
    m, _ = manager(tmp_path, Clock())
    with pytest.raises(KeyError):
        m.acknowledge("19990101-0001", "nobody")


def test_successive_change_points_join_one_incident_until_someone_has_seen_it(
    tmp_path: Path,
) -> None:
    """A channel judged only for changes: each change is an event; the first opens an incident,
    the next ones join it (no new notice unless worse), it stays open until acknowledged, and
    the change after that opens a new one."""
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(M05, "changepoint", "changed", Level.WARN, T0, value=128.0, baseline=124.0))
    m(event(M05, "changepoint", "changed", Level.WARN, T0 + H, value=121.0, baseline=128.0))
    m(event(M05, "changepoint", "changed", Level.ALARM, T0 + 2 * H, value=110.0, baseline=121.0))
    assert [n.transition for n in notices] == ["opened", "escalated"]
    (inc,) = m.by_id.values()
    assert inc.state == "open"
    assert "changed down by about 11.0 cN, from 121 cN to about 110 cN" in inc.sentence
    clock.now = T0 + 3 * H
    m.acknowledge(inc.id, "anna")
    assert inc.state == "cleared"
    m(event(M05, "changepoint", "changed", Level.WARN, T0 + 4 * H, value=124.0, baseline=110.0))
    assert len(m.by_id) == 2
    assert notices[-1].transition == "opened"


def test_a_change_point_does_not_hold_open_an_incident_whose_states_cleared(
    tmp_path: Path,
) -> None:
    clock = Clock()
    m, notices = manager(tmp_path, clock)
    m(event(M05, "changepoint", "changed", Level.WARN, T0, value=130.0))  # first, as in the demo
    m(event(M05, "cusum", "raised", Level.WARN, T0 + MIN))
    m(event(M05, "changepoint", "changed", Level.WARN, T0 + H, value=124.0, baseline=130.0))
    m(event(M05, "cusum", "cleared", Level.OK, T0 + H + 5 * MIN))
    assert [n.transition for n in notices] == ["opened", "cleared"]
    (inc,) = m.by_id.values()
    assert inc.state == "cleared"
