"""The colour stage: CIEDE2000 against Sharma, Wu & Dalal (2005); a deliberately metameric pair;
references (capture, import, CLI); bad spectra; the colorimeter path; and a spectrophotometer
measurement from the emulator through a serial pty, the agent and the spool into InfluxDB 1.6."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import serial
from servers import InfluxDB1Server, SerialPair
from spoolfile import LineSink

from agent.cli import main as cli_main
from agent.color.colorimetry import Colorimetry, delta_e00, illuminant_slug
from agent.color.references import Reference, ReferenceError, ReferenceStore, load_reference_file
from agent.config import config_from_dict
from agent.drift.alerts import AlertEvent, Level
from agent.ingest.decode import Decoder, Spectrum
from agent.ingest.frames import FrameHandler, SourceHealth
from agent.ingest.profiles import load_profile
from agent.runtime.agent import Agent
from agent.runtime.build import build
from agent.sim.devices import DEMO_START, DeviceEmulator, reflectance
from agent.store.spool import spool_path

FIXTURE = Path(__file__).parent / "fixtures" / "ciede2000_sharma.csv"
WAVES = 400 + 10 * np.arange(31)


# -- helpers ---------------------------------------------------------------------------------


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    series, fields, ts = line.rsplit(" ", 2)
    name, *tags = series.split(",")
    return (
        name,
        dict(t.split("=", 1) for t in tags),
        dict(f.split("=", 1) for f in fields.split(",")),
        int(ts),
    )


class Stage:
    """A colour stage wired to a pipeline, a registry and a frame handler for one profile."""

    def __init__(
        self, tmp: Path, profile: str, cfg: dict[str, Any] | None = None, **source_tags: str
    ) -> None:
        self.sink = LineSink()
        config = config_from_dict(
            {"site": "floor1", "gateway": "gw1", "state_dir": str(tmp), "color": cfg or {}}
        )
        core = build(config, spool=self.sink)  # type: ignore[arg-type]
        self.pipeline = core.pipeline
        self.events: list[AlertEvent] = []
        self.pipeline.sinks.append(self.events.append)
        self.registry = core.registry
        assert core.color is not None
        self.stage = core.color
        self.store = core.color.references
        tags = {"zone": "qc", **source_tags}
        self.handler = FrameHandler(
            "spectro",
            Decoder(load_profile(profile), tags=tags),
            self.pipeline,
            self.registry,
            prefix="qc",
            base_tags=tags,
            health=SourceHealth(),
            measurements=self.stage,
        )

    def points(self, measurement: str = "color") -> list[tuple[dict[str, str], dict[str, str]]]:
        """Fields merged per (series, time), as InfluxDB stores them."""
        merged: dict[tuple[str, int], tuple[dict[str, str], dict[str, str]]] = {}
        for line in self.sink.lines:
            if not line.startswith(measurement + ","):
                continue
            name, tags, fields, ts = parse_line(line)
            if name == measurement:
                key = (json.dumps(tags, sort_keys=True), ts)
                merged.setdefault(key, (tags, {}))[1].update(fields)
        return list(merged.values())


def spectro_frame(sample: str, values: np.ndarray | list[float]) -> bytes:
    return (f"R,{sample}," + ",".join(f"{100 * v:.2f}" for v in values) + "\r\n").encode()


def metameric_pair(cm: Colorimetry) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a sample whose D65 tristimulus values are equal and F11's are not: the
    sample adds a reflectance change from the null space of the D65 tristimulus weights."""
    ref = np.array(reflectance("plating"))
    w_d65 = cm.weights(400.0, 10.0, 31, "D65")  # (31, 3)
    w_f11 = cm.weights(400.0, 10.0, 31, "FL11")
    _, _, vt = np.linalg.svd(w_d65.T)
    null = vt[3:].T  # (31, 28): reflectance changes D65 cannot see
    # A change D65 cannot see but F11's lightness can: F11's Y weights minus their D65 part.
    direction = null @ (null.T @ w_f11[:, 1])
    direction /= np.abs(direction).max()
    assert np.allclose(direction @ w_d65, 0, atol=1e-9)
    for scale in np.linspace(0.005, 0.25, 50):
        sample = ref + scale * direction
        if sample.min() < 0 or sample.max() > 1:
            break
        lab = cm.lab(sample, 400, 10, ("D65", "FL11"))
        lab_ref = cm.lab(ref, 400, 10, ("D65", "FL11"))
        if delta_e00(lab[1], lab_ref[1])[0] > 2.5:
            return ref, sample
    raise AssertionError("no metameric pair within reflectance 0-1")


# -- CIEDE2000 -------------------------------------------------------------------------------


def test_ciede2000_reproduces_sharma_wu_dalal_all_34_pairs() -> None:
    with FIXTURE.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 34
    lab1 = np.array([[float(r[k]) for k in ("L1", "a1", "b1")] for r in rows])
    lab2 = np.array([[float(r[k]) for k in ("L2", "a2", "b2")] for r in rows])
    published = np.array([float(r["dE00"]) for r in rows])
    got = delta_e00(lab1, lab2)
    for pair, (g, p) in enumerate(zip(got, published, strict=True), start=1):
        assert abs(g - p) <= 1e-4, f"pair {pair}: {g:.6f} vs published {p:.4f}"
    # ΔE00 is symmetric (pairs 7 and 8 are the same pair swapped).
    assert np.allclose(delta_e00(lab2, lab1), got, atol=1e-12)


@pytest.mark.parametrize("observer", [10, 2])
def test_tristimulus_weights_reproduce_colour_sd_to_xyz(observer: int) -> None:
    cm = Colorimetry(observer, ("D65", "FL11", "LED-B3"))
    rng = np.random.default_rng(5)
    for _ in range(3):
        values = rng.uniform(0.02, 1.2, 31)
        xyz = cm.xyz(values, 400, 10)
        for i, name in enumerate(cm.illuminants):
            assert np.allclose(xyz[i], cm.xyz_direct(values, 400, 10, name), rtol=0, atol=1e-9)
    white = cm.lab(np.ones(31), 400, 10)
    assert np.allclose(white, [[100, 0, 0]] * 3, atol=1e-9)


# -- metamerism ------------------------------------------------------------------------------


def test_metameric_pair_matches_under_d65_and_is_flagged_under_f11(tmp_path: Path) -> None:
    t = Stage(tmp_path, "spectro-31")
    ref, sample = metameric_pair(t.stage.colorimetry)
    affects = "This affects plating tone as customers see it in shops."
    t.store.put(Reference("4711", "clasp", tuple(ref), label="Clasp plating", affects=affects))
    t.handler.frame(spectro_frame("4711-clasp-0042", sample), received_ns=int(DEMO_START * 1e9))

    ((tags, fields),) = t.points()
    assert tags["sku"] == "4711"
    assert tags["part"] == "clasp"
    assert tags["sample"] == "4711-clasp-0042"
    de_d65, de_f11 = float(fields["de00_d65"]), float(fields["de00_f11"])
    assert de_d65 < 0.5  # the rounding of the frame to 0.01 % is all D65 sees
    assert de_f11 > 1.5
    assert fields["metamerism_computable"] == "true"
    assert float(fields["metamerism"]) == pytest.approx(
        max(de_d65, de_f11, float(fields["de00_led_b3"]))
        - min(de_d65, de_f11, float(fields["de00_led_b3"]))
    )
    assert float(fields["mi_f11"]) > 1.5  # ISO 18314-4 index, D65 → F11

    tolerance = [e for e in t.events if e.detector == "color_tolerance"]
    assert len(tolerance) == 1
    event = tolerance[0]
    assert event.level == Level.ALARM
    assert event.channel.name == "qc.4711.clasp.de00_f11"
    assert "Clasp plating SKU 4711 differs from its approved reference under warehouse " in (
        event.message
    )
    assert "fluorescent light (F11)" in event.message
    assert f"ΔE00 {de_f11:.1f}, above the 2 tolerance" in event.message
    assert (
        f"; under daylight (D65) and white LED shop light (LED-B3) it matches (ΔE00 {de_d65:.1f} "
        in (event.message)
    )
    assert event.message.endswith("This affects plating tone as customers see it in shops.")
    assert any(e.detector == "metamerism" for e in t.events)
    line = event.line("floor1", "gw1")
    assert line.startswith("drift_alert,")
    assert "detector=color_tolerance" in line

    # Back to the approved colour: the alert clears.
    t.handler.frame(spectro_frame("4711-clasp-0043", ref), received_ns=int(DEMO_START * 1e9) + 60)
    assert t.events[-1].transition == "cleared" or t.events[-2].transition == "cleared"


def test_drift_channels_carry_de00_per_illuminant(tmp_path: Path) -> None:
    t = Stage(tmp_path, "spectro-31")
    ref = np.array(reflectance("leather"))
    t.store.put(Reference("4711", "strap", tuple(ref)))
    for i in range(5):
        darker = ref * (1 - 0.01 * i)
        t.handler.frame(spectro_frame(f"4711-strap-{i:04d}", darker), received_ns=10**18 + i)
    names = sorted(t.registry.channels)
    assert names == [
        "qc.4711.strap.de00_d65",
        "qc.4711.strap.de00_f11",
        "qc.4711.strap.de00_led_b3",
        "qc.4711.strap.metamerism",
    ]
    channel = t.registry.channels["qc.4711.strap.de00_d65"]
    assert channel.kind == "color"
    assert channel.readings == 5
    drift = t.registry.engine.drift(channel)
    assert drift is not None
    assert [d.name for d in drift.detectors] == ["slope"]
    values = [float(f["de00_d65"]) for _, f in t.points()]
    assert values[0] < 0.05
    assert values == sorted(values)


# -- bad spectra -----------------------------------------------------------------------------


def test_bad_spectra_are_dead_lettered_with_reasons_and_the_stage_goes_on(tmp_path: Path) -> None:
    t = Stage(tmp_path, "spectro-31")
    good = np.array(reflectance("plating"))
    t.store.put(Reference("4711", "clasp", tuple(good)))
    short = spectro_frame("4711-clasp-0001", good[:30])
    too_bright = spectro_frame("4711-clasp-0002", np.r_[good[:30], 1.8])
    negative = spectro_frame("4711-clasp-0003", np.r_[-0.05, good[1:]])
    no_sku = spectro_frame("LOT2411B-004", good)
    for raw in (short, too_bright, negative, no_sku):
        t.handler.frame(raw, received_ns=10**18)
    t.handler.frame(spectro_frame("4711-clasp-0005", good), received_ns=10**18 + 1)

    reasons = [reason for _, reason in t.pipeline.rejected]
    assert len(reasons) == 4
    assert "30 values, expected 31" in reasons[0]
    assert "700 nm: 1.8 outside [0, 1.5]" in reasons[1]
    assert "400 nm: -0.05 outside [0, 1.5]" in reasons[2]
    assert "no SKU: sample id 'LOT2411B-004'" in reasons[3]
    assert next(text for text, _ in t.pipeline.rejected).startswith("R,4711-clasp-0001,")
    assert t.stage.stats.rejected == 2  # the decoder caught the range itself
    assert t.pipeline.metrics.invalid_readings == 4
    ((tags, fields),) = t.points()
    assert tags["sample"] == "4711-clasp-0005"
    assert float(fields["de00_d65"]) < 0.01

    # A spectrum from a profile without a range is checked by the stage itself.
    result = t.stage.spectrum(
        t.handler, Spectrum("4711-clasp-9", 400, 10, (0.5,) * 30 + (1.6,), 10**18 + 2, {}), b"x"
    )
    assert result is None
    assert "1.6 outside [0, 1.5]" in t.pipeline.rejected[-1][1]


def test_sku_comes_from_source_tags_when_the_sample_id_has_none(tmp_path: Path) -> None:
    t = Stage(tmp_path, "spectro-31", sku="4711", part="clasp")
    t.handler.frame(spectro_frame("LOT2411B-007", reflectance("plating")), received_ns=10**18)
    ((tags, fields),) = t.points()
    assert (tags["sku"], tags["part"], tags["sample"]) == ("4711", "clasp", "LOT2411B-007")
    assert "de00_d65" not in fields  # no reference yet: colour, but no difference
    assert t.stage.stats.no_reference == 1


# -- colorimeter -----------------------------------------------------------------------------


def test_colorimeter_gets_de00_under_its_illuminant_and_no_metamerism(tmp_path: Path) -> None:
    t = Stage(tmp_path, "colorimeter-lab", {"colorimeter_illuminant": "D65"})
    t.store.put(Reference("4711", "strap", lab={"D65": (52.31, 12.05, -3.44)}))
    t.handler.frame(b"@4711-strap-01L+052.81a+012.05b-003.44\r\n", received_ns=10**18)
    points = t.points()
    ours = [(tags, f) for tags, f in points if "sku" in tags]
    ((_tags, fields),) = ours
    assert fields["metamerism_computable"] == "false"
    assert "metamerism" not in fields
    assert not any(k.startswith("mi_") for k in fields)
    assert float(fields["L_d65"]) == pytest.approx(52.81)
    want = delta_e00([52.81, 12.05, -3.44], [52.31, 12.05, -3.44])[0]
    assert float(fields["de00_d65"]) == pytest.approx(want, abs=1e-12)
    assert "qc.4711.strap.metamerism" not in t.registry.channels
    assert "qc.4711.strap.de00_d65" in t.registry.channels


def test_colorimeter_against_a_spectral_reference_uses_its_lab_under_d65(tmp_path: Path) -> None:
    t = Stage(tmp_path, "colorimeter-lab")
    ref = reflectance("leather")
    t.store.put(Reference("4711", "strap", tuple(ref)))
    L, a, b = t.stage.colorimetry.lab(ref, 400, 10, ("D65",))[0]
    record = f"@4711-strap-01L{L:+07.2f}a{a:+07.2f}b{b:+07.2f}\r\n".encode()
    t.handler.frame(record, received_ns=10**18)
    ((_, fields),) = [(tags, f) for tags, f in t.points() if "sku" in tags]
    assert float(fields["de00_d65"]) < 0.01
    assert fields["metamerism_computable"] == "false"


# -- references ------------------------------------------------------------------------------


def test_capture_request_turns_the_next_measurement_into_the_reference(tmp_path: Path) -> None:
    t = Stage(tmp_path, "spectro-31")
    cli = ReferenceStore(tmp_path / "references")  # the CLI's own view of the same directory
    cli.request_capture("4711", "clasp", note="golden sample", label="Clasp plating")
    time.sleep(0.01)
    assert t.stage.poll()
    first = np.array(reflectance("plating"))
    t.handler.frame(spectro_frame("4711-clasp-0001", first), received_ns=10**18)
    t.handler.frame(spectro_frame("4711-clasp-0002", first * 0.99), received_ns=10**18 + 1)

    ref = ReferenceStore(tmp_path / "references").get("4711", "clasp")
    assert ref is not None
    assert ref.note == "golden sample"
    assert ref.source == "captured from spectro"
    assert ref.spectrum is not None
    assert np.allclose(ref.spectrum, np.round(first, 4))
    assert not (tmp_path / "references" / "requests" / "4711--clasp.json").exists()
    (_p1, f1), (_p2, f2) = t.points()
    assert f1["reference_captured"] == "true"
    assert float(f1["de00_d65"]) == 0.0
    assert 0.1 < float(f2["de00_d65"]) < 1.0


def test_reference_files_yaml_and_csv(tmp_path: Path) -> None:
    spectrum = [round(v * 100, 2) for v in reflectance("plating")]
    (tmp_path / "refs.yaml").write_text(
        "references:\n"
        "  - sku: '4711'\n    part: clasp\n    label: Clasp plating\n"
        f"    spectrum: {{start_nm: 400, step_nm: 10, unit: percent, values: {spectrum}}}\n"
        "  - sku: '4712'\n    part: strap\n    lab: {L: 40.1, a: 10.2, b: 20.3}\n"
    )
    waves = ",".join(str(w) for w in WAVES)
    (tmp_path / "refs.csv").write_text(
        f"sku,part,note,{waves}\n4713,buckle,golden," + ",".join("0.5" for _ in WAVES) + "\n"
    )
    yaml_refs = load_reference_file(tmp_path / "refs.yaml")
    assert [r.key for r in yaml_refs] == ["4711/clasp", "4712/strap"]
    assert yaml_refs[0].spectrum is not None
    assert yaml_refs[0].spectrum[0] == pytest.approx(spectrum[0] / 100)
    assert yaml_refs[1].lab == {"D65": (40.1, 10.2, 20.3)}
    (csv_ref,) = load_reference_file(tmp_path / "refs.csv")
    assert (csv_ref.start_nm, csv_ref.step_nm, len(csv_ref.spectrum or ())) == (400, 10, 31)
    (tmp_path / "bad.yaml").write_text(
        "references:\n  - sku: '4711'\n    part: clasp\n"
        "    spectrum: {values: [10, 20, 30, 40]}\n"  # percent without unit: percent
    )
    with pytest.raises(ReferenceError, match="reflectance #1 is 10"):
        load_reference_file(tmp_path / "bad.yaml")


def test_reference_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    (tmp_path / "refs.csv").write_text("sku,part,L,a,b\n4712,strap,40,10,20\n")
    assert cli_main(["reference", "import", str(tmp_path / "refs.csv"), "--state-dir", state]) == 0
    assert cli_main(["reference", "capture", "--sku", "4711", "--part", "clasp",
                     "--state-dir", state]) == 0  # fmt: skip
    assert cli_main(["reference", "list", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "4712       strap        L*a*b* D65 40.00 10.00 20.00" in out
    assert "4711       clasp        capture armed" in out
    assert cli_main(["reference", "show", "--sku", "4712", "--part", "strap",
                     "--state-dir", state]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["lab"] == {"D65": [40.0, 10.0, 20.0]}
    assert cli_main(["reference", "clear", "--sku", "4712", "--part", "strap",
                     "--state-dir", state]) == 0  # fmt: skip
    assert cli_main(["reference", "show", "--sku", "4712", "--part", "strap",
                     "--state-dir", state]) == 1  # fmt: skip
    assert cli_main(["reference", "capture", "--sku", "47-11", "--part", "clasp",
                     "--state-dir", state]) == 1  # fmt: skip


def test_color_config_section() -> None:
    cfg = config_from_dict({"site": "s", "gateway": "g", "color": None})
    assert cfg.color.observer == 10
    assert cfg.color.illuminants == ["D65", "FL11", "LED-B3"]
    cfg = config_from_dict(
        {"site": "s", "gateway": "g", "color": {"observer": 2, "illuminants": ["D65", "TL84"]}}
    )
    assert cfg.color.illuminants == ["D65", "FL11"]
    assert [illuminant_slug(n) for n in ("D65", "FL11", "LED-B3")] == ["d65", "f11", "led_b3"]


# -- end to end: emulator → serial pty → agent → spool → InfluxDB ------------------------------


async def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > limit:
            pytest.fail(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[list[tuple[Agent, asyncio.Task[Any]]]]:
    agents: list[tuple[Agent, asyncio.Task[Any]]] = []
    yield agents
    for agent, task in agents:
        agent.stop_event.set()
        await asyncio.wait_for(task, 15)


async def test_spectro_measurement_travels_from_the_emulator_into_influxdb(
    tmp_path: Path,
    serial_pair: SerialPair,
    influx_db: tuple[InfluxDB1Server, str],
    running: list[tuple[Agent, asyncio.Task[Any]]],
) -> None:
    server, db = influx_db
    state = tmp_path / "state"
    # Armed before the agent starts, as `driftgate reference capture` does from a shell.
    ReferenceStore(state / "references").request_capture("4711", "clasp", label="Clasp plating")
    cfg = config_from_dict(
        {
            "site": "floor1",
            "gateway": "gw-color",
            "state_dir": str(state),
            "spool": {"flush_interval": 0.1},
            "self_metrics": {"interval": 60},
            "influx": {"url": server.url, "database": db, "flush_interval": 0.2},
            "sources": [
                {"type": "serial", "name": "spectro", "profile": "spectro-31", "zone": "qc",
                 "port": serial_pair.device, "baud": 9600,
                 "tags": {"sku": "4711", "part": "clasp"}},
            ],
        }
    )  # fmt: skip
    agent = Agent(cfg)
    running.append((agent, asyncio.create_task(agent.run(handle_signals=False))))
    (source,) = agent.sources
    health = source.health  # type: ignore[attr-defined]
    await wait_until(lambda: health.connected, 5, "the port to open")

    emulator = DeviceEmulator("spectro-31", device="plating")
    frames = [emulator.frames(DEMO_START + 60 * i)[0] for i in range(6)]
    port = serial.Serial(serial_pair.emulator, 9600, write_timeout=2)
    bad = b"R,4711-clasp-0099," + b",".join(b"50.00" for _ in range(30)) + b"\r\n"
    for i, frame in enumerate(frames):
        port.write(frame.data)
        if i == 2:
            port.write(bad)
        port.flush()
        await asyncio.sleep(0.05)
    port.close()
    await wait_until(lambda: health.frames == 7, 10, "7 frames")
    await wait_until(lambda: len(server.points("color", db)) == 6, 15, "6 color points")

    # The first measurement became the reference; the others are compared with it.
    cm = Colorimetry(10, ("D65", "FL11", "LED-B3"))
    ref_lab = cm.lab(frames[0].spectrum, 400, 10)
    rows = server.points("color", db)
    assert [r["sample"] for r in rows] == [f.tags["sample"] for f in frames]
    for row, frame in zip(rows, frames, strict=True):
        assert (row["sku"], row["part"], row["zone"], row["site"]) == (
            "4711", "clasp", "qc", "floor1",
        )  # fmt: skip
        want = delta_e00(cm.lab(frame.spectrum, 400, 10), ref_lab)
        for name, de in zip(("d65", "f11", "led_b3"), want, strict=True):
            assert row[f"de00_{name}"] == pytest.approx(de, abs=1e-9)
        lab = cm.lab(frame.spectrum, 400, 10)[0]
        assert [row["L_d65"], row["a_d65"], row["b_d65"]] == pytest.approx(lab, abs=1e-9)
        assert row["metamerism_computable"] is True
        assert row["metamerism"] == pytest.approx(want.max() - want.min(), abs=1e-9)
    assert rows[0]["reference_captured"] is True
    assert all(0 < r["de00_d65"] < 0.2 for r in rows[1:])

    agent.stop_event.set()
    _, task = running.pop()
    await asyncio.wait_for(task, 15)
    conn = sqlite3.connect(spool_path(state))
    try:
        dead = conn.execute("SELECT reason, line FROM dead_letters").fetchall()
    finally:
        conn.close()
    assert len(dead) == 1
    assert "spectrum has 30 values, expected 31" in dead[0][0]
    assert dead[0][1].startswith("R,4711-clasp-0099,")
    ref = ReferenceStore(state / "references").get("4711", "clasp")
    assert ref is not None
    assert ref.source == "captured from spectro"
