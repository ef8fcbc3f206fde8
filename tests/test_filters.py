"""The EWMA chart's filter without SciPy: the same values, bit for bit, in any batching; and
an agent with every default detector never imports SciPy (80 MB, a second of start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from agent.drift.filters import ewma


@pytest.mark.parametrize("lam", [0.01, 0.05, 0.2, 0.5, 0.99, 1.0])
def test_ewma_is_lfilter_bit_for_bit_in_any_batching(lam: float) -> None:
    rng = np.random.default_rng(7)
    xs = rng.normal(120.0, 2.0, 2000)
    want, _ = lfilter([lam], [1.0, lam - 1.0], xs, zi=[(1.0 - lam) * 118.0])
    assert np.array_equal(ewma(xs, lam, 118.0), want)
    # Live micro-batches of any size carry z over: the same values as one batch.
    got, z = [], 118.0
    for size in (1, 7, 50, 1, 300, 1641):
        part = ewma(xs[len(got) :][:size], lam, z)
        got += part.tolist()
        z = float(part[-1])
    assert np.array_equal(np.array(got), want)
    assert ewma(xs[:0], lam, 1.0).shape == (0,)


def test_default_detectors_run_without_importing_scipy(tmp_path: Path) -> None:
    """Before: the first EWMA batch imported scipy.signal, on every gateway with a tension
    channel. A simulated workshop (tension channels with cusum, ewma, ...) for three days,
    which needs none of the heavy libraries."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from agent.config import config_from_dict
        from agent.runtime.agent import Agent
        cfg = config_from_dict({{"site": "s", "gateway": "g", "state_dir": {str(tmp_path)!r},
            "sources": [{{"type": "simulated", "name": "sim", "speed": 2000000, "days": 3,
                          "start": "2026-01-05T00:00:00Z"}}]}}, env={{}})
        agent = Agent(cfg)
        result = asyncio.run(agent.run(handle_signals=False))
        ewma = [d for drift in agent.engine for d in drift.detectors if d.name == "ewma"]
        heavy = ("scipy", "colour", "influxdb_client", "apprise", "aiosmtplib", "pymodbus",
                 "matplotlib", "weasyprint")
        print(len(ewma), result.metrics.readings_in, "scipy" in sys.modules,
              ",".join(m for m in heavy if m in sys.modules) or "-")
        """
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
        )
        .stdout.splitlines()[-1]
        .split()
    )
    detectors, readings, scipy, heavy = int(out[0]), int(out[1]), out[2], out[3]
    assert detectors == 8  # one per sewing machine
    assert readings >= 12 * 3 * 1440
    assert scipy == "False"
    # Nor any other heavy library a feature this config does not use would need (footprint:
    # colour-science is ~120 MiB, influxdb-client ~45 MiB; bench/footprint.py measures them).
    assert heavy == "-"
