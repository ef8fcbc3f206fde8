"""Local history: minute aggregates merged across batches and writes pool exactly."""

from __future__ import annotations

import itertools
import math
import sqlite3
from pathlib import Path

import numpy as np

from agent.store.history import MINUTE_NS, History, channel_span, pooled


async def test_minute_aggregates_pool_exactly_across_batches_and_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    t0 = 1_772_409_600 * 10**9  # 2026-03-02T00:00Z
    ns = t0 + np.sort(rng.integers(0, 90 * MINUTE_NS, 5000))
    x = rng.normal(120.0, 2.0, len(ns))
    x[::97] = math.nan  # invalid readings are not history
    history = History(tmp_path / "history.sqlite", flush_interval=60)
    await history.open()
    cuts = [0, 3, 700, 710, 2000, 2001, 2020, 3500, 5000]  # small and big batches
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        part_ns, part_x = ns[a:b].tolist(), x[a:b].tolist()
        if i == 4:
            part_ns, part_x = part_ns[::-1], part_x[::-1]  # out of order within a batch
        history.add_named("ch", part_ns, part_x)
        if i % 2:
            await history.flush()  # minutes split across writes merge in SQLite
    await history.close()
    ok = ~np.isnan(x)
    path = tmp_path / "history.sqlite"
    start, end = t0 + 10 * MINUTE_NS, t0 + 70 * MINUTE_NS
    got = pooled(path, "ch", start, end)
    assert got is not None
    sel = ok & (ns >= start) & (ns < end)
    assert got.n == int(sel.sum())
    assert math.isclose(got.mean, float(x[sel].mean()), rel_tol=1e-12)
    assert math.isclose(got.std, float(x[sel].std(ddof=1)), rel_tol=1e-9)
    assert got.minimum == float(x[sel].min())
    assert got.maximum == float(x[sel].max())
    assert (got.start_ns, got.end_ns) == (start, end)
    first, last = channel_span(path, "ch")
    assert first == int(ns[0]) // MINUTE_NS
    assert last == int(ns[ok][-1]) // MINUTE_NS
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT minute, n, min, max FROM minutes ORDER BY minute").fetchall()
    minutes = ns[ok] // MINUTE_NS
    for minute, n, lo, hi in rows:
        vals = x[ok][minutes == minute]
        assert (n, lo, hi) == (len(vals), vals.min(), vals.max())


async def test_retention_prunes_minutes_older_than_days(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite", days=1.0)
    await history.open()
    t0 = 1_772_409_600 * 10**9
    history.add_named("ch", [t0, t0 + 2 * 86400 * 10**9], [1.0, 2.0])
    await history.flush()  # the first flush prunes (then hourly)
    await history.close()
    with sqlite3.connect(tmp_path / "h.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM minutes").fetchone()[0] == 1
