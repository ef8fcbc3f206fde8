"""Micro-batches: a channel fed in bursts (a tension sensor's 50-sample frames) gathers them
and is judged in fewer, larger batches (detection costs about as much per call as per reading
at such sizes); a trickle is judged at once; a stale detector never mistakes the wait for
silence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from spoolfile import LineSink

from agent import pipeline as pipeline_module
from agent.config import config_from_dict
from agent.reading import Channel
from agent.runtime.build import Core, build

T0 = 1_800_000_000 * 10**9


def wired(tmp_path: Path, **channel: Any) -> tuple[Core, list[tuple[str, int]]]:
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "state_dir": str(tmp_path), "channels": [channel]}, env={}
    )
    core = build(cfg, spool=LineSink(), persistent=False)  # type: ignore[arg-type]
    calls: list[tuple[str, int]] = []
    detect = core.engine.detect

    def spy(channel: Channel, ns: Any, values: Any) -> Any:
        calls.append((channel.name, len(ns)))
        return detect(channel, ns, values)

    core.engine.detect = spy  # type: ignore[method-assign]
    return core, calls


def channel(core: Core, name: str, kind: str) -> Channel:
    return core.registry.get_or_create(
        name, measurement=kind, field="v", unit="", kind=kind, tags={"sensor": name}
    )


def test_bursts_gather_trickles_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    core, calls = wired(tmp_path, name="sewing.m05.tension", kind="tension")
    pipe = core.pipeline
    tension = channel(core, "sewing.m05.tension", "tension")
    climate = channel(core, "cutting.humidity", "climate")
    now = [1000.0]
    monkeypatch.setattr(pipeline_module.time, "monotonic", lambda: now[0])
    ts = T0
    for frame in range(4):  # four 50-sample frames, half a second apart
        for i in range(50):
            pipe.ingest(tension, ts, 120.0 + (i % 3))
            ts += 10_000_000
        pipe.ingest(climate, ts, 45.0)
        pipe.process_due()
        now[0] += 0.5
        assert calls[-1] == ("cutting.humidity", 1)  # the trickle at once
        assert ("sewing.m05.tension", 50 * (frame + 1)) not in calls
    assert pipe.waiting
    assert len(tension.pending_ns) == 200
    now[0] = 1000.0 + pipeline_module.GATHER_S
    pipe.process_due()
    assert calls[-1] == ("sewing.m05.tension", 200)  # one batch of four frames
    assert not pipe.waiting
    # GATHER_MAX readings waiting: judged without waiting for the time
    for _ in range(pipeline_module.GATHER_MAX):
        pipe.ingest(tension, ts, 121.0)
        ts += 10_000_000
    pipe.process_due()
    assert calls[-1] == ("sewing.m05.tension", pipeline_module.GATHER_MAX)
    # process() (shutdown, context and clock changes) judges everything at once
    for _ in range(50):
        pipe.ingest(tension, ts, 121.0)
        ts += 10_000_000
    pipe.process()
    assert calls[-1] == ("sewing.m05.tension", 50)


def test_a_short_stale_gap_judges_a_gathering_burst(tmp_path: Path) -> None:
    """With max_gap 2 s a burst that waits up to GATHER_S would look like silence: the stale
    check judges it first. With the default 10 min, it keeps gathering."""
    short = {"name": "sewing.m01.tension", "kind": "tension",
             "detectors": [{"type": "stale", "max_gap": "2s"}]}  # fmt: skip
    core, calls = wired(tmp_path, **short)
    tension = channel(core, "sewing.m01.tension", "tension")
    for i in range(50):
        core.pipeline.ingest(tension, T0 + i * 10_000_000, 120.0)
    core.pipeline.process_due()
    assert calls == []
    core.pipeline.check_stale()
    assert calls == [("sewing.m01.tension", 50)]

    core, calls = wired(tmp_path, name="sewing.m02.tension", kind="tension")
    tension = channel(core, "sewing.m02.tension", "tension")
    for i in range(50):
        core.pipeline.ingest(tension, T0 + i * 10_000_000, 120.0)
    core.pipeline.check_stale()
    assert calls == []
    assert core.pipeline.waiting
