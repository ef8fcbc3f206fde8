"""bench/changepoints.py's streams and scores: labels where the changes are, and F1 and covering
as TCPDBench (van den Burg and Williams 2020) computes them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import changepoints as cb


def test_true_positives_match_each_change_once_within_the_margin() -> None:
    # TCPDBench's own examples (analysis/scripts/metrics.py doctests)
    assert cb.true_positives({1, 10, 20, 23}, {3, 8, 20}) == {1, 10, 20}
    assert cb.true_positives({1, 10, 20, 23}, {1, 3, 8, 20}) == {1, 10, 20}
    assert cb.true_positives({1, 10, 20, 23}, {1, 3, 5, 8, 20}) == {1, 10, 20}
    assert cb.true_positives(set(), {1, 2, 3}) == set()
    assert cb.true_positives({1, 2, 3}, set()) == set()


def test_f1_counts_the_start_as_a_change_in_both_sets() -> None:
    assert cb.f1((10, 20), [10, 20])[0] == 1.0
    assert cb.f1((50,), [10])[0] == pytest.approx(0.5)  # only the start matches
    assert cb.f1((50,), [])[0] == pytest.approx(2 / 3)  # the detector that never fires
    assert cb.f1((50,), [46, 48])[0] == pytest.approx(0.8)  # P 2/3, R 1


def test_covering_of_the_true_segments() -> None:
    assert cb.covering((10, 20), [10, 20], 45) == 1.0
    whole = (10 / 45 * 10 + 10 / 45 * 10 + 25 / 45 * 25) / 45  # one segment covers all three
    assert cb.covering((10, 20), [], 45) == pytest.approx(whole)
    assert cb.covering((), [], 100) == 1.0


@pytest.mark.parametrize("family", cb.FAMILIES + cb.CONTROLS)
def test_streams_are_seeded_and_their_changes_where_the_labels_say(family: str) -> None:
    a = cb.make_series(family, 3)
    assert np.array_equal(a.x, cb.make_series(family, 3).x)
    assert not np.array_equal(a.x, cb.make_series(family, 4).x)
    assert len(a.ns) == len(a.x)
    assert bool(np.all(np.diff(a.ns) > 0))
    if family in cb.CONTROLS:
        assert a.cps == ()
        assert len(a.x) == cb.CONTROL_N
        return
    edges = [0, *a.cps, len(a.x)]
    assert len(a.cps) >= 3
    lengths = np.diff(edges)
    assert lengths[1:].min() >= (150 if family in cb.DAILY else 300)
    if family in ("shifts", "outliers + shifts", "gaps + shifts"):
        for left, cp, right in zip(edges, edges[1:], edges[2:], strict=False):
            before = np.median(a.x[max(left, cp - 200) : cp])
            after = np.median(a.x[cp : min(right, cp + 200)])
            assert abs(after - before) >= 0.3  # every label marks a real step (≥ 0.5 σ)
