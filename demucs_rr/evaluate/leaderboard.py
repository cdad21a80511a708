"""A ranked leaderboard merging result folders (of models and of other tools' stems) with
published reference numbers.

Each row has both SDR definitions per stem, labelled with their aggregation
(:mod:`demucs_rr.evaluate.conventions`), the model size and the measured separation speed when
the results record them, and the training data. Rows are ranked within their dataset (by the
museval "All" SDR, or the global one); rows of models trained with some of the evaluated
tracks are marked and left unranked unless asked (:mod:`demucs_rr.evaluate.contamination`).
Rows that would read the same get their folder name appended.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.conventions import global_label, museval_label
from demucs_rr.evaluate.groups import ResultGroup
from demucs_rr.evaluate.metrics import aggregate
from demucs_rr.evaluate.tables import EMPTY, fmt, mean, order_targets
from demucs_rr.sources import MUSDB_SOURCES

__all__ = [
    "REFERENCE_SOURCE",
    "Entry",
    "entry_from",
    "label_entries",
    "leaderboard",
    "plot_stems",
    "reference_entries",
]

#: Dataset label of the published reference rows (compressed MUSDB18, test set).
REFERENCE_DATASET = "musdb-test"
REFERENCE_SOURCE = (
    "Demucs v2 repository museval JSONs, MUSDB18 test (50 tracks), median over "
    "frames and tracks, mean over seeds"
)
#: Marker of rows with training-data overlap.
CONTAMINATED = "†"

# (name, training data, All, drums, bass, other, vocals): published MUSDB18 test SDR (museval
# v4, median over frames and tracks).
REFERENCE_ROWS = (
    ("Demucs v2 (official)", "MUSDB18 train", 6.28, 6.86, 7.01, 4.42, 6.84),
    ("Demucs v2 + 150 extra", "MUSDB18 train + 150 songs", 6.79, 7.58, 7.60, 4.69, 7.29),
    ("Conv-TasNet (official)", "MUSDB18 train", 5.73, 6.02, 6.20, 4.27, 6.43),
    ("Conv-TasNet + extra", "MUSDB18 train + 150 songs", 5.97, 7.23, 6.67, 3.77, 6.19),
    ("IRM oracle", "oracle (uses the references)", 8.22, 8.45, 7.12, 7.85, 9.43),
    ("MMDenseLSTM", "MUSDB18 train + 804 songs", 6.04, 6.81, 5.40, 4.80, 7.16),
    ("Open-Unmix", "MUSDB18 train", 5.33, 5.73, 5.23, 4.02, 6.32),
    ("Wave-U-Net", "MUSDB18 train", 3.23, 4.22, 3.21, 2.25, 3.25),
)


@dataclass
class Entry:
    """One leaderboard row.

    Attributes:
        name: model label shown (made unique by :func:`label_entries`).
        museval: target -> museval SDR (median over frames, then the track aggregation).
        global_sdr: target -> global SDR, mean over tracks.
        tracks: number of tracks.
        dataset: dataset label (``musdb-test``, ``folder-<name>-<subset>``, ...).
        training: one line on the training data.
        contamination: why some evaluated tracks are in the training data, or None.
        params: parameter count, when recorded.
        speed: seconds of audio separated per second, when recorded.
        device: where it was separated, when recorded.
        dataset_tracks: tracks of the evaluated dataset, when recorded.
        folder: result folder the row comes from (None for published rows).
        reference: a published row.
    """

    name: str
    museval: dict[str, float]
    global_sdr: dict[str, float]
    tracks: int
    dataset: str = REFERENCE_DATASET
    training: str = "unknown"
    contamination: str | None = None
    params: int | None = None
    speed: float | None = None
    device: str | None = None
    dataset_tracks: int | None = None
    folder: Path | None = None
    reference: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_museval(self) -> float:
        """Mean over stems of the museval SDR."""
        return mean(self.museval.values())

    @property
    def all_global(self) -> float:
        """Mean over stems of the global SDR."""
        return mean(self.global_sdr.values())


def _contamination(group: ResultGroup) -> str | None:
    """Why some tracks of ``group`` are in the model's training data (recorded per track, or
    known from the released model's name for MUSDB18 results of older versions/other tools)."""
    from demucs_rr.evaluate.contamination import release_training

    marked = [s for s in group.scores if s.extra.get("training_overlap")]
    if marked:
        reason = str(marked[0].extra["training_overlap"])
        return f"{len(marked)}/{len(group.scores)} tracks: {reason}"
    dataset = group.record.get("dataset") or {}
    release = release_training(group.model)
    if (
        release is not None
        and dataset.get("kind") in ("musdb", "musdb-hq")
        and release.includes_musdb(str(dataset.get("subset")))
    ):
        return f"{group.model} was trained with the MUSDB18 {dataset.get('subset')} tracks"
    return None


def _speed(group: ResultGroup) -> tuple[float | None, str | None]:
    """Seconds of audio separated per second of separation, and the device."""
    timed = [s.extra for s in group.scores if s.extra.get("seconds_separation")]
    if not timed:
        return None, None
    audio = sum(float(e.get("seconds_audio", 0.0)) for e in timed)
    spent = sum(float(e["seconds_separation"]) for e in timed)
    return (audio / spent if spent > 0 else None), str(timed[0].get("device") or "") or None


def entry_from(group: ResultGroup, tracks_agg: str = "median", convention: str = "mdx") -> Entry:
    """Leaderboard row of one group of results."""
    from demucs_rr.evaluate.contamination import training_summary

    agg = aggregate(group.scores, tracks_agg, convention)
    first = group.scores[0].extra if group.scores else {}
    speed, device = _speed(group)
    params = first.get("model_params")
    return Entry(
        name=group.model,
        museval={t: agg[t]["SDR"] for t in agg},
        global_sdr={t: agg[t]["global"] for t in agg},
        tracks=len(group.scores),
        dataset=group.dataset,
        training=str(first.get("training_data") or training_summary(group.model)),
        contamination=_contamination(group),
        params=int(params) if isinstance(params, (int, float)) else None,
        speed=speed,
        device=device,
        dataset_tracks=int(first["dataset_tracks"]) if "dataset_tracks" in first else None,
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
    """Published numbers as labelled reference rows (museval SDR only)."""
    return [
        Entry(
            name=f"{n} [published]",
            museval=dict(zip(MUSDB_SOURCES, v[1:], strict=True)),
            global_sdr={},
            tracks=50,
            training=training,
            reference=True,
            extra={"all": v[0]},
        )
        for n, training, *v in REFERENCE_ROWS
    ]


def _header(targets: list[str], tracks_agg: str, convention: str) -> list[str]:
    museval, glob = museval_label("SDR", tracks_agg), global_label(convention)
    return [
        "rank",
        "model",
        "dataset",
        f"All {museval}",
        *(f"{t} {museval}" for t in targets),
        f"All {glob}",
        *(f"{t} {glob}" for t in targets),
        "tracks",
        "params (M)",
        "speed (x real time)",
        "training data",
    ]


def _row(e: Entry, rank: str, targets: list[str]) -> list[str]:
    all_museval = e.extra.get("all", e.all_museval) if e.reference else e.all_museval
    name = e.name + (f" {CONTAMINATED}" if e.contamination else "")
    speed = EMPTY if e.speed is None else f"{e.speed:.1f}" + (f" ({e.device})" if e.device else "")
    return [
        rank,
        name,
        e.dataset,
        fmt(all_museval),
        *(fmt(e.museval.get(t, math.nan)) for t in targets),
        fmt(e.all_global),
        *(fmt(e.global_sdr.get(t, math.nan)) for t in targets),
        str(e.tracks),
        EMPTY if e.params is None else f"{e.params / 1e6:.1f}",
        speed,
        e.training,
    ]


def _score(e: Entry, sort: str) -> float:
    value = e.all_global if sort == "global" else e.extra.get("all", e.all_museval)
    return -value if not math.isnan(value) else math.inf


#: Tracks of the MUSDB18 test set: a row of a MUSDB18 test dataset with fewer is incomplete.
MUSDB_TEST_TRACKS = 50
#: Marker of rows scored on fewer tracks than their dataset has.
INCOMPLETE = "‡"


def _full_size(dataset: str, entries: list[Entry]) -> int:
    """Tracks a complete row of ``dataset`` has: the most any row scored or recorded as the
    dataset's size; 50 for a MUSDB18 test set when no row recorded it (other tools' files)."""
    rows = [e for e in entries if not e.reference]
    recorded = [e.dataset_tracks for e in rows if e.dataset_tracks is not None]
    if not recorded and dataset in ("musdb-test", "musdb-hq-test"):
        recorded = [MUSDB_TEST_TRACKS]
    return max([e.tracks for e in rows] + recorded, default=0)


def leaderboard(
    entries: list[Entry],
    tracks_agg: str = "median",
    convention: str = "mdx",
    *,
    sort: str = "museval",
    rank_contaminated: bool = False,
    rank_incomplete: bool = False,
) -> tuple[list[str], list[list[str]], list[str]]:
    """The table: rows by dataset, best first within each.

    Published rows are marked ``ref``; rows with training-data overlap ``excl.`` (and
    :data:`CONTAMINATED` after the name) and rows scored on fewer tracks than their dataset has
    ``incompl.`` (and :data:`INCOMPLETE`): scores on different track sets are not comparable.
    None of them takes a rank, unless ``rank_contaminated`` / ``rank_incomplete``.

    Returns:
        (header, rows, notes): notes are one line per marked row, saying why.
    """
    if sort not in ("museval", "global"):
        raise ConfigError(f"unknown sort {sort!r}: use museval or global")
    targets = order_targets({t for e in entries for t in (*e.museval, *e.global_sdr)})
    rows, notes = [], []
    for dataset in sorted({e.dataset for e in entries}):
        group = sorted((e for e in entries if e.dataset == dataset), key=lambda e: _score(e, sort))
        full, rank = _full_size(dataset, group), 0
        for e in group:
            short = not e.reference and e.tracks < full
            ranked = not e.reference and (rank_contaminated or not e.contamination)
            ranked = ranked and (rank_incomplete or not short)
            rank += ranked
            label = (
                "ref" if e.reference else str(rank) if ranked else "incompl." if short else "excl."
            )
            row = _row(e, label, targets)
            row[1] += f" {INCOMPLETE}" if short else ""
            rows.append(row)
            if e.contamination:
                notes.append(f"{CONTAMINATED} {e.name} ({e.dataset}): {e.contamination}")
            if short:
                notes.append(
                    f"{INCOMPLETE} {e.name} ({e.dataset}): scored on {e.tracks} of {full} tracks"
                )
    return _header(targets, tracks_agg, convention), rows, notes


def entries_json(entries: list[Entry]) -> list[dict[str, Any]]:
    """The rows as JSON objects (every number unformatted)."""
    out = []
    for e in entries:
        item = asdict(e)
        item["folder"] = None if e.folder is None else str(e.folder)
        item["all_museval"] = e.extra.get("all", e.all_museval) if e.reference else e.all_museval
        item["all_global"] = e.all_global
        out.append(item)
    return out


def plot_stems(groups: list[ResultGroup], names: list[str], path: Path, title: str) -> Path:
    """PNG with one panel per stem: a box of per-track museval SDR for each result group."""
    from demucs_rr.evaluate.summary import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = order_targets({t for g in groups for s in g.scores for t in s.targets})
    fig, axes = plt.subplots(
        1, len(targets), figsize=(2.2 + 1.1 * len(groups) * len(targets), 4.8), squeeze=False
    )
    for ax, target in zip(axes[0], targets, strict=True):
        data = [
            [
                v
                for s in g.scores
                if target in s.targets and not math.isnan(v := s.medians()[target]["SDR"])
            ]
            for g in groups
        ]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(target)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("SDR museval (track median over 1 s frames), dB")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
