"""Summaries of result folders: per-target table (Markdown + CSV), SDR box plot, and a ranked
leaderboard merging several folders with published reference numbers.

"All" is the mean over targets of the per-target medians over tracks (how Demucs and SiSEC
tables report it); nSDR is the mean over tracks, then over targets. Leaderboard rows carry
their dataset label (``musdb-test``, ``folder-<name>-<subset>``, ...) and are ranked within
their dataset; rows that would read the same get their folder name appended.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.metrics import METRICS, TrackScores, aggregate, read_track_json
from demucs_rr.evaluate.results import SUMMARY_FILES, RunRecord, dataset_label, read_record
from demucs_rr.sources import MUSDB_SOURCES

SUMMARY_MD, SUMMARY_CSV, SUMMARY_JSON, BOXPLOT = SUMMARY_FILES
#: Dataset label of the published reference rows (compressed MUSDB18, test set).
REFERENCE_DATASET = "musdb-test"
REFERENCE_SOURCE = (
    "Demucs v2 repository museval JSONs, MUSDB18 test (50 tracks), median over "
    "frames and tracks, mean over seeds"
)

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
    """One leaderboard row: per-target median SDR, their mean, and mean nSDR.

    Attributes:
        name: model label shown (made unique by :func:`label_entries`).
        sdr: target -> median SDR over tracks.
        all_sdr: mean of ``sdr``.
        nsdr: mean nSDR over tracks, then targets.
        tracks: number of tracks.
        dataset: dataset label (``musdb-test``, ``folder-<name>-<subset>``, ...).
        folder: result folder the row comes from (None for published rows).
        reference: a published row.
    """

    name: str
    sdr: dict[str, float]
    all_sdr: float
    nsdr: float
    tracks: int
    dataset: str = REFERENCE_DATASET
    folder: Path | None = None
    reference: bool = False


@dataclass(frozen=True)
class ResultGroup:
    """The track results of one subset folder (``<out>/<subset>/``) of a result folder.

    Attributes:
        folder: the result folder (``<out>``).
        model: model label recorded in the results (else the folder name).
        dataset: dataset label recorded in the results (``unrecorded-<subset>`` when absent).
        scores: the tracks' scores.
    """

    folder: Path
    model: str
    dataset: str
    scores: list[TrackScores]


def _order(targets: list[str]) -> list[str]:
    known = [t for t in MUSDB_SOURCES if t in targets]
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
    rows = [
        [t, *(_fmt(agg[t][m]) for m in METRICS), _fmt(agg[t]["nSDR"]), str(agg[t]["tracks"])]
        for t in _order(list(agg))
    ]
    rows.append(
        [
            "All",
            *(_fmt(_mean([agg[t][m] for t in agg])) for m in METRICS),
            _fmt(_mean([agg[t]["nSDR"] for t in agg])),
            str(len(scores)),
        ]
    )
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
        raise ConfigError(
            "the SDR box plot needs matplotlib: pip install 'demucs_rr[eval]' "
            "(or pip install matplotlib), or pass --no-plot"
        ) from None


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


def _summary_meta(scores: list[TrackScores]) -> dict:
    """Dataset and settings recorded by the results (those of the first track)."""
    extra = scores[0].extra if scores else {}
    return {k: extra[k] for k in ("dataset", "settings") if isinstance(extra.get(k), dict)}


def _describe(meta: dict) -> str:
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


def write_summary(
    scores: list[TrackScores], out: str | Path, title: str, plot: bool = True
) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.json`` and the box plot into ``out``.

    The Markdown and JSON files also name the dataset and settings the results record.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = summary_table(scores)
    meta = _summary_meta(scores)
    paths = {"markdown": out / SUMMARY_MD, "csv": out / SUMMARY_CSV, "json": out / SUMMARY_JSON}
    paths["markdown"].write_text(f"# {title}\n\n{_describe(meta)}" + markdown(header, rows))
    paths["csv"].write_text(to_csv(header, rows))
    paths["json"].write_text(
        json.dumps(
            {"title": title, **meta, "tracks": len(scores), "targets": aggregate(scores)},
            indent=2,
            allow_nan=True,
        )
    )
    if plot:
        paths["plot"] = boxplot(scores, out / BOXPLOT, title)
    return paths


def _subset_dirs(path: Path) -> list[Path]:
    """Folders holding track JSON files, at or below ``path``."""
    return sorted(
        {
            p.parent
            for p in path.rglob("*.json")
            if not p.name.startswith(".") and p.name != SUMMARY_JSON
        }
    )


def _load_group(subset_dir: Path) -> ResultGroup:
    """Read one subset folder; its results must share dataset and settings."""
    files = sorted(p for p in subset_dir.glob("*.json") if not p.name.startswith("."))
    scores = [read_track_json(p) for p in files]
    first = read_record(files[0])
    if "dataset" in first and "settings" in first:
        record = RunRecord(first["dataset"], first["settings"])
        for path, score in zip(files[1:], scores[1:], strict=True):
            problem = record.mismatch(score.extra)
            if problem is not None:
                raise ConfigError(
                    f"{subset_dir} mixes results made differently ({path.name}: "
                    f"{problem}); evaluate them into separate folders"
                )
    model = first.get("model") or (first.get("settings") or {}).get("model")
    return ResultGroup(
        folder=subset_dir.parent,
        model=str(model or subset_dir.parent.name),
        dataset=dataset_label(first.get("dataset"), f"unrecorded-{subset_dir.name}"),
        scores=scores,
    )


def load_results(path: str | Path) -> list[ResultGroup]:
    """Every result found at or below ``path`` (a result folder, or a folder of them).

    Raises:
        ConfigError: no such folder, no track JSON files, or a subset folder whose results
            record different datasets or settings.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"result folder {path} does not exist")
    dirs = _subset_dirs(path)
    if not dirs:
        raise ConfigError(f"no track JSON files under {path} (expected <out>/<subset>/*.json)")
    return [_load_group(d) for d in dirs]


def entry_from(group: ResultGroup) -> Entry:
    """Leaderboard row of one group of results."""
    agg = aggregate(group.scores)
    sdr = {t: agg[t]["SDR"] for t in agg}
    return Entry(
        name=group.model,
        sdr=sdr,
        all_sdr=_mean(list(sdr.values())),
        nsdr=_mean([agg[t]["nSDR"] for t in agg]),
        tracks=len(group.scores),
        dataset=group.dataset,
        folder=group.folder,
    )


def label_entries(entries: list[Entry]) -> list[Entry]:
    """Make rows of the same model and dataset distinct: append the folder name, else path."""
    original = [e.name for e in entries]
    for show in (lambda folder: folder.name, str):
        counts = Counter((e.name, e.dataset) for e in entries)
        clashing = [
            i
            for i, e in enumerate(entries)
            if counts[(e.name, e.dataset)] > 1 and e.folder is not None
        ]
        if not clashing:
            break
        for i in clashing:
            entries[i].name = f"{original[i]} ({show(entries[i].folder)})"
    return entries


def reference_entries() -> list[Entry]:
    """Published numbers as labelled reference rows."""
    return [
        Entry(
            name=f"{n} [published]",
            sdr=dict(zip(MUSDB_SOURCES, v[1:], strict=True)),
            all_sdr=v[0],
            nsdr=math.nan,
            tracks=50,
            dataset=REFERENCE_DATASET,
            reference=True,
        )
        for n, *v in REFERENCE_ROWS
    ]


def leaderboard(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """Rows by dataset, ranked by "All" SDR (best first) within each dataset; reference rows
    are marked and not numbered."""
    targets = _order(sorted({t for e in entries for t in e.sdr}))
    header = ["rank", "model", "dataset", "All SDR", *targets, "nSDR", "tracks"]
    rows = []
    for dataset in sorted({e.dataset for e in entries}):
        ranked = sorted(
            (e for e in entries if e.dataset == dataset),
            key=lambda e: -e.all_sdr if not math.isnan(e.all_sdr) else math.inf,
        )
        rank = 0
        for e in ranked:
            if not e.reference:
                rank += 1
            rows.append(
                [
                    "ref" if e.reference else str(rank),
                    e.name,
                    e.dataset,
                    _fmt(e.all_sdr),
                    *(_fmt(e.sdr.get(t, math.nan)) for t in targets),
                    _fmt(e.nsdr),
                    str(e.tracks),
                ]
            )
    return header, rows
