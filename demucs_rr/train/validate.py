"""Validation through the separation engine of the CLI, and the choice of the best state.

Dimension letters: S sources, C channels, T time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from demucs_rr.data.tracks import Track, load_track
from demucs_rr.distributed import Group
from demucs_rr.evaluate.metrics import nsdr
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.engine import separate_normalized
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.train.losses import per_source_error
from demucs_rr.train.state import TrainState

__all__ = ["ValidOptions", "flatten", "update_best", "validate", "validate_epoch"]


@dataclass(frozen=True)
class ValidOptions:
    """How validation runs.

    Attributes:
        sources: stem names in the model's order.
        apply: engine options (shifts are ignored: validation uses none).
        loss_kind: ``l1`` or ``mse`` (reported in normalised units, as the training loss).
        max_samples: only the first samples of each track, or None for whole tracks.
    """

    sources: list[str]
    apply: ApplyOptions = ApplyOptions()
    loss_kind: str = "l1"
    max_samples: int | None = None


def _score_track(
    model: SeparationModel, track: Track, options: ValidOptions, device: torch.device
) -> torch.Tensor:
    """(3, S) float64 rows: loss, nSDR and do-nothing nSDR of each source on one track."""
    mix, stems = load_track(track, options.sources)  # (C, T), (S, C, T), not normalised
    if options.max_samples is not None:
        mix, stems = mix[:, : options.max_samples], stems[..., : options.max_samples]
    estimate = separate_normalized(model, mix, options.apply, device)  # (S, C, T)
    std = track.std if track.std > 0 else 1.0
    loss = per_source_error(estimate / std, stems / std, options.loss_kind)
    baseline = nsdr(stems, (mix / len(options.sources)).expand_as(stems))
    return torch.stack([loss.double(), nsdr(stems, estimate), baseline])


def validate(
    model: SeparationModel, tracks: list[Track], options: ValidOptions, dist: Group
) -> dict[str, float]:
    """Separate whole validation tracks with the engine the CLI uses and score them.

    Tracks are shared among processes (track ``i`` on rank ``i % world_size``) and the sums
    gathered, so every rank returns the same numbers.

    Returns:
        ``loss`` (mean over tracks and sources, normalised units), ``nsdr`` (mean over tracks,
        then sources, dB), ``baseline_nsdr`` (every estimate = mixture / S) and per-source
        ``loss/<source>``, ``nsdr/<source>``.
    """
    was_training = model.training
    model.eval()
    sources = len(options.sources)
    total = torch.zeros(3, sources, dtype=torch.float64)
    valid = replace(options, apply=replace(options.apply, shifts=0))
    for index in range(dist.rank, len(tracks), dist.world_size):
        total += _score_track(model, tracks[index], valid, dist.device)
    model.train(was_training)
    total = dist.all_reduce_sum(total) / max(len(tracks), 1)  # (3, S) means over tracks
    out = {
        "loss": float(total[0].mean()),
        "nsdr": float(total[1].mean()),
        "baseline_nsdr": float(total[2].mean()),
    }
    for s, name in enumerate(options.sources):
        out[f"loss/{name}"] = float(total[0, s])
        out[f"nsdr/{name}"] = float(total[1, s])
    return out


def _score(metrics: dict[str, float], best_on: str) -> float:
    """Lower is better."""
    return metrics["loss"] if best_on == "loss" else -metrics["nsdr"]


def update_best(state: TrainState, candidates: dict[str, dict[str, float]], best_on: str) -> bool:
    """Keep the best of this epoch's validated weights if it beats ``state.best``.

    Args:
        state: training state (``best`` is replaced when beaten).
        candidates: ``{"model": metrics}`` and, with EMA, ``{"ema": metrics}``.
        best_on: ``loss`` or ``nsdr``.

    Returns:
        True when ``state.best`` changed.
    """
    which = min(candidates, key=lambda name: _score(candidates[name], best_on))
    score = _score(candidates[which], best_on)
    if state.best is not None and score >= state.best["score"]:
        return False
    if which == "ema":
        assert state.ema is not None
        weights = {k: v.detach().cpu().clone() for k, v in state.ema.state.items()}
    else:
        weights = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
    state.best = {
        "score": score,
        "epoch": state.epoch,
        "weights": which,
        "metrics": dict(candidates[which]),
        "state": weights,
    }
    return True


def validate_epoch(
    state: TrainState, tracks: list[Track], options: ValidOptions
) -> dict[str, dict[str, float]]:
    """Validate the model (and its EMA weights when enabled): ``{"valid": .., "valid_ema": ..}``."""
    out = {"valid": validate(state.model, tracks, options, state.dist)}
    if state.ema is not None:
        with state.ema.swapped(state.model):
            out["valid_ema"] = validate(state.model, tracks, options, state.dist)
    return out


def flatten(groups: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"train": {"loss": 1}}`` -> ``{"train/loss": 1}``."""
    return {
        f"{group}/{key}": value for group, values in groups.items() for key, value in values.items()
    }
