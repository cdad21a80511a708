"""Where the scored estimates come from: a model separating each mixture, or files written by
another tool. Both give the references and estimates of a track at the track's sample rate,
the settings that change the numbers (recorded with every result), and per-track metadata.

Dimension letters: S scored stems, C channels, T samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from demucs_rr.data.tracks import Track, load_track, read_stems
from demucs_rr.errors import ConfigError

if TYPE_CHECKING:
    from demucs_rr.evaluate.estimates import EstimateFolder
    from demucs_rr.evaluate.options import EvalOptions
    from demucs_rr.separate.api import Separator

__all__ = ["FolderProducer", "ModelProducer", "Produced", "Producer", "make_producer"]


@dataclass
class Produced:
    """One track ready to score.

    Attributes:
        targets: the S stem names.
        refs: (S, C, T) references.
        ests: (S, C, T) estimates, already at the references' rate, channels and length.
        extra: metadata recorded with the result.
        notes: one line each, reported (length mismatches).
    """

    targets: list[str]
    refs: torch.Tensor
    ests: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Producer(Protocol):
    """What :func:`demucs_rr.evaluate.run.run_evaluation` scores."""

    device: torch.device

    def settings(self) -> dict[str, Any]:
        """The settings that change the numbers (compared before earlier results are reused)."""
        ...

    def produce(self, track: Track) -> Produced:
        """References and estimates of ``track``."""
        ...


def _parameters(model: object) -> int | None:
    if not isinstance(model, torch.nn.Module):
        return None
    return sum(p.numel() for p in model.parameters())


class ModelProducer:
    """A model through the separation engine (a :class:`Separator`)."""

    def __init__(self, options: EvalOptions, label: str) -> None:
        from demucs_rr.evaluate.results import model_signature
        from demucs_rr.separate.api import Separator

        if options.model is None:
            raise ConfigError("no model to evaluate: give a model name or file, or estimates")
        self.separator: Separator = Separator(
            options.model, device=options.device, repo=options.repo, options=options.engine
        )
        self.label = label
        self.signature = model_signature(self.separator.model)
        self.params = _parameters(self.separator.model)
        self.sdr_only = options.sdr_only
        # float64 metrics on CUDA when separation does, else on the CPU (MPS has no float64)
        dev = self.separator.device
        self.device = dev if dev.type == "cuda" else torch.device("cpu")

    def settings(self) -> dict[str, Any]:
        """Model, weights signature and the engine values after defaults."""
        apply, sep = self.separator.options, self.separator
        segment = apply.segment_samples(sep.samplerate) or sep.model.segment_length
        return {
            "model": self.label,
            "model_signature": self.signature,
            "segment": int(segment),
            "overlap": float(
                sep.model.chunking.overlap if apply.overlap is None else apply.overlap
            ),
            "split": bool(apply.split),
            "shifts": int(apply.shifts),
            "seed": int(apply.seed),
            "transition_power": float(apply.transition_power),
            "precision": apply.precision,
            "sdr_only": bool(self.sdr_only),
        }

    def produce(self, track: Track) -> Produced:
        """Separate the track's mixture (the file, or the sum of all its stems)."""
        from demucs_rr.audio import convert_audio

        sep = self.separator
        targets = [s for s in sep.sources if s in track.stems]
        if not targets:
            raise ConfigError(
                f"the model's sources {sep.sources} match none of "
                f"the track's stems {sorted(track.stems)}"
            )
        start = time.perf_counter()
        mixture, stems = load_track(track, list(track.stems))  # (C, T), (S, C, T)
        decoded = time.perf_counter()
        estimates = sep.separate_tensor(mixture, track.samplerate)
        seconds = time.perf_counter() - decoded
        names = list(track.stems)
        ests = [
            convert_audio(
                estimates[t].float().cpu(), sep.samplerate, track.samplerate, track.channels
            )
            for t in targets
        ]
        extra = {
            "model_params": self.params,
            "seconds_decode": round(decoded - start, 3),
            "seconds_separation": round(seconds, 3),
            "batch_size": int(sep.options.batch_size),
            "device": str(sep.device),
        }
        return Produced(targets, stems[[names.index(t) for t in targets]], torch.stack(ests), extra)


class FolderProducer:
    """Stems another tool wrote (:class:`~demucs_rr.evaluate.estimates.EstimateFolder`)."""

    def __init__(self, options: EvalOptions, folder: EstimateFolder, label: str) -> None:
        self.folder = folder
        self.label = label
        self.sdr_only = options.sdr_only
        self.device = _metrics_device(options.device)

    def settings(self) -> dict[str, Any]:
        """The label, the estimates folder and the scored stems."""
        return {
            "model": self.label,
            "estimates": str(self.folder.root),
            "stems": list(self.folder.targets),
            "sdr_only": bool(self.sdr_only),
        }

    def produce(self, track: Track) -> Produced:
        """Read the estimate files, then the references of the same stems."""
        targets = self.folder.targets
        missing = [t for t in targets if t not in track.stems]
        if missing:
            raise ConfigError(f"the reference track has no stem {', '.join(missing)}")
        start = time.perf_counter()
        ests, notes = self.folder.load(track)
        refs = read_stems(track, [track.stems[t] for t in targets])
        extra = {
            "estimate_files": self.folder.signature(track.name),
            "seconds_decode": round(time.perf_counter() - start, 3),
        }
        return Produced(list(targets), refs, ests, extra, notes)


def _metrics_device(name: str) -> torch.device:
    """float64 metrics of estimate files: on CUDA when asked for (or ``auto`` finds one), else
    on the CPU (MPS has no float64)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    return dev if dev.type == "cuda" else torch.device("cpu")


def make_producer(options: EvalOptions, label: str, folder: EstimateFolder | None) -> Producer:
    """The producer of a run: the estimate files when given, else the model."""
    if folder is not None:
        return FolderProducer(options, folder, label)
    return ModelProducer(options, label)
