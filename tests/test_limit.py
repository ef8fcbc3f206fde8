"""The limit (spec band) detector: a supervisor's first alarm, "edge paint room above 60 %RH"."""

from __future__ import annotations

import pytest

from agent.channels import ChannelRegistry
from agent.config import config_from_dict
from agent.context import ContextStore
from agent.drift.baselines import BaselineStore
from agent.drift.engine import DriftEngine
from agent.reading import Channel

T0 = 1_760_000_000
MIN = 60


def registry(limits: dict[str, object], **extra: object) -> ChannelRegistry:
    cfg = config_from_dict(
        {
            "site": "s",
            "gateway": "g",
            "channels": [
                {"name": "edge_paint.humidity", "unit": "%RH", "label": "Edge paint room humidity",
                 "affects": "edge paint drying", "detectors": [], "limits": limits, **extra},
            ],
        }
    )  # fmt: skip
    engine = DriftEngine(BaselineStore(None), cfg.alerts)
    return ChannelRegistry(cfg.channels, engine, ContextStore(None))


def channel(reg: ChannelRegistry) -> Channel:
    return reg.add(
        Channel(name="edge_paint.humidity", measurement="climate", field="humidity_rh",
                kind="climate", tags={"zone": "edge_paint"})
    )  # fmt: skip


def run(
    reg: ChannelRegistry, ch: Channel, values: list[float], batch: int
) -> list[tuple[str, str, int]]:
    ns = [(T0 + i * MIN) * 10**9 for i in range(len(values))]
    out = []
    for i in range(0, len(values), batch):
        for e in reg.engine.detect(ch, ns[i : i + batch], values[i : i + batch]).events:
            out.append((e.transition, e.level.label, int((e.ts_ns // 10**9 - T0) // MIN)))
    return out


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_a_breach_alarms_after_its_hold_and_clears_with_its_deadband(batch: int) -> None:
    reg = registry({"low_warn": 45, "high_warn": 55, "high_alarm": 60, "deadband": 1,
                    "hold": "10m"})  # fmt: skip
    ch = channel(reg)
    values = [50.0] * 20 + [56.0] * 5 + [50.0] * 5  # 5 minutes above 55: shorter than the hold
    values += [56.0] * 20  # 20 minutes: warn after 10
    values += [61.0] * 20  # alarm after 10 more
    values += [54.5] * 20  # back inside, but not by the 1 %RH deadband: still warn
    values += [53.0] * 20  # inside by the deadband: clears after the hold
    got = run(reg, ch, values, batch)
    assert got == [
        ("raised", "warn", 30 + 10),
        ("escalated", "alarm", 50 + 10),
        ("eased", "warn", 70 + 10),
        ("cleared", "ok", 90 + 10),
    ]


def test_the_words_name_the_limit_and_what_it_affects() -> None:
    reg = registry({"high_warn": 55, "high_alarm": 60})
    ch = channel(reg)
    events = reg.engine.detect(ch, [T0 * 10**9, (T0 + 60) * 10**9], [50.0, 61.2]).events
    (alarm,) = events
    assert alarm.detector == "limit"
    assert alarm.message.startswith(
        "ALARM: Edge paint room humidity has been above its upper alarm limit of 60.0 %RH since"
    )
    assert "(now 61.2 %RH)" in alarm.message
    assert "This affects edge paint drying." in alarm.message
    below = registry({"low_warn": 45})
    low = channel(below)
    (warn,) = below.engine.detect(low, [T0 * 10**9], [44.0]).events
    assert "below its lower warning limit of 45.0 %RH" in warn.message


def test_the_approved_samples_band_follows_the_context() -> None:
    reg = registry(
        {"low_warn": 40, "high_warn": 60, "by_context": {"sku": {"4711": {"low_warn": 45,
                                                                         "high_warn": 55}}}}
    )  # fmt: skip
    ch = channel(reg)
    assert run(reg, ch, [57.0] * 3, 1) == []  # inside the channel's own 40-60
    reg.context.set("zone", "edge_paint", {"sku": "4711"}, save=False)
    reg.retag_all()
    ns = [(T0 + 10 * MIN) * 10**9]
    (event,) = reg.engine.detect(ch, ns, [57.0]).events
    assert event.transition == "raised"
    assert "upper warning limit of 55.0 %RH for sku 4711" in event.message


def test_limits_are_checked_when_the_config_is_read() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        registry({"low_warn": 56, "high_warn": 55})
    assert "high_warn (55) must be above low_warn (56)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        registry({"high_alarm": 60})
    assert "high_alarm needs high_warn below it" in str(err.value)
