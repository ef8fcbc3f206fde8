"""Alert states and the starter detectors on deterministic streams (reading time, not wall time)."""

from __future__ import annotations

import math
import random
import sys

import pytest
from engines import watch

from agent.config.models import AlertsConfig
from agent.drift.alerts import CLEARED, ESCALATED, RAISED, AlertState, Level
from agent.drift.baselines import BaselineStore
from agent.drift.engine import ChannelDrift, DriftEngine
from agent.reading import Channel

T0 = 1_760_000_000.0


def _channel(kind: str = "climate") -> Channel:
    return Channel(
        name="edge_paint.humidity",
        measurement="climate",
        field="humidity_rh",
        unit="%RH",
        kind=kind,
        label="Edge paint room humidity",
        affects="edge paint drying",
        tags={"zone": "edge_paint"},
    )


def _drift(engine: DriftEngine, channel: Channel) -> ChannelDrift:
    drift = engine.drift(channel)
    assert drift is not None
    return drift


def test_hovering_at_threshold_raises_one_alert_not_fifty() -> None:
    state = AlertState(warn=3.0, alarm=6.0, hold=600.0, hysteresis=0.5)
    rng = random.Random(1)
    kinds = []
    for i in range(5000):  # a value wobbling ±0.3 around the warn threshold for 3.5 days
        kind = state.observe(T0 + i * 60.0, 3.0 + rng.uniform(-0.3, 0.3))
        if kind:
            kinds.append(kind)
    assert kinds == [RAISED]
    assert state.level == Level.WARN


def test_hold_time_filters_a_short_excursion() -> None:
    state = AlertState(warn=3.0, hold=3600.0)
    events = [state.observe(T0 + i * 60.0, 10.0 if 10 <= i < 40 else 0.0) for i in range(200)]
    assert not any(events)  # 30 minutes above warn, hold is one hour


def test_states_go_up_and_clear_with_their_holds() -> None:
    state = AlertState(warn=3.0, alarm=6.0, hold=300.0, clear_hold=600.0)
    scores = [0.0] * 10 + [4.0] * 10 + [7.0] * 10 + [0.0] * 20
    got = []
    for i, score in enumerate(scores):
        kind = state.observe(T0 + i * 60.0, score)
        if kind:
            got.append((i, kind, state.level))
    assert got == [
        (15, RAISED, Level.WARN),
        (25, ESCALATED, Level.ALARM),
        (40, CLEARED, Level.OK),
    ]


def test_baseline_shift_fires_on_a_sustained_ramp_but_not_on_a_daily_cycle() -> None:
    drifting = _channel()
    stable = _channel()
    stable.name = "cutting.humidity"
    store = BaselineStore(None)
    engine = watch(drifting, None, store)
    watch(stable, None, store, engine=engine)
    rng = random.Random(3)
    first: dict[str, float] = {}
    for hour in range(24 * 24):  # readings arrive in hourly batches, one a minute
        ns, drift_x, stable_x = [], [], []
        for i in range(hour * 60, hour * 60 + 60):
            day = i / 1440
            cycle = 4.0 * math.sin(2 * math.pi * day)
            noise = rng.gauss(0.0, 0.8)
            outlier = 15.0 if i % 9973 == 0 else 0.0
            ramp = 1.5 * (day - 14.0) if day > 14.0 else 0.0
            ns.append(int((T0 + i * 60.0) * 1e9))
            drift_x.append(50 + cycle + noise + ramp + outlier)
            stable_x.append(45 + cycle + noise + outlier)
        for channel, values in ((drifting, drift_x), (stable, stable_x)):
            for event in engine.detect(channel, ns, values).events:
                day = (event.ts_ns / 1e9 - T0) / 86400
                first.setdefault(f"{channel.name}/{event.detector}/{event.transition}", day)
    assert not any(key.startswith("cutting") for key in first), first
    shift_day = first["edge_paint.humidity/baseline_shift/raised"]
    assert 14.0 < shift_day < 17.5  # 3 %RH over a 24 h mean at 1.5 %RH/day, plus the hold


def test_alert_event_reads_as_one_sentence_with_the_numbers() -> None:
    channel = _channel()
    engine = watch(
        channel,
        [{"type": "baseline_shift", "window": 3600, "warn": 3.0, "hold": 0}],
        baseline={"value": 50.0},
    )
    ns = [int((T0 + i * 60) * 1e9) for i in range(200)]
    events = engine.detect(channel, ns, [50.0 if i < 100 else 56.0 for i in range(200)]).events
    raised = events[0]
    assert raised.transition == RAISED
    assert raised.baseline == 50.0
    assert raised.delta >= 3.0
    assert "Edge paint room humidity" in raised.message
    assert "above its baseline 50.0 %RH (configured)" in raised.message
    assert "edge paint drying" in raised.message
    line = raised.line("atelier", "gw1")
    assert line.startswith("drift_alert,channel=edge_paint.humidity,detector=baseline_shift,")
    assert 'transition="raised"' in line
    assert "severity=warn" in line


def test_learned_baseline_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = [{"type": "baseline_shift", "window": 3600, "warn": 3.0}]
    learn = {"window": 3600, "learn": 7200}
    first = _channel()
    store = BaselineStore(tmp_path / "baselines.json")
    engine = watch(first, spec, store, baseline=learn)
    for i in range(200):  # one by one, as a slow sensor
        engine.detect(first, [int((T0 + i * 60) * 1e9)], [50.0 + (i % 2)])
    learned = _drift(engine, first).baseline.locked
    assert learned is not None
    assert not (tmp_path / "baselines.json").exists()  # learned on the loop: not written there
    store.save()  # the agent saves from a thread within a second
    again = _channel()
    engine = watch(again, spec, BaselineStore(tmp_path / "baselines.json"), baseline=learn)
    locked = _drift(engine, again).baseline.locked
    assert locked == learned
    assert locked is not None
    assert locked.source == "learned"
    assert locked.mean == pytest.approx(50.5, abs=0.01)


def _stream(seed: int, days: int = 20) -> tuple[list[int], list[float]]:
    rng = random.Random(seed)
    ns, xs = [], []
    for i in range(days * 1440):
        day = i / 1440
        ramp = 1.5 * (day - 10.0) if day > 10.0 else 0.0
        ramp -= 1.5 * (day - 15.0) if day > 15.0 else 0.0  # and back: raise, escalate, clear
        ns.append(int((T0 + i * 60.0) * 1e9))
        xs.append(50 + 4.0 * math.sin(2 * math.pi * day) + rng.gauss(0.0, 0.8) + ramp)
    return ns, xs


def _events(batch_sizes: list[int], ns: list[int], xs: list[float]) -> list[tuple[object, ...]]:
    channel = _channel()
    engine = watch(channel, None, alerts=AlertsConfig(repeat=6 * 3600.0))
    out = []
    i = 0
    k = 0
    while i < len(ns):
        size = batch_sizes[k % len(batch_sizes)]
        k += 1
        for e in engine.detect(channel, ns[i : i + size], xs[i : i + size]).events:
            out.append((e.ts_ns, e.detector, e.transition, e.level, round(e.value, 6), e.message))
        i += size
    return out


def test_events_do_not_depend_on_how_readings_are_batched() -> None:
    """One by one (scalar path), small and large batches (NumPy path): the same events."""
    ns, xs = _stream(5)
    reference = _events([1], ns, xs)
    kinds = {k[2] for k in reference}
    assert {"raised", "escalated", "cleared", "repeat"} <= kinds
    assert _events([4096], ns, xs) == reference
    assert _events([7, 300, 1, 2000, 16, 17], ns, xs) == reference


def test_the_transition_has_one_name_in_logs_json_and_influxdb(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the same thing was `kind` in logs, `event` in MQTT and replay JSON, `state` in
    InfluxDB."""
    import json

    from agent.logs import configure_logging
    from agent.runtime.sinks import log_alert

    channel = _channel()
    engine = watch(
        channel,
        [{"type": "baseline_shift", "window": 3600, "warn": 3.0}],
        baseline={"value": 50.0},
    )
    ns = [int((T0 + i * 60) * 1e9) for i in range(120)]
    (event,) = engine.detect(channel, ns, [50.0 if i < 60 else 56.0 for i in range(120)]).events
    configure_logging("info", "json", sys.stdout)
    log_alert(event)
    logged = json.loads(capsys.readouterr().out)
    assert logged["transition"] == event.as_dict()["transition"] == "raised"
    assert 'transition="raised"' in event.line("s", "g")
    for old in ("kind", "state"):
        assert old not in logged
        assert f'{old}="' not in event.line("s", "g")
    assert "event" not in event.as_dict()
