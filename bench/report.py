"""Context comparison on the hot path, and `driftgate report`'s time.

1. The lot tracker is a pipeline stage: every watched channel's batch passes through it. Its
   CPU time per batch of 64 readings, for 200 channels, comparing on `[lot]` and on
   `[lot, operator, shift]`: while samples fill, the batch that completes them (summaries and
   the comparison: once per channel and context change), and once they are full (the steady
   state: one set lookup per batch).
2. The report from a state dir: the two demo lots (19 channels, agent.sim.lots) and a large
   gateway (200 channels, two lots of 500 readings each, written to history.sqlite): gathering
   the samples and statistics, the HTML, and the PDF (WeasyPrint, where it loads).

Usage: python bench/report.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
import numpy as np

from agent.config import config_from_dict
from agent.drift.compare import StoredSample
from agent.reading import Channel
from agent.report.data import gather
from agent.report.html import render
from agent.runtime.build import build
from agent.sim.lots import LOT_A, LOT_B, make_two_lots
from agent.store.history import History, history_path

QUICK = "--quick" in sys.argv
CHANNELS = 200
BATCH = 64
ROUNDS = 3 if QUICK else 7


def tracker_us(keys: list[str], state: Path, phase: str) -> float:
    """CPU µs per channel batch through LotTracker.add, 200 channels, median of rounds.

    ``filling``: the batch only adds to the samples; ``completing``: the batch that completes
    every sample (summary points, Welch and KS against the previous value's sample: once per
    channel and context change); ``full``: every sample complete (the steady state).
    """
    size = 10 if phase == "completing" else 100_000 if phase == "filling" else BATCH
    cfg = config_from_dict({
        "site": "s", "gateway": "g", "state_dir": str(state), "lots": {"readings": size},
        "channels": [{"name": f"z.m{i:03d}.tension", "compare_on": keys} for i in range(CHANNELS)],
    })  # fmt: skip
    core = build(cfg)
    lots = core.lots
    assert lots is not None
    lots.sink = None  # the history is not open here: its writes are the worker thread's
    channels = [
        core.registry.add(Channel(name=f"z.m{i:03d}.tension", measurement="tension",
                                  field="tension_cn", unit="cN", kind="tension",
                                  tags={"zone": "z", "line": "L1"}))
        for i in range(CHANNELS)
    ]  # fmt: skip
    rng = np.random.default_rng(2)
    values = [rng.normal(123.4, 2.0, BATCH).tolist() for _ in range(64)]
    stamps = [list(range(k * BATCH, (k + 1) * BATCH)) for k in range(64)]
    t = 0

    def change(value: str) -> None:
        core.context.set("line", "L1", dict.fromkeys(keys, value), save=False)
        core.registry.retag_all()
        lots.context_changed()

    def batch(ch: Channel) -> None:
        nonlocal t
        lots.add(ch, stamps[t % 64], values[t % 64])  # made up front: the tracker's time only
        t += 1

    change("v0")
    for ch in channels:  # a first sample everywhere: the next ones are compared with it
        batch(ch)
    per_round = []
    for r in range(ROUNDS):
        if phase == "completing":
            change(f"v{r + 1}")
        batches = 1 if phase == "completing" else 20
        t0 = time.thread_time()
        for _ in range(batches):
            for ch in channels:
                batch(ch)
        per_round.append((time.thread_time() - t0) / (batches * CHANNELS) * 1e6)
    return statistics.median(per_round)


async def big_state(state: Path, channels: int, n: int) -> None:
    """Two lots of n readings on each of `channels` channels, straight into the history."""
    history = History(history_path(state))
    rng = np.random.default_rng(1)
    for i in range(channels):
        meta = {"label": f"Machine {i:03d} thread tension", "unit": "cN", "kind": "tension",
                "effect": 3.0, "alpha": 0.01, "tags": {"zone": "sewing", "site": "s"}}  # fmt: skip
        for j, lot in enumerate((LOT_A, LOT_B)):
            shift = 4.0 if (j == 1 and i == 7) else 0.0
            values = tuple(np.round(rng.normal(123.4 + shift, 2.0, n), 1).tolist())
            first = (j * 86400 + i) * 10**9
            history.add_sample(
                StoredSample(f"sewing.m{i:03d}.tension", "lot", lot, values, first,
                             first + n * 60 * 10**9, meta)
            )  # fmt: skip
    await history.flush()
    await history.close()


def time_report(state: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    data = gather(state, LOT_B, against=LOT_A)
    t1 = time.perf_counter()
    html = render(data)
    t2 = time.perf_counter()
    result = {
        "channels": len(data.channels) + len(data.colour),
        "differ": len(data.differing),
        "gather_ms": (t1 - t0) * 1e3,
        "html_ms": (t2 - t1) * 1e3,
        "html_kib": len(html.encode()) / 1024,
    }
    try:
        from agent.report.pdf import write_pdf

        t3 = time.perf_counter()
        write_pdf(html, out / "r.pdf")
        result["pdf_ms"] = (time.perf_counter() - t3) * 1e3
        result["pdf_kib"] = (out / "r.pdf").stat().st_size / 1024
    except Exception as exc:  # no WeasyPrint here: the HTML figures stand
        print(f"  (no PDF: {exc})")
    return result


def main() -> None:
    machine = _common.print_header("Context comparison and driftgate report")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracker = []
        for keys in (["lot"], ["lot", "operator", "shift"]):
            for phase in ("filling", "completing", "full"):
                us = tracker_us(keys, root / f"t{len(keys)}{phase}", phase)
                tracker.append({"keys": ", ".join(keys), "phase": phase,
                                "us_per_batch": round(us, 2)})  # fmt: skip
        print(f"LotTracker.add, CPU µs per channel batch of {BATCH} readings, {CHANNELS} channels:")
        _common.table(
            ["compare_on", "phase", "µs/batch"],
            [[r["keys"], r["phase"], f"{r['us_per_batch']:.2f}"] for r in tracker],
        )
        print()
        demo = root / "demo"
        asyncio.run(make_two_lots(demo))
        big = root / "big"
        asyncio.run(big_state(big, CHANNELS, 500))
        reports = []
        for name, state in (("demo floor (agent.sim.lots)", demo),
                            (f"{CHANNELS} channels × 2 lots × 500 readings", big)):  # fmt: skip
            r = time_report(state, root)
            reports.append({"state": name, **{k: round(v, 1) for k, v in r.items()}})
        print("driftgate report (one run each; wall ms):")
        _common.table(
            ["state", "channels", "differ", "gather", "HTML", "HTML KiB", "PDF", "PDF KiB"],
            [[r["state"], r["channels"], r["differ"], r["gather_ms"], r["html_ms"],
              r["html_kib"], r.get("pdf_ms", "-"), r.get("pdf_kib", "-")]
             for r in reports],
        )  # fmt: skip
        print()
    steady = max(r["us_per_batch"] for r in tracker if r["phase"] == "full")
    _common.emit_json(
        "report",
        machine,
        quick=QUICK,
        tracker=tracker,
        reports=reports,
        tracker_steady_us=steady,
        meets_target=steady <= 5.0,
    )


if __name__ == "__main__":
    main()
