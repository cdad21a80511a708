"""Result folders read back: the track results of each ``<out>/<subset>/`` folder, checked to
share one dataset and one set of settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.metrics import TrackScores
from demucs_rr.evaluate.results import SUMMARY_FILES, RunRecord, dataset_label, read_record
from demucs_rr.evaluate.trackjson import read_track_json

__all__ = ["ResultGroup", "load_results"]


@dataclass(frozen=True)
class ResultGroup:
    """The track results of one subset folder (``<out>/<subset>/``) of a result folder.

    Attributes:
        folder: the result folder (``<out>``).
        model: model label recorded in the results (else the folder name).
        dataset: dataset label recorded in the results (``unrecorded-<subset>`` when absent).
        scores: the tracks' scores.
        record: the ``dataset`` (``kind``, ``root``, ``subset``) and ``settings`` recorded by
            the first track (empty for results of other tools).
    """

    folder: Path
    model: str
    dataset: str
    scores: list[TrackScores]
    record: dict[str, Any] = field(default_factory=dict)

    def by_name(self) -> dict[str, TrackScores]:
        """Track name -> scores."""
        return {s.name: s for s in self.scores}


def _subset_dirs(path: Path) -> list[Path]:
    """Folders holding track JSON files, at or below ``path``."""
    summary_json = SUMMARY_FILES[2]
    return sorted(
        {
            p.parent
            for p in path.rglob("*.json")
            if not p.name.startswith(".") and p.name != summary_json
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
        record={k: first[k] for k in ("dataset", "settings") if isinstance(first.get(k), dict)},
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
