"""Track result files: museval's ``TrackStore`` JSON layout, plus what museval does not store.

Layout (one file per track, ``<out>/<subset>/<track>.json``)::

    {"targets": [{"name": "vocals",
                  "frames": [{"time": 0.0, "duration": 1.0,
                              "metrics": {"SDR": ..., "SIR": ..., "ISR": ..., "SAR": ...}}, ...],
                  "nsdr": 7.1,
                  "global": {"reference_energy": 1234.5, "error_energy": 240.2}}, ...],
     "format": "museval",
     "demucs_rr": {... dataset, settings, model, timing ...}}

``museval.aggregate.EvalStore`` reads these files as its own. ``nsdr`` is the global SDR with
the MDX epsilon (1e-7); ``global`` holds the two whole-track energies it comes from, so the
global SDR of any epsilon can be recomputed exactly (files without them, from museval or older
versions, give the MDX value only).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from demucs_rr.errors import DemucsRRError
from demucs_rr.evaluate.metrics import METRICS, TrackScores
from demucs_rr.staging import atomic_write

__all__ = ["JSON_FORMAT", "read_track_json", "track_to_json", "write_track_json"]

JSON_FORMAT = "museval"


def track_to_json(scores: TrackScores) -> dict[str, Any]:
    """The JSON object of one track (layout in the module docstring)."""
    targets = []
    n_frames = scores.frames["SDR"].shape[-1]
    for i, target in enumerate(scores.targets):
        frames = [
            {
                "time": t * scores.hop,
                "duration": scores.win,
                "metrics": {m: float(scores.frames[m][i, t]) for m in METRICS},
            }
            for t in range(n_frames)
        ]
        entry: dict[str, Any] = {"name": target, "nsdr": scores.nsdr[target], "frames": frames}
        if target in scores.energies:
            ref, err = scores.energies[target]
            entry["global"] = {"reference_energy": ref, "error_energy": err}
        targets.append(entry)
    return {"targets": targets, "format": JSON_FORMAT, "demucs_rr": scores.extra}


def write_track_json(scores: TrackScores, path: str | os.PathLike[str]) -> Path:
    """Write one track's JSON atomically (NaN written as ``NaN``, as museval does)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w") as handle:
        json.dump(track_to_json(scores), handle, indent=2, allow_nan=True)
    return path


def read_track_json(path: str | os.PathLike[str]) -> TrackScores:
    """Read a track JSON written by :func:`write_track_json` or by museval itself.

    Raises:
        DemucsRRError: one line naming the file when it is not such a JSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        targets = [t["name"] for t in data["targets"]]
        frames = {
            m: np.array(
                [[_num(f["metrics"].get(m)) for f in t["frames"]] for t in data["targets"]],
                dtype=np.float64,
            ).reshape(len(targets), -1)
            for m in METRICS
        }
        first = data["targets"][0]["frames"] if targets and data["targets"][0]["frames"] else []
        energies = {
            t["name"]: (
                float(t["global"]["reference_energy"]),
                float(t["global"]["error_energy"]),
            )
            for t in data["targets"]
            if isinstance(t.get("global"), dict)
        }
        nsdr_values = {t["name"]: _num(t.get("nsdr")) for t in data["targets"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DemucsRRError(f"cannot read scores from {path}: {exc}") from None
    win = float(first[0]["duration"]) if first else 1.0
    hop = float(first[1]["time"] - first[0]["time"]) if len(first) > 1 else win
    extra = data.get("demucs_rr")
    return TrackScores(
        name=path.stem,
        targets=targets,
        frames=frames,
        nsdr=nsdr_values,
        energies=energies,
        win=win,
        hop=hop,
        extra=extra if isinstance(extra, dict) else {},
    )


def _num(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
