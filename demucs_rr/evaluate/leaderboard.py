"""Summaries of result folders: per-target table (Markdown + CSV), SDR box plot, and a ranked
leaderboard merging several folders with published reference numbers.

"All" is the mean over targets of the per-target medians over tracks (how Demucs and SiSEC
tables report it); nSDR is the mean over tracks, then over targets.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.metrics import METRICS, TrackScores, aggregate, read_track_json

SUMMARY_MD, SUMMARY_CSV, SUMMARY_JSON, BOXPLOT = (
    "summary.md", "summary.csv", "summary.json", "sdr_boxplot.png")
MUSDB_ORDER = ("drums", "bass", "other", "vocals")
REFERENCE_SOURCE = ("Demucs v2 repository museval JSONs, MUSDB18 test (50 tracks), median over "
                    "frames and tracks, mean over seeds")

# (name, All, drums, bass, other, vocals): published MUSDB18 test SDR (museval v4 medians).
REFERENCE_ROWS = (
    ("Demucs v2 (official)", 6.28, 6.86, 7.01, 4.42, 6.84),
    ("Demucs v2 + 150 extra", 6.79, 7.58, 7.60, 4.69, 7.29),
    ("Conv-TasNet (official)", 5.73, 6.02, 6.20, 4.27, 6.43),
    ("Conv-TasNet + extra", 5.97, 7.23, 6.67, 3.77, 6.19),
    ("IRM oracle", 8.22, 8.45, 7.12, 7.85, 9.43),
    ("MMDenseLSTM", 6.04, 6.81, 5.40, 4.80, 7.16),
    ("Open-Unmix", 5.33, 5.73, 5.23, 4.02, 6.32),
    ("Wave-U-Net", 3.23, 4.22, 3.21, 2.25, 3.25),
)


@dataclass
class Entry:
    """One leaderboard row: per-target median SDR, their mean, and mean nSDR."""

    name: str
    sdr: dict[str, float]
    all_sdr: float
    nsdr: float
    tracks: int
    reference: bool = False


def _order(targets: list[str]) -> list[str]:
    known = [t for t in MUSDB_ORDER if t in targets]
    return known + sorted(t for t in targets if t not in known)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.2f}"


def summary_table(scores: list[TrackScores]) -> tuple[list[str], list[list[str]]]:
    """Per-target rows (+ an "All" row): median SDR/SIR/ISR/SAR over tracks, mean nSDR."""
    agg = aggregate(scores)
    header = ["target", *(f"{m} (median)" for m in METRICS), "nSDR (mean)", "tracks"]
    rows = [[t, *(_fmt(agg[t][m]) for m in METRICS), _fmt(agg[t]["nSDR"]), str(agg[t]["tracks"])]
            for t in _order(list(agg))]
    rows.append(["All", *(_fmt(_mean([agg[t][m] for t in agg])) for m in METRICS),
                 _fmt(_mean([agg[t]["nSDR"] for t in agg])), str(len(scores))])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    """The same table as CSV (empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if c == "—" else c for c in r] for r in rows])
    return buf.getvalue()


def require_matplotlib() -> None:
    """Raise a one-line :class:`ConfigError` when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("the SDR box plot needs matplotlib: pip install 'demucs_rr[eval]' "
                          "(or pip install matplotlib), or pass --no-plot") from None


def boxplot(scores: list[TrackScores], path: Path, title: str) -> Path:
    """PNG box plot of per-track median SDR, one box per target."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = _order(sorted({t for s in scores for t in s.targets}))
    data = [[s.medians()[t]["SDR"] for s in scores if t in s.targets] for t in targets]
    data = [[v for v in d if not math.isnan(v)] for d in data]
    fig, ax = plt.subplots(figsize=(1.6 * len(targets) + 2, 4.5))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(targets) + 1), targets)
    ax.set_ylabel("SDR (dB), median over 1 s frames")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(scores: list[TrackScores], out: str | Path, title: str,
                  plot: bool = True) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.json`` and the box plot into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = summary_table(scores)
    paths = {"markdown": out / SUMMARY_MD, "csv": out / SUMMARY_CSV, "json": out / SUMMARY_JSON}
    paths["markdown"].write_text(f"# {title}\n\n" + markdown(header, rows))
    paths["csv"].write_text(to_csv(header, rows))
    paths["json"].write_text(json.dumps({"title": title, "targets": aggregate(scores)},
                                        indent=2, allow_nan=True))
    if plot:
        paths["plot"] = boxplot(scores, out / BOXPLOT, title)
    return paths


def load_results(folder: str | Path) -> tuple[str, list[TrackScores]]:
    """Track JSONs below ``folder`` (museval layout ``<folder>/<subset>/<track>.json``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"result folder {folder} does not exist")
    files = sorted(p for p in folder.glob("*/**/*.json") if not p.name.startswith("."))
    if not files:
        raise ConfigError(f"no track JSON files under {folder}/<subset>/")
    scores = [read_track_json(p) for p in files]
    name = str(scores[0].extra.get("model") or folder.name)
    return name, scores


def entry_from(name: str, scores: list[TrackScores]) -> Entry:
    """Leaderboard row of one result folder."""
    agg = aggregate(scores)
    sdr = {t: agg[t]["SDR"] for t in agg}
    return Entry(name=name, sdr=sdr, all_sdr=_mean(list(sdr.values())),
                 nsdr=_mean([agg[t]["nSDR"] for t in agg]), tracks=len(scores))


def reference_entries() -> list[Entry]:
    """Published numbers as labelled reference rows."""
    return [Entry(name=f"{n} [published]", sdr=dict(zip(MUSDB_ORDER, v[1:], strict=True)),
                  all_sdr=v[0], nsdr=math.nan, tracks=50, reference=True)
            for n, *v in REFERENCE_ROWS]


def leaderboard(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """Rows ranked by "All" SDR (best first); reference rows are marked and not numbered."""
    targets = _order(sorted({t for e in entries for t in e.sdr}))
    ranked = sorted(entries, key=lambda e: -e.all_sdr if not math.isnan(e.all_sdr) else math.inf)
    header = ["rank", "model", "All SDR", *targets, "nSDR", "tracks"]
    rows, rank = [], 0
    for e in ranked:
        if not e.reference:
            rank += 1
        rows.append(["ref" if e.reference else str(rank), e.name, _fmt(e.all_sdr),
                     *(_fmt(e.sdr.get(t, math.nan)) for t in targets), _fmt(e.nsdr),
                     str(e.tracks)])
    return header, rows
