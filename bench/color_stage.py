"""Colour stage cost per measurement, in ms on one core.

A spectrophotometer frame (31 values, 400-700 nm) of SKU 4711 / clasp with a spectral reference,
three illuminants (D65, F11, LED-B3), 10° observer, measured as:

* ``frame → colour point``: FrameHandler.frame (decode, the raw spectrum point, the colour
  stage: L*a*b* ×3, ΔE00 ×3, metamerism spread and ISO index, channels, alert state);
* ``colour stage only``: ColorStage.spectrum on an already decoded Spectrum;
* ``L*a*b* ×3 (weights)``: Colorimetry.lab (colour-science's tristimulus weights, cached);
* ``colour-science direct``: what the stage would cost calling colour.sd_to_XYZ, XYZ_to_Lab and
  delta_E per measurement (the numbers the cached weights reproduce);
* ``colorimeter frame``: a colorimeter L*a*b* frame against a Lab reference (ΔE00 under D65);
* the one-off cost of the first measurement (importing colour-science, computing weights).

Pinned to one CPU, BLAS threads 1. Times are CPU time of this thread (median of rounds).

    .venv/bin/python bench/color_stage.py            # ~20 s
    .venv/bin/python bench/color_stage.py --quick    # ~4 s
"""

# ruff: noqa: E402 (BLAS thread variables must be set before NumPy is imported)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import emit_json, print_header, quiet_logs, table

from agent.color.colorimetry import _colour
from agent.color.references import Reference
from agent.color.stage import ColorStage
from agent.config import config_from_dict
from agent.ingest.decode import Decoder
from agent.ingest.frames import FrameHandler, SourceHealth
from agent.ingest.profiles import load_profile
from agent.pipeline import Pipeline
from agent.runtime.build import build
from agent.sim.devices import reflectance


class _Lines:
    """Collects spooled lines in memory (the SQLite commit is the spool's cost, not ours)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def append(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > 10_000:
            self.lines.clear()

    def extend(self, lines: list[str]) -> None:
        for line in lines:
            self.append(line)


def _handler(tmp: Path, profile: str) -> tuple[FrameHandler, ColorStage, Pipeline]:
    cfg = config_from_dict({"site": "floor1", "gateway": "gw1", "state_dir": str(tmp / profile)})
    core = build(cfg, spool=_Lines())  # type: ignore[arg-type]
    assert core.color is not None
    handler = FrameHandler(
        "bench",
        Decoder(load_profile(profile), tags={"zone": "qc"}),
        core.pipeline,
        core.registry,
        prefix="qc",
        base_tags={"zone": "qc"},
        health=SourceHealth(),
        measurements=core.color,
    )
    return handler, core.color, core.pipeline


def _per_call_ms(fn: Callable[[int], None], n: int, rounds: int) -> float:
    results = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        for i in range(n):
            fn(i)
        results.append((time.thread_time_ns() - t0) / n / 1e6)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer measurements")
    args = parser.parse_args()
    n, rounds = (200, 3) if args.quick else (1000, 5)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    quiet_logs()
    machine = print_header(f"Colour stage cost per measurement (pinned to CPU {cpu})")

    tmp = Path(tempfile.mkdtemp(prefix="bench-color-"))
    plating = reflectance("plating")
    frames = [
        (f"R,4711-clasp-{i:04d}," + ",".join(f"{100 * r * (1 - 1e-4 * (i % 50)):.2f}"
                                             for r in plating) + "\r\n").encode()
        for i in range(n)
    ]  # fmt: skip

    handler, stage, pipeline = _handler(tmp, "spectro-31")
    stage.references.put(Reference("4711", "clasp", tuple(plating)))
    t0 = time.perf_counter()
    handler.frame(frames[0], received_ns=10**18)
    first_ms = (time.perf_counter() - t0) * 1e3  # colour-science import + weights

    ts = [10**18]

    def frame_path(i: int) -> None:
        ts[0] += 60 * 10**9
        handler.frame(frames[i], received_ns=ts[0])
        if i % 64 == 0:
            pipeline.process()

    decoded = [
        handler.decoder.decode(f, None, received_ns=10**18 + i) for i, f in enumerate(frames)
    ]
    spectra = [d.spectrum for d in decoded]

    def stage_only(i: int) -> None:
        spectrum = spectra[i]
        assert spectrum is not None
        stage.spectrum(handler, spectrum, frames[i])

    cm = stage.colorimetry

    def lab_only(i: int) -> None:
        spectrum = spectra[i]
        assert spectrum is not None
        cm.lab(spectrum.values, 400.0, 10.0)

    colour = _colour()
    cmfs = colour.MSDS_CMFS["CIE 1964 10 Degree Standard Observer"]
    illuminants = [colour.SDS_ILLUMINANTS[k] for k in cm.illuminants]
    whites = [cm.white_xy(k) for k in cm.illuminants]
    ref_lab = cm.lab(plating, 400, 10)
    wavelengths = [400 + 10 * k for k in range(31)]

    def direct(i: int) -> None:
        spectrum = spectra[i]
        assert spectrum is not None
        sd = colour.SpectralDistribution(spectrum.values, wavelengths)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j, ill in enumerate(illuminants):
                xyz = colour.sd_to_XYZ(sd, cmfs, ill) / 100
                lab = colour.XYZ_to_Lab(xyz, whites[j])
                colour.delta_E(lab, ref_lab[j], method="CIE 2000")

    lab_handler, lab_stage, lab_pipeline = _handler(tmp, "colorimeter-lab")
    lab_stage.references.put(Reference("4711", "strap", lab={"D65": (52.31, 12.05, -3.44)}))
    records = [
        f"@4711-strap-{i % 100:02d}L+052.{i % 90 + 10:02d}a+012.05b-003.44\r\n".encode()
        for i in range(n)
    ]
    lab_ts = [10**18]

    def colorimeter(i: int) -> None:
        lab_ts[0] += 60 * 10**9
        lab_handler.frame(records[i], received_ns=lab_ts[0])
        if i % 64 == 0:
            lab_pipeline.process()

    rows: list[list[Any]] = []
    results: dict[str, float] = {}
    for name, key, fn in (
        ("frame → colour point (spectro, 3 lights)", "frame_ms", frame_path),
        ("colour stage only", "stage_ms", stage_only),
        ("L*a*b* ×3 (colour's weights, cached)", "lab_ms", lab_only),
        ("colour-science direct (sd_to_XYZ ×3 …)", "direct_ms", direct),
        ("colorimeter frame (ΔE00 under D65)", "colorimeter_ms", colorimeter),
    ):
        ms = _per_call_ms(fn, n, rounds)
        results[key] = round(ms, 4)
        rows.append([name, f"{ms:.3f}", f"{1000 / ms:,.0f}"])
    rows.append(["first measurement (import colour, weights)", f"{first_ms:.0f}", "-"])
    results["first_measurement_ms"] = round(first_ms, 1)
    table(["path", "ms / measurement", "measurements / s"], rows)
    print()
    print(
        f"{stage.stats.measurements} spectra compared, {lab_stage.stats.measurements} colorimeter "
        f"readings; a spectrophotometer sends one every few seconds at most."
    )
    emit_json("color_stage", machine, n=n, rounds=rounds, cpu=cpu, **results)


if __name__ == "__main__":
    main()
