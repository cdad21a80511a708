"""What ``evaluate`` runs: :class:`EvalOptions` (a model or estimate files, the results folder,
metrics, parallelism)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from demucs_rr.evaluate.results import model_label
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.options import ApplyOptions

__all__ = ["EvalOptions", "estimates_label"]


def estimates_label(root: Path) -> str:
    """Default label of an estimates folder: its name (``separated/htdemucs`` -> htdemucs)."""
    return Path(root).resolve().name


@dataclass
class EvalOptions:
    """How to separate (or read) and score.

    Attributes:
        model: pretrained name, package/model file, or a built model; with ``estimates``, the
            name the results go by (a released name marks its training data), or None.
        out: results folder (``<out>/<subset>/<track>.json`` + summary files).
        repo: folder searched first for model files.
        device: separation device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); with
            ``estimates``, where the metrics run (CUDA or the CPU).
        engine: how the engine applies the model (chunks, overlap, shifts, precision).
        sdr_only: score SDR only (milliseconds per track) instead of SDR/ISR/SIR/SAR.
        backend: ``torch`` or ``museval`` (reference implementation, slow).
        solver: normal-equation solver of the torch backend (levinson, cholesky, lu).
        jobs: worker processes on this rank; None: 1 for a model, one per CPU core for
            estimate files when no torchrun ranks share the machine.
        overwrite: re-score tracks whose JSON already exists.
        estimates: score the stems in this folder (``<track>/<stem>.<ext>``) instead of
            separating.
        stems: with ``estimates``, the stems to score (default: every reference stem found).
    """

    model: str | Path | SeparationModel | None
    out: Path
    repo: Path | None = None
    device: str = "auto"
    engine: ApplyOptions = field(default_factory=ApplyOptions)
    sdr_only: bool = False
    backend: str = "torch"
    solver: str = "levinson"
    jobs: int | None = None
    overwrite: bool = False
    estimates: Path | None = None
    stems: list[str] | None = None

    @property
    def label(self) -> str:
        """The name results go by: the model's, or the estimates folder's."""
        if self.model is None:
            return estimates_label(Path(str(self.estimates)))
        return model_label(self.model)

    def worker_count(self, ranks: int = 1) -> int:
        """:attr:`jobs`, or its default with ``ranks`` torchrun processes in the job."""
        if self.jobs is not None:
            return self.jobs
        return (os.cpu_count() or 1) if self.estimates is not None and ranks == 1 else 1
