"""Spool → forwarder → a real InfluxDB 1.6, in points/s, beside the raw ingest ceiling.

Starts a private ``influxd`` 1.6 (``tests/servers.py`` InfluxDB1Server: a temporary directory,
HTTP on 127.0.0.1 only). For gzip off and on:

* ``ceiling``: the same lines posted straight to ``/write`` with aiohttp, one connection,
  batches of ``--batch-size`` lines, bodies encoded (and gzipped, level 5 like the forwarder)
  before the clock starts: what this InfluxDB on this machine can take;
* ``forwarder``: a ``Spool`` on a temporary directory filled with the N lines (untimed), then
  ``Forwarder.drain`` timed until the spool is empty: read chunks from SQLite, join, encode,
  gzip, POST, ack (delete) — one batch at a time, as the agent forwards.

The lines are demo-like readings of the workshop simulation (12 channels, one frame per
simulated minute), encoded as ``Pipeline.ingest`` spools them. Every measurement writes to a
fresh database, checks that InfluxDB holds exactly N field values (``SELECT COUNT(*)``:
humidity and temperature of one room share a point, so points are counted per field), then
drops it so that compactions of old data do not slow the next run.

Target: forwarder ≥ 0.8 × ceiling.

    .venv/bin/python bench/forward.py            # N = 500,000, best of 3, ~60 s
    .venv/bin/python bench/forward.py --quick    # N = 100,000, best of 2, ~10 s
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import aiohttp

from agent.metrics import AgentMetrics
from agent.sim.workshop import Workshop
from agent.store.forwarder import Forwarder, ForwarderSettings, Writer, WriteResult, make_writer
from agent.store.spool import Spool

TARGET_RATIO = 0.8
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
INTERVAL = 60.0
GZIP_LEVEL = 5  # what V1Writer uses
TAGS = {"site": "bench", "gateway": "gw1"}


@dataclass
class Measurement:
    kind: str  # "ceiling" or "forwarder"
    gzip: bool
    points: int
    seconds: float
    stored: int
    extra: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def demo_lines(n: int, seed: int = 1) -> list[str]:
    """n line-protocol lines of the simulated workshop, as Pipeline.ingest spools them."""
    shop = Workshop.build(START, seed=seed, tags=TAGS)
    lines: list[str] = []
    t = START
    while len(lines) < n:
        ts_ns = int(t * 1e9)
        lines.extend(f"{ch.prefix}{value!r} {ts_ns}" for ch, value in shop.sample(t))
        t += INTERVAL
    del lines[n:]
    return lines


def stored_values(influx: Any, db: str) -> int:
    """Field values stored in db (all measurements, all fields)."""
    total = 0
    for row in influx.rows("SELECT COUNT(*) FROM /.*/", db):
        total += sum(v for k, v in row.items() if k.startswith("count_") and v)
    return total


async def ceiling(url: str, db: str, bodies: list[bytes], compressed: bool) -> float:
    """POST pre-encoded bodies one after the other on one connection; seconds taken."""
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if compressed:
        headers["Content-Encoding"] = "gzip"
    params = {"db": db, "precision": "ns"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        # The first POST opens the connection, as the forwarder's first write does.
        started = time.perf_counter()
        for body in bodies:
            async with session.post(
                url + "/write", params=params, data=body, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status != 204:
                    raise RuntimeError(f"/write answered {resp.status}: {text[:300]}")
        return time.perf_counter() - started


class Phases:
    """Wall time the forwarder spends in each step (wrapped around the spool and the writer)."""

    def __init__(self) -> None:
        self.seconds = {"read_batch": 0.0, "write": 0.0, "ack": 0.0}

    def timed(self, key: str, fn: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0

        return wrapper

    def writer_factory(self, settings: ForwarderSettings) -> Writer:
        inner = make_writer(settings)
        phases = self

        class TimedWriter:
            async def write(self, body: bytes, gzipped: bytes | None = None) -> WriteResult:
                return await phases.timed("write", inner.write)(body, gzipped)

            async def close(self) -> None:
                await inner.close()

        return TimedWriter()


async def forward(
    url: str, db: str, lines: list[str], compressed: bool, batch: int, workdir: Path
) -> tuple[float, dict[str, Any]]:
    """Fill a spool with the lines (untimed), then time Forwarder.drain to empty."""
    path = workdir / f"{db}.sqlite"
    metrics = AgentMetrics()
    spool = Spool(path, metrics=metrics)
    await spool.open()
    t0 = time.perf_counter()
    spool.extend(lines)
    await spool.flush()
    fill = time.perf_counter() - t0
    before = await spool.stats()
    if before.pending_lines != len(lines):
        raise RuntimeError(f"spool holds {before.pending_lines} lines, not {len(lines)}")
    settings = ForwarderSettings(
        url=url, database=db, gzip=compressed, batch_size=batch, timeout=60.0
    )
    phases = Phases()
    spool.read_batch = phases.timed("read_batch", spool.read_batch)  # type: ignore[method-assign]
    spool.ack = phases.timed("ack", spool.ack)  # type: ignore[method-assign]
    forwarder = Forwarder(spool, settings, metrics, writer_factory=phases.writer_factory)
    started = time.perf_counter()
    done = await forwarder.drain(600.0)
    seconds = time.perf_counter() - started
    after = await spool.stats()
    await spool.close()
    _common.remove_files(workdir, f"{db}.sqlite*")
    if not done or after.pending_lines:
        raise RuntimeError(f"drain left {after.pending_lines} lines in the spool")
    return seconds, {
        "fill_s": round(fill, 2),
        "batches": metrics.forward_batches,
        "forwarded": metrics.forwarded,
        "errors": metrics.forward_errors,
        "retries": metrics.forward_retries,
        **{f"{k}_ms_per_batch": v * 1e3 / max(metrics.forward_batches, 1)
           for k, v in phases.seconds.items()},
    }  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    info = _common.print_header("bench/forward.py: spool → forwarder → InfluxDB 1.6")
    _common.quiet_logs()
    servers = _common.load_servers()
    n = args.points or (100_000 if args.quick else 500_000)
    reps = 2 if args.quick else args.reps
    batch = args.batch_size

    t0 = time.perf_counter()
    lines = demo_lines(n)
    gen_s = time.perf_counter() - t0
    raw = ["\n".join(lines[i : i + batch]).encode() for i in range(0, len(lines), batch)]
    t0 = time.perf_counter()
    zipped = [gzip.compress(b, GZIP_LEVEL) for b in raw]
    gzip_s = time.perf_counter() - t0
    raw_bytes = sum(map(len, raw))
    zip_bytes = sum(map(len, zipped))

    workdir = Path(tempfile.mkdtemp(prefix="driftgate-bench-fwd-"))
    influx = servers.InfluxDB1Server(workdir / "influxdb")
    results: list[Measurement] = []
    try:
        influx.start()
        print(
            f"influxd {influx.url} ({workdir}), {n:,} lines in {len(raw)} batches of {batch:,} "
            f"(generated in {gen_s:.1f} s), {raw_bytes / 1e6:.1f} MB raw, "
            f"{zip_bytes / 1e6:.1f} MB gzipped (level {GZIP_LEVEL}: {gzip_s * 1e3:.0f} ms CPU "
            f"for all batches), best of {reps}"
        )
        print()
        seq = 0
        for rep in range(reps):
            for compressed in (False, True):
                for kind in ("ceiling", "forwarder"):
                    seq += 1
                    db = f"bench_{seq}_{kind}_{'gzip' if compressed else 'plain'}"
                    influx.create_database(db)
                    extra: dict[str, Any] = {"rep": rep}
                    if kind == "ceiling":
                        bodies = zipped if compressed else raw
                        seconds = await ceiling(influx.url, db, bodies, compressed)
                    else:
                        seconds, more = await forward(
                            influx.url, db, lines, compressed, batch, workdir
                        )
                        extra.update(more)
                    stored = stored_values(influx, db)
                    influx.drop_database(db)
                    m = Measurement(kind, compressed, n, seconds, stored, extra)
                    results.append(m)
                    status = "ok" if stored == n else f"MISMATCH ({stored:,} stored)"
                    print(
                        f"  run {rep + 1} {kind:9} gzip={'on ' if compressed else 'off'} "
                        f"{seconds:6.2f} s {m.rate:>9,.0f} points/s  count {status}"
                    )
    finally:
        influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def best(kind: str, compressed: bool) -> Measurement:
        ms = [m for m in results if m.kind == kind and m.gzip == compressed]
        return max(ms, key=lambda m: m.rate)

    print()
    rows = []
    summary: dict[str, Any] = {}
    ratios = []
    for compressed in (False, True):
        c = best("ceiling", compressed)
        f = best("forwarder", compressed)
        ratio = f.rate / c.rate
        ratios.append(ratio)
        label = "on" if compressed else "off"
        rows.append(
            [
                label,
                f"{c.rate:,.0f}",
                f"{f.rate:,.0f}",
                f"{ratio:.2f}",
                f"{f.extra['batches']}",
                f"{f.extra['read_batch_ms_per_batch']:.1f}",
                f"{f.extra['write_ms_per_batch']:.1f}",
                f"{f.extra['ack_ms_per_batch']:.1f}",
                f"{c.seconds * 1e3 / f.extra['batches']:.1f}",
                f"{f.extra['fill_s']:.1f}",
                "yes" if c.stored == n and f.stored == n else "NO",
            ]
        )
        summary[f"gzip_{label}"] = {
            "ceiling_points_per_s": round(c.rate),
            "forwarder_points_per_s": round(f.rate),
            "ratio": round(ratio, 3),
            "ceiling_runs": [
                round(m.rate) for m in results if m.kind == "ceiling" and m.gzip == compressed
            ],
            "forwarder_runs": [
                round(m.rate) for m in results if m.kind == "forwarder" and m.gzip == compressed
            ],
            "forwarder_batches": f.extra["batches"],
            "forwarder_ms_per_batch": {
                k.removesuffix("_ms_per_batch"): round(v, 2)
                for k, v in f.extra.items()
                if k.endswith("_ms_per_batch")
            },
            "ceiling_ms_per_batch": round(c.seconds * 1e3 / f.extra["batches"], 2),
            "forwarder_errors": f.extra["errors"],
            "spool_fill_s": f.extra["fill_s"],
            "counts_ok": c.stored == n and f.stored == n,
        }
    _common.table(
        [
            "gzip",
            "ceiling pts/s",
            "forwarder pts/s",
            "fwd/ceiling",
            "batches",
            "read ms",
            "write ms",
            "ack ms",
            "ceiling ms",
            "fill s",
            "count",
        ],
        rows,
    )
    print()
    print("ceiling: pre-encoded (and pre-gzipped) bodies POSTed back to back, one connection")
    print("forwarder: Forwarder.drain of a spool holding the same lines (fill not timed)")
    print("read / write / ack ms: the forwarder's time per batch in Spool.read_batch, the")
    print("  writer's POST (gzip included) and Spool.ack; ceiling ms: the ceiling's POST per batch")
    counts_ok = all(m.stored == n for m in results)
    meets = min(ratios) >= TARGET_RATIO and counts_ok
    print(
        f"target forwarder/ceiling ≥ {TARGET_RATIO}: {min(ratios):.2f} (worst) → "
        f"{'MET' if meets else 'NOT MET'}; every count == {n:,}: {'yes' if counts_ok else 'NO'}"
    )
    _common.emit_json(
        "forward",
        info,
        quick=args.quick,
        points=n,
        batch_size=batch,
        raw_mb=round(raw_bytes / 1e6, 2),
        gzip_mb=round(zip_bytes / 1e6, 2),
        gzip_all_batches_ms=round(gzip_s * 1e3),
        target_ratio=TARGET_RATIO,
        results=summary,
        counts_ok=counts_ok,
        meets_target=meets,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="100,000 points, best of 2 (~10 s)")
    parser.add_argument("--points", type=int, default=0, help="lines per measurement")
    parser.add_argument("--reps", type=int, default=3, help="runs per measurement (best shown)")
    parser.add_argument("--batch-size", type=int, default=5000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
