"""Before/after table of two evaluations on the same tracks: a model and its fine-tuned version.

``demucs-rr evaluate -n FINE_TUNED ... --before BASE_RESULTS`` prints it after scoring. Per
stem: SDR (median over the common tracks of each track's median over frames, museval's
aggregation) and nSDR (mean over the common tracks), before, after and the difference. Stems
of one model only (added or dropped by the fine-tuning) show ``—`` on the other side; the
``All`` row is the mean over the stems both models have. Only tracks scored by both count.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.metrics import TrackScores
from demucs_rr.evaluate.results import result_files
from demucs_rr.evaluate.trackjson import read_track_json

__all__ = ["before_after_table"]


def _scores(folder: Path) -> dict[str, TrackScores]:
    """Track name -> scores of a result folder (``<out>/<subset>/<track>.json``)."""
    files = result_files(folder)
    if not files:
        raise ConfigError(f"no evaluation results in {folder} (expected <out>/<subset>/*.json)")
    return {path.stem: read_track_json(path) for path in files}


def _dataset(scores: dict[str, TrackScores]) -> object:
    return next(iter(scores.values())).extra.get("dataset")


def _stat(scores: list[TrackScores], stem: str) -> tuple[float, float]:
    """(median SDR over tracks, mean nSDR) of ``stem``; NaN when a track lacks it."""
    if any(stem not in s.targets for s in scores):
        return math.nan, math.nan
    sdr = [s.medians()[stem]["SDR"] for s in scores]
    finite = [v for v in sdr if not math.isnan(v)]
    return (
        statistics.median(finite) if finite else math.nan,
        statistics.fmean(s.nsdr[stem] for s in scores),
    )


def _fmt(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def before_after_table(before: str | Path, after: str | Path) -> str:
    """The Markdown before/after table of two result folders (see the module docstring).

    Raises:
        ConfigError: a folder without results, results of different datasets, or no track
            in common.
    """
    old, new = _scores(Path(before)), _scores(Path(after))
    if _dataset(old) != _dataset(new):
        raise ConfigError(
            f"{before} and {after} score different datasets; evaluate both on the same tracks"
        )
    common = sorted(old.keys() & new.keys())
    if not common:
        raise ConfigError(f"{before} and {after} have no track in common")
    first_old, first_new = old[common[0]].targets, new[common[0]].targets
    stems = list(first_old) + [s for s in first_new if s not in first_old]
    header = "| stem | SDR before | SDR after | Δ SDR | nSDR before | nSDR after | Δ nSDR |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    deltas: list[tuple[float, float, float, float]] = []
    for stem in stems:
        sdr_a, nsdr_a = _stat([old[t] for t in common], stem)
        sdr_b, nsdr_b = _stat([new[t] for t in common], stem)
        cells = [_fmt(sdr_a), _fmt(sdr_b), _fmt(sdr_b - sdr_a, True)]
        cells += [_fmt(nsdr_a), _fmt(nsdr_b), _fmt(nsdr_b - nsdr_a, True)]
        lines.append(f"| {stem} | " + " | ".join(cells) + " |")
        if not math.isnan(nsdr_a) and not math.isnan(nsdr_b):
            deltas.append((sdr_a, sdr_b, nsdr_a, nsdr_b))
    if deltas:
        mean = [statistics.fmean(column) for column in zip(*deltas, strict=True)]
        cells = [_fmt(mean[0]), _fmt(mean[1]), _fmt(mean[1] - mean[0], True)]
        cells += [_fmt(mean[2]), _fmt(mean[3]), _fmt(mean[3] - mean[2], True)]
        lines.append("| All (stems of both) | " + " | ".join(cells) + " |")
    title = f"before: {before}, after: {after}; {len(common)} tracks in common"
    return title + "\n\n" + "\n".join(lines) + "\n"
