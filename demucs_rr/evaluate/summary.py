"""The summary of one result folder: a per-stem table of both SDR definitions (Markdown, CSV),
every aggregate in JSON, and a box plot of the per-track scores of each stem.

Columns say which definition and which aggregation over tracks they hold
(:mod:`demucs_rr.evaluate.conventions`); "All" is the mean over stems of the per-stem values
(how Demucs and SiSEC tables report it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.conventions import (
    GLOBAL_EPS,
    TRACK_AGGREGATIONS,
    global_definition,
    global_label,
    legend,
    museval_definition,
    museval_label,
)
from demucs_rr.evaluate.metrics import METRICS, TrackScores, aggregate
from demucs_rr.evaluate.results import SUMMARY_FILES
from demucs_rr.evaluate.tables import fmt, markdown, mean, order_targets, to_csv

__all__ = ["boxplot", "require_matplotlib", "summary_json", "summary_table", "write_summary"]

SUMMARY_MD, SUMMARY_CSV, SUMMARY_JSON, BOXPLOT = SUMMARY_FILES
_COLUMNS = ("SDR", "ISR", "SIR", "SAR")


def summary_table(
    scores: list[TrackScores], tracks_agg: str = "median", convention: str = "mdx"
) -> tuple[list[str], list[list[str]]]:
    """Per-stem rows and an "All" row: museval SDR/ISR/SIR/SAR and the global SDR."""
    agg = aggregate(scores, tracks_agg, convention)
    header = [
        "target",
        *(museval_label(m, tracks_agg) for m in _COLUMNS),
        global_label(convention),
        "tracks",
    ]
    targets = order_targets(agg)
    rows = [
        [t, *(fmt(agg[t][m]) for m in _COLUMNS), fmt(agg[t]["global"]), str(agg[t]["tracks"])]
        for t in targets
    ]
    rows.append(
        [
            "All",
            *(fmt(mean(agg[t][m] for t in targets)) for m in _COLUMNS),
            fmt(mean(agg[t]["global"] for t in targets)),
            str(len(scores)),
        ]
    )
    return header, rows


def require_matplotlib() -> None:
    """Raise a one-line :class:`ConfigError` when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the SDR box plot needs matplotlib: pip install 'demucs_rr[eval]' "
            "(or pip install matplotlib), or pass --no-plot"
        ) from None


def boxplot(scores: list[TrackScores], path: Path, title: str) -> Path:
    """PNG box plots of the per-track scores of each stem: museval SDR (median over frames)
    and global SDR, side by side."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = order_targets({t for s in scores for t in s.targets})
    per_def = {
        "SDR museval (track median over 1 s frames)": [
            [s.medians()[t]["SDR"] for s in scores if t in s.targets] for t in targets
        ],
        f"SDR global (whole track, eps {GLOBAL_EPS['mdx']:g})": [
            [s.global_sdr()[t] for s in scores if t in s.targets] for t in targets
        ],
    }
    fig, axes = plt.subplots(1, 2, figsize=(3.2 * len(targets) + 2, 4.5), sharey=True)
    for ax, (label, data) in zip(axes, per_def.items(), strict=True):
        ax.boxplot([[v for v in d if not math.isnan(v)] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(targets) + 1), targets)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("dB, one point per track")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _meta(scores: list[TrackScores]) -> dict[str, Any]:
    """Dataset and settings recorded by the results (those of the first track)."""
    extra = scores[0].extra if scores else {}
    return {k: extra[k] for k in ("dataset", "settings") if isinstance(extra.get(k), dict)}


def _describe(meta: dict[str, Any]) -> str:
    """One Markdown line naming the dataset and the settings."""
    parts = []
    if "dataset" in meta:
        d = meta["dataset"]
        parts.append(f"Dataset: {d.get('kind')} {d.get('subset')} (`{d.get('root')}`).")
    if "settings" in meta:
        parts.append(
            "Settings: " + ", ".join(f"{k} {v}" for k, v in meta["settings"].items()) + "."
        )
    return " ".join(parts) + "\n\n" if parts else ""


def summary_json(scores: list[TrackScores], title: str) -> dict[str, Any]:
    """Every aggregate: museval metrics with both track aggregations, global SDR with both
    epsilons, per stem and for "All", with their definitions."""
    by_agg = {a: aggregate(scores, a) for a in TRACK_AGGREGATIONS}
    by_eps = {c: aggregate(scores, "median", c) for c in GLOBAL_EPS}
    targets = order_targets(by_agg["median"])
    rows: dict[str, Any] = {}
    for t in targets:
        rows[t] = {
            "museval": {a: {m: by_agg[a][t][m] for m in METRICS} for a in TRACK_AGGREGATIONS},
            "global": {c: by_eps[c][t]["global"] for c in GLOBAL_EPS},
            "tracks": by_agg["median"][t]["tracks"],
        }
    rows["All"] = {
        "museval": {
            a: {m: mean(rows[t]["museval"][a][m] for t in targets) for m in METRICS}
            for a in TRACK_AGGREGATIONS
        },
        "global": {c: mean(rows[t]["global"][c] for t in targets) for c in GLOBAL_EPS},
        "tracks": len(scores),
    }
    return {
        "title": title,
        **_meta(scores),
        "tracks": len(scores),
        "definitions": {
            "museval": {a: museval_definition(a) for a in TRACK_AGGREGATIONS},
            "global": {c: global_definition(c) for c in GLOBAL_EPS},
            "all": "mean over the stems",
        },
        "targets": rows,
    }


def write_summary(
    scores: list[TrackScores],
    out: str | Path,
    title: str,
    plot: bool = True,
    tracks_agg: str = "median",
    convention: str = "mdx",
) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.json`` and the box plot into ``out``.

    The Markdown and JSON files also name the dataset and settings the results record and
    define the columns.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = summary_table(scores, tracks_agg, convention)
    paths = {"markdown": out / SUMMARY_MD, "csv": out / SUMMARY_CSV, "json": out / SUMMARY_JSON}
    paths["markdown"].write_text(
        f"# {title}\n\n{_describe(_meta(scores))}"
        + markdown(header, rows)
        + f"\n{legend(tracks_agg, convention)}\n"
    )
    paths["csv"].write_text(to_csv(header, rows))
    paths["json"].write_text(json.dumps(summary_json(scores, title), indent=2, allow_nan=True))
    if plot:
        paths["plot"] = boxplot(scores, out / BOXPLOT, title)
    return paths
