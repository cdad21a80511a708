"""Wilcoxon signed-rank test: hand-computed cases, the normal approximation, and scipy's values
on every path (exact, enumerated with ties or zeros, normal with tie correction)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from demucs_rr.evaluate.stats import EXACT_MAX, PERMUTATION_MAX, wilcoxon


@pytest.mark.parametrize(
    ("diffs", "w_plus", "pvalue"),
    [
        ([1.0, 2.0, 3.0], 6.0, 2 / 8),  # every sign positive: 1 of 2^3 assignments, two-sided
        ([0.5, 1.0, 2.0, 3.0, 4.0], 15.0, 2 / 32),  # n = 5 can never reach p < 0.05
        ([-1.0, 2.0, 3.0], 5.0, 2 * 2 / 8),  # W- = 1: subsets {}, {1} of {1, 2, 3}
        ([1.0, -2.0, 3.0, 4.0], 8.0, 2 * 3 / 16),  # W- = 2: subsets {}, {1}, {2} of {1..4}
    ],
)
def test_exact_small_cases_by_hand(diffs: list[float], w_plus: float, pvalue: float) -> None:
    res = wilcoxon(diffs)
    assert res.method == "exact" and res.w_plus == w_plus
    assert res.statistic == min(w_plus, len(diffs) * (len(diffs) + 1) / 2 - w_plus)
    assert res.pvalue == pytest.approx(pvalue, abs=1e-15)


def test_normal_approximation_by_hand() -> None:
    """60 positive untied differences: W- = 0, z = -915 / sqrt(60*61*121/24)."""
    res = wilcoxon([float(k) for k in range(1, 61)])
    z = -915 / math.sqrt(60 * 61 * 121 / 24)
    assert res.method == "normal" and res.statistic == 0
    assert res.pvalue == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-12)
    assert res.pvalue < 1e-10


def test_zeros_and_nans_are_dropped() -> None:
    res = wilcoxon([0.0, float("nan"), 1.0, 2.0, 3.0])
    assert res.n == 3 and res.w_plus == 6.0 and res.method == "permutation"
    assert res.pvalue == pytest.approx(0.25)  # the zeros do not change the sign enumeration
    assert math.isnan(wilcoxon([0.0, 0.0]).pvalue)


@pytest.mark.parametrize(
    "n", [2, 5, PERMUTATION_MAX - 1, PERMUTATION_MAX + 1, EXACT_MAX, EXACT_MAX + 1]
)
@pytest.mark.parametrize("tied", [False, True])
def test_matches_scipy(n: int, tied: bool) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n + 1000 * tied)
    for _ in range(4):
        d = rng.normal(0.3, 1.0, n)
        if tied:
            d = np.round(d, 1)  # ties and zeros
        ours = wilcoxon(d.tolist())
        if ours.n == 0:
            continue
        theirs = stats.wilcoxon(d)
        assert ours.statistic == pytest.approx(float(theirs.statistic), abs=1e-12)
        assert ours.pvalue == pytest.approx(float(theirs.pvalue), abs=1e-12, rel=1e-10)
        if tied and n <= PERMUTATION_MAX:
            assert ours.method in ("permutation", "exact")
