"""Result folders of ``evaluate``: layout, what every result records, and when results are reused.

Layout (museval's): ``<out>/<subset>/<track>.json`` per track, and ``summary.md``,
``summary.csv``, ``summary.json`` and ``sdr_boxplot.png`` in ``<out>``. The default ``<out>`` is
``evaluation/<model>/<dataset label>`` (``musdb-test``, ``musdb-hq-valid``,
``folder-<folder name>-<subset>``), so different datasets and subsets never share a folder.

Every track JSON records, under its ``demucs_rr`` key, the dataset (``kind``, ``root``,
``subset``) and the settings that change the numbers (:class:`RunRecord`): for a model, its
name and signature (a hash of its weights), segment, overlap, split, shifts, seed, transition
power and SDR-only scoring; for estimate files, their label, folder and scored stems (and, per
track, each file's size and modification time: changed files are scored again). Batch size,
jobs, device, metric backend and solver are recorded too, but do not take part in the
comparison. A run reuses the JSON of a track scored earlier only when
every result already in ``<out>`` records the same dataset and settings; otherwise it stops with
a one-line :class:`~demucs_rr.errors.ConfigError` before separating anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from demucs_rr.data.trackset import TrackSet
from demucs_rr.errors import ConfigError
from demucs_rr.models.base import SeparationModel

__all__ = [
    "SUMMARY_FILES",
    "RunRecord",
    "check_reuse",
    "dataset_label",
    "default_out",
    "model_label",
    "model_signature",
    "read_record",
    "result_files",
    "result_path",
]

#: Files ``evaluate`` writes next to the subset folders.
SUMMARY_FILES = ("summary.md", "summary.csv", "summary.json", "sdr_boxplot.png")


def model_label(model: str | Path | SeparationModel) -> str:
    """Short model name: a file's stem, a pretrained name, or a module's class name."""
    if isinstance(model, nn.Module):
        return type(model).__name__
    path = Path(str(model))
    return path.stem if path.suffix else str(model)


def model_signature(model: SeparationModel) -> str:
    """First 16 hex digits of the sha256 of the model's state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the tensor's bytes, not copied
    return digest.hexdigest()[:16]


def default_out(model: str, trackset: TrackSet) -> Path:
    """``evaluation/<model>/<dataset label>``."""
    return Path("evaluation") / model / trackset.label


def result_path(out: str | Path, subset: str, name: str) -> Path:
    """museval layout: ``<out>/<subset>/<track name>.json``."""
    return Path(out) / subset / f"{name}.json"


def result_files(out: str | Path) -> list[Path]:
    """Track JSON files of a result folder (``<out>/*/*.json``), sorted."""
    return sorted(
        p for p in Path(out).glob("*/*.json") if p.is_file() and not p.name.startswith(".")
    )


def dataset_label(dataset: dict[str, Any] | None, fallback: str = "unknown") -> str:
    """The label :attr:`TrackSet.label` gives, from a recorded dataset."""
    if not dataset or not {"kind", "root", "subset"} <= set(dataset):
        return fallback
    if dataset["kind"] == "folder":
        return f"folder-{Path(str(dataset['root'])).name}-{dataset['subset']}"
    return f"{dataset['kind']}-{dataset['subset']}"


@dataclass(frozen=True)
class RunRecord:
    """What a result depends on.

    Attributes:
        dataset: ``{"kind", "root", "subset"}`` of :meth:`TrackSet.describe`.
        settings: model name and signature and the scoring settings compared between runs.
    """

    dataset: dict[str, str]
    settings: dict[str, Any]

    def mismatch(self, extra: dict[str, Any]) -> str | None:
        """What differs from a result's recorded metadata (None when nothing does)."""
        dataset, settings = extra.get("dataset"), extra.get("settings")
        if not isinstance(dataset, dict) or not isinstance(settings, dict):
            return "no dataset and settings recorded (another tool or an older version)"
        for what, ours, theirs in (
            ("dataset ", self.dataset, dataset),
            ("", self.settings, settings),
        ):
            for key in sorted(set(ours) | set(theirs)):
                if ours.get(key) != theirs.get(key):
                    return f"{what}{key} {theirs.get(key)!r} there, {ours.get(key)!r} now"
        return None


def read_record(path: Path) -> dict[str, Any]:
    """The ``demucs_rr`` metadata of a track JSON (empty when there is none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read earlier result {path}: {exc}") from None
    extra = data.get("demucs_rr") if isinstance(data, dict) else None
    return extra if isinstance(extra, dict) else {}


def check_reuse(out: str | Path, record: RunRecord) -> list[Path]:
    """Earlier track results in ``out``, after checking they were made like this run.

    Raises:
        ConfigError: one line naming the first result whose dataset or settings differ, and
            how to proceed (another ``--out``, or delete the folder to recompute).
    """
    out = Path(out)
    files = result_files(out)
    for path in files:
        problem = record.mismatch(read_record(path))
        if problem is not None:
            raise ConfigError(
                f"{out} holds results made differently ({path.relative_to(out)}: "
                f"{problem}); pass another --out, or delete {out} to recompute"
            )
    return files
