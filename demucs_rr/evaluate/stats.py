"""Wilcoxon signed-rank test for paired per-track scores (no scipy needed).

For differences ``d_i = a_i - b_i``: zero differences are dropped (Wilcoxon's original
treatment, scipy's default ``zero_method="wilcox"``), the remaining ``|d_i|`` are ranked with
tied values sharing their average rank, and ``W+`` / ``W-`` are the rank sums of the positive
and negative differences. The two-sided p-value is

* exact when there are at most :data:`EXACT_MAX` differences, no ties and no zeros: twice the
  probability that the rank sum of a random sign assignment is at most ``min(W+, W-)``,
  counted over all ``2^n`` assignments by dynamic programming;
* with ties or zeros among at most :data:`PERMUTATION_MAX` differences, exact too: the
  distribution of ``W+`` over all ``2^n`` sign assignments of the (average) ranks, enumerated;
* otherwise from the normal approximation with the tie correction of the variance
  (``n(n+1)(2n+1)/24 - sum(t^3 - t)/48``) and no continuity correction.

This is what ``scipy.stats.wilcoxon(a, b)`` computes with its defaults (two-sided,
``method="auto"``); the tests check both against scipy and against published tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EXACT_MAX", "PERMUTATION_MAX", "Wilcoxon", "wilcoxon"]

#: Most differences with the exact null distribution of untied ranks (scipy's threshold).
EXACT_MAX = 50
#: Most differences (zeros included) whose sign assignments are enumerated when there are ties
#: or zeros (scipy: below its 9999 random resamples, its permutation test is exhaustive).
PERMUTATION_MAX = 13


@dataclass(frozen=True)
class Wilcoxon:
    """Result of :func:`wilcoxon`.

    Attributes:
        n: number of non-zero differences used.
        statistic: ``min(W+, W-)``.
        w_plus: rank sum of the positive differences (``a`` better).
        pvalue: two-sided p-value (NaN when ``n == 0``).
        method: ``exact``, ``permutation`` (exact, with ties or zeros) or ``normal``.
    """

    n: int
    statistic: float
    w_plus: float
    pvalue: float
    method: str


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) of ``values`` and the sizes of the groups of tied values."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties, start = [], 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for k in range(start, stop + 1):
            ranks[order[k]] = (start + stop) / 2 + 1
        ties.append(stop - start + 1)
        start = stop + 1
    return ranks, ties


def _exact_cdf(n: int, w: float) -> float:
    """P(W <= w) for the rank sum of ``n`` untied ranks with random signs."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top  # counts[s]: sign assignments of ranks 1..k with positive sum s
    for k in range(1, n + 1):
        for s in range(top, k - 1, -1):
            counts[s] += counts[s - k]
    limit = math.floor(w + 1e-9)
    return sum(counts[: limit + 1]) / 2.0**n


def _permutation_p(ranks: Sequence[float], w_plus: float) -> float:
    """Two-sided p of ``W+`` over all sign assignments of ``ranks`` (enumerated)."""
    sums = [0.0]
    for r in ranks:
        sums = sums + [x + r for x in sums]
    tol = 1e-9 * max(1.0, w_plus)
    low = sum(1 for x in sums if x <= w_plus + tol) / len(sums)
    high = sum(1 for x in sums if x >= w_plus - tol) / len(sums)
    return min(1.0, 2 * min(low, high))


def wilcoxon(differences: Sequence[float]) -> Wilcoxon:
    """Two-sided Wilcoxon signed-rank test of paired differences (NaN ones are dropped).

    Args:
        differences: ``a_i - b_i`` per pair (e.g. per track).
    """
    valid = [x for x in differences if not math.isnan(x)]
    d = [x for x in valid if x != 0]
    n = len(d)
    if n == 0:
        return Wilcoxon(0, math.nan, math.nan, math.nan, "exact")
    ranks, ties = _ranks([abs(x) for x in d])
    w_plus = sum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    stat = min(w_plus, n * (n + 1) / 2 - w_plus)
    untied = all(t == 1 for t in ties) and len(valid) == n
    if untied and n <= EXACT_MAX:
        return Wilcoxon(n, stat, w_plus, min(1.0, 2 * _exact_cdf(n, stat)), "exact")
    if not untied and len(valid) <= PERMUTATION_MAX:
        return Wilcoxon(n, stat, w_plus, _permutation_p(ranks, w_plus), "permutation")
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return Wilcoxon(n, stat, w_plus, 1.0, "normal")
    z = (stat - n * (n + 1) / 4) / math.sqrt(var)
    return Wilcoxon(n, stat, w_plus, min(1.0, math.erfc(abs(z) / math.sqrt(2))), "normal")
