"""Exponential moving average of model weights, updated after each optimiser step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from demucs_rr.models.base import PackagedModel

__all__ = ["EMA"]


class EMA:
    """Bias-corrected EMA of a model's floating-point state (as demucs v3 ``ModelEMA``).

    After ``n`` updates the average weighs update ``k`` by ``decay ** (n - k)``, normalised so
    that the weights sum to one (so the first update copies the model). Buffers that are not
    floating point are copied as they are.

    Args:
        model: the model to follow (its ``state_dict`` keys define the EMA state).
        decay: per-update decay in [0, 1).
    """

    def __init__(self, model: PackagedModel, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.count = 0.0
        self.state: dict[str, torch.Tensor] = {
            key: value.detach().clone().float()
            if value.is_floating_point()
            else value.detach().clone()
            for key, value in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: PackagedModel) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.count = self.count * self.decay + 1.0
        weight = 1.0 / self.count
        for key, value in model.state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                avg.mul_(1.0 - weight).add_(value.detach().float(), alpha=weight)
            else:
                avg.copy_(value)

    @contextmanager
    def swapped(self, model: PackagedModel) -> Iterator[PackagedModel]:
        """Load the EMA weights into ``model`` for the ``with`` block, then restore its own."""
        own = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        """Plain state (tensors on the CPU, floats) for a ``weights_only`` checkpoint."""
        return {
            "decay": self.decay,
            "count": self.count,
            "state": {key: value.cpu() for key, value in self.state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (tensors are copied onto the current devices)."""
        self.decay = float(state["decay"])
        self.count = float(state["count"])
        for key, value in state["state"].items():
            self.state[key].copy_(value)
