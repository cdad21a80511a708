"""Paired comparison of two result groups on the same tracks (``leaderboard --compare A B``).

For each track scored by both, and each stem (and "All", the mean over stems), the difference
A - B of the track scores of both definitions: museval SDR (median over the track's frames)
and global SDR. Per stem and definition: the mean and median difference, how many tracks each
side wins, and the two-sided Wilcoxon signed-rank test of the differences
(:func:`~demucs_rr.evaluate.stats.wilcoxon`), so that a claimed 0.1 dB can be checked against
the spread over tracks.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.conventions import GLOBAL_EPS
from demucs_rr.evaluate.groups import ResultGroup
from demucs_rr.evaluate.metrics import TrackScores
from demucs_rr.evaluate.stats import wilcoxon
from demucs_rr.evaluate.tables import fmt, mean, order_targets

__all__ = ["Comparison", "compare", "comparison_tables"]

DEFINITIONS = ("museval", "global")


@dataclass(frozen=True)
class Comparison:
    """Per-track scores of two groups on their common tracks.

    Attributes:
        a: name of A; b: name of B; dataset: their dataset label.
        tracks: the common tracks, sorted.
        targets: stems scored by both, then ``All``.
        scores: definition -> side (``a``/``b``) -> target -> per-track values (``tracks``
            order).
        notes: one line per track scored by only one side.
        convention: the epsilon convention of the global SDR.
    """

    a: str
    b: str
    dataset: str
    tracks: list[str]
    targets: list[str]
    scores: dict[str, dict[str, dict[str, list[float]]]]
    notes: list[str]
    convention: str

    def differences(self, definition: str, target: str) -> list[float]:
        """A - B per track."""
        side = self.scores[definition]
        return [x - y for x, y in zip(side["a"][target], side["b"][target], strict=True)]


def _track_values(score: TrackScores, targets: list[str], convention: str) -> dict[str, Any]:
    medians, glob = score.medians(), score.global_sdr(convention)
    museval = {t: medians[t]["SDR"] for t in targets}
    global_ = {t: glob[t] for t in targets}
    museval["All"], global_["All"] = mean(museval.values()), mean(global_.values())
    return {"museval": museval, "global": global_}


def compare(a: ResultGroup, b: ResultGroup, convention: str = "mdx") -> Comparison:
    """Pair the tracks of ``a`` and ``b``.

    Raises:
        ConfigError: different datasets, no common stem, or no common track.
    """
    if convention not in GLOBAL_EPS:
        raise ConfigError(f"unknown global SDR convention {convention!r}: use mdx or msst")
    if a.dataset != b.dataset:
        raise ConfigError(f"cannot pair results of different datasets: {a.dataset}, {b.dataset}")
    sa, sb = a.by_name(), b.by_name()
    tracks = sorted(set(sa) & set(sb))
    notes = [f"{n}: scored by {a.model} only" for n in sorted(set(sa) - set(sb))]
    notes += [f"{n}: scored by {b.model} only" for n in sorted(set(sb) - set(sa))]
    if not tracks:
        raise ConfigError(f"{a.model} and {b.model} have no track in common")
    common = set.intersection(*(set(sa[n].targets) & set(sb[n].targets) for n in tracks))
    targets = order_targets(common)
    if not targets:
        raise ConfigError(f"{a.model} and {b.model} share no stem")
    scores: dict[str, dict[str, dict[str, list[float]]]] = {
        d: {s: {t: [] for t in [*targets, "All"]} for s in ("a", "b")} for d in DEFINITIONS
    }
    for name in tracks:
        for side, group in (("a", sa), ("b", sb)):
            values = _track_values(group[name], targets, convention)
            for d in DEFINITIONS:
                for t in [*targets, "All"]:
                    scores[d][side][t].append(values[d][t])
    return Comparison(
        a.model, b.model, a.dataset, tracks, [*targets, "All"], scores, notes, convention
    )


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def comparison_tables(cmp: Comparison) -> dict[str, tuple[list[str], list[list[str]]]]:
    """``summary``: one row per definition and stem (medians and means of both sides, of the
    differences, wins, Wilcoxon W+ and p); ``tracks``: one row per track, A - B per stem."""
    header = [
        "definition",
        "target",
        "tracks",
        f"{cmp.a} median",
        f"{cmp.b} median",
        f"{cmp.a} mean",
        f"{cmp.b} mean",
        "mean A-B",
        "median A-B",
        "A better",
        "B better",
        "Wilcoxon W+",
        "p (two-sided)",
        "test",
    ]
    rows = []
    for d in DEFINITIONS:
        for t in cmp.targets:
            diff = cmp.differences(d, t)
            test = wilcoxon(diff)
            a_vals, b_vals = cmp.scores[d]["a"][t], cmp.scores[d]["b"][t]
            rows.append(
                [
                    d,
                    t,
                    str(sum(not math.isnan(x) for x in diff)),
                    fmt(_median(a_vals)),
                    fmt(_median(b_vals)),
                    fmt(mean(a_vals)),
                    fmt(mean(b_vals)),
                    fmt(mean(diff), 3),
                    fmt(_median(diff), 3),
                    str(sum(x > 0 for x in diff)),
                    str(sum(x < 0 for x in diff)),
                    fmt(test.w_plus, 1),
                    "—" if math.isnan(test.pvalue) else f"{test.pvalue:.3g}",
                    test.method,
                ]
            )
    track_header = ["track", *(f"{t} {d} A-B" for d in DEFINITIONS for t in cmp.targets)]
    track_rows = [
        [name, *(fmt(cmp.differences(d, t)[i], 3) for d in DEFINITIONS for t in cmp.targets)]
        for i, name in enumerate(cmp.tracks)
    ]
    return {"summary": (header, rows), "tracks": (track_header, track_rows)}
