"""Per-source reconstruction losses with source weights (the loss stays outside the model).

Dimension letters: B batch, S sources, C channels, T time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SourceLoss", "per_source_error"]


def per_source_error(estimate: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``mse``) error of each source.

    Args:
        estimate: (B, S, C, T) or (S, C, T).
        target: same shape as ``estimate``.
        kind: ``"l1"`` or ``"mse"``.

    Returns:
        (S,) error of each source, averaged over every other dimension.
    """
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape"
        )
    diff = estimate - target
    err = diff.abs() if kind == "l1" else diff.square() if kind == "mse" else None
    if err is None:
        raise ValueError(f"unknown loss kind {kind!r} (l1 or mse)")
    source_dim = 1 if err.dim() == 4 else 0
    return err.transpose(0, source_dim).reshape(err.shape[source_dim], -1).mean(dim=1)


class SourceLoss:
    """Weighted mean of per-source L1 or MSE.

    With equal weights this equals ``nn.L1Loss()`` (or ``nn.MSELoss()``) over the whole batch,
    the v2 loss.

    Args:
        sources: source names, in the model's output order.
        kind: ``"l1"`` or ``"mse"``.
        weights: one non-negative weight per source, or None for equal weights.
    """

    def __init__(
        self, sources: Sequence[str], kind: str = "l1", weights: Sequence[float] | None = None
    ) -> None:
        if kind not in ("l1", "mse"):
            raise ValueError(f"unknown loss kind {kind!r} (l1 or mse)")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"need one non-negative weight per source {list(sources)} with a "
                f"positive sum, got {weights}"
            )
        self.sources = list(sources)
        self.kind = kind
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def __call__(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of a batch.

        Args:
            estimate: (B, S, C, T) model output.
            target: (B, S, C, T) reference stems.

        Returns:
            ``{"loss": weighted mean (differentiable), "<kind>/<source>": per-source value}``.
        """
        per_source = per_source_error(estimate.float(), target.float(), self.kind)  # (S,)
        weights = self.weights.to(per_source.device)
        out = {"loss": (per_source * weights).sum() / weights.sum()}
        for name, value in zip(self.sources, per_source, strict=True):
            out[f"{self.kind}/{name}"] = value.detach()
        return out
