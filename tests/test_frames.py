"""Frames to readings: tags that change from one reading to the next (a sample id, a lot the
device reports) are right on every point, and never make a channel of their own."""

from __future__ import annotations

from pathlib import Path

from spoolfile import LineSink

from agent.config import config_from_dict
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, SourceHealth
from agent.ingest.profiles import load_profile
from agent.runtime.build import Core, build


def wired(tmp_path: Path, profile: str) -> tuple[Core, FrameHandler, LineSink]:
    sink = LineSink()
    cfg = config_from_dict({"site": "s1", "gateway": "gw1", "state_dir": str(tmp_path)})
    core = build(cfg, spool=sink)  # type: ignore[arg-type]
    tags = {"zone": "qc"}
    handler = FrameHandler(
        "colorimeter",
        Decoder(load_profile(profile), tags=tags),
        core.pipeline,
        core.registry,
        prefix="qc",
        base_tags=tags,
        health=SourceHealth(),
        measurements=core.color,
    )
    return core, handler, sink


def tag_of(line: str, key: str) -> str | None:
    series = line.split(" ", 1)[0]
    for part in series.split(",")[1:]:
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


def test_every_reading_carries_its_own_sample_id_and_one_channel_per_quantity(
    tmp_path: Path,
) -> None:
    """Before: the first sample's id was frozen into the channel, so every later L/a/b line
    said sample=…-000, and each new sample added a channel to the handler's table."""
    core, handler, sink = wired(tmp_path, "colorimeter-lab")
    samples = [f"4711-clasp-{i:03d}" for i in range(5)]
    for i, sample in enumerate(samples):
        wire = f"@{sample} L+050.{i:02d}a+020.86b+034.39\r\n".encode()
        for frame in handler.decoder.feed(wire):
            handler.frame(frame, None, 10**18 + i * 10**9)
    readings = [line for line in sink.lines if line.startswith("color,") and " L=" in line]
    assert [tag_of(line, "sample") for line in readings] == samples
    lab = [n for n in core.registry.channels if n.endswith((".L", ".a", ".b"))]
    assert sorted(lab) == ["qc.L", "qc.a", "qc.b"]
    assert len(handler._channels) == 3
    assert core.registry.channels["qc.L"].readings == 5


def test_a_lot_the_device_reports_tags_its_reading_and_beats_the_context(tmp_path: Path) -> None:
    core, handler, sink = wired(tmp_path, "colorimeter-lab")
    core.context.set("zone", "qc", {"lot": "LOT-A", "operator": "op7"}, save=False)
    core.registry.retag_all()
    decoded = handler.decoder.decode(b"@4711-clasp-001 L+050.00a+020.86b+034.39", received_ns=1)
    for value in decoded.values:
        value.tags["lot"] = "LOT-B"  # as a device that reports the lot itself
    handler.ingest(decoded)
    lines = [line for line in sink.lines if line.startswith("color,") and "=" in line[-40:]]
    readings = [line for line in lines if any(f" {q}=" in line for q in ("L", "a", "b"))]
    assert len(readings) == 3
    assert {tag_of(line, "lot") for line in readings} == {"LOT-B"}
    assert {tag_of(line, "operator") for line in readings} == {"op7"}
    assert len(core.registry.channels) == 3
    core.context.set("zone", "qc", {"operator": "op9"}, save=False)
    core.registry.retag_all()
    sink.lines.clear()
    handler.ingest(
        handler.decoder.decode(b"@4711-clasp-002 L+050.00a+020.86b+034.39", received_ns=2)
    )
    assert {tag_of(line, "operator") for line in sink.lines if line.startswith("color,")} == {"op9"}
