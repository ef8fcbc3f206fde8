"""The quality benchmark's stream generator: deterministic, labelled, the sizes it states."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import detector_quality as dq


@pytest.mark.parametrize("family", dq.CHANGES + dq.CONTROLS)
def test_streams_are_seeded_and_sized(family: str) -> None:
    a = dq.make_stream(family, 3)
    b = dq.make_stream(family, 3)
    assert np.array_equal(a.z, b.z)
    assert not np.array_equal(a.z, dq.make_stream(family, 4).z)
    if family in dq.CONTROLS:
        assert a.cp == len(a.z) == dq.N
    else:
        assert dq.WARM + dq.DAY <= a.cp <= dq.N - dq.HORIZON
        assert len(a.z) == a.cp + dq.HORIZON


def test_change_is_where_the_label_says() -> None:
    for rep in range(5):
        s = dq.make_stream("step 2σ", rep)
        before, after = s.z[dq.WARM : s.cp], s.z[s.cp :]
        assert abs(before.mean()) < 0.1
        assert abs(abs(after.mean() - before.mean()) - 2.0) < 0.15
        v = dq.make_stream("var ×2", rep)
        ratio = v.z[v.cp :].std() / v.z[: v.cp].std()
        assert 1.85 < ratio < 2.15


def test_controls_have_unit_noise() -> None:
    assert abs(dq.make_stream("iid", 0).z.std() - 1.0) < 0.02
    ar = dq.make_stream("AR(1) φ0.5", 0).z
    assert abs(ar.std() - 1.0) < 0.05
    assert abs(np.corrcoef(ar[:-1], ar[1:])[0, 1] - dq.AR_PHI) < 0.03
