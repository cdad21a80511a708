"""Low-rank adapters (LoRA) on the linear and 1x1 convolution layers, merged at export.

An adapted layer computes with ``W + (alpha / r) * B @ A`` instead of ``W`` (the product
reshaped to ``W``'s shape): ``A`` (r, in) starts Kaiming-uniform from a generator seeded by the
run's seed, ``B`` (out, r) starts at zero, so an adapted model starts out computing exactly what
the initial model computes. ``W`` itself is frozen. The adapter is a ``torch.nn.utils.parametrize``
parametrization of ``weight``, so every reader of the weight sees the adapted one, including
modules that read ``weight`` without calling the layer (``nn.MultiheadAttention.out_proj``).

State-dict names of an adapted layer ``L``: ``L.parametrizations.weight.original`` (``W``),
``L.parametrizations.weight.0.lora_a`` and ``...lora_b``. :func:`merge_lora` folds the adapters
into the weights and gives back the plain names, which is what ``demucs-rr export`` packages.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["ADAPTER_MARK", "LowRank", "adapter_count", "add_lora", "lora_targets", "merge_lora"]

ADAPTER_MARK = ".parametrizations.weight.0.lora_"
"""Part of the state-dict name of every adapter parameter."""


class LowRank(nn.Module):
    """The parametrization ``W -> W + scale * (B @ A).view_as(W)``.

    Args:
        rows: output features / channels of the layer.
        cols: input features / channels (times the kernel size, which is 1 here).
        rank: r.
        scale: alpha / r.
        generator: seeds ``A``.
    """

    def __init__(
        self, rows: int, cols: int, rank: int, scale: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.scale = scale
        self.lora_a = nn.Parameter(torch.empty(rank, cols))
        self.lora_b = nn.Parameter(torch.zeros(rows, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight, same shape and dtype as ``weight``."""
        delta = (self.lora_b @ self.lora_a) * self.scale
        return weight + delta.view(weight.shape).to(weight.dtype)


def _is_target(module: nn.Module) -> bool:
    """A dense linear layer or a 1x1 (ungrouped) 1-D / 2-D convolution."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 and all(k == 1 for k in module.kernel_size)
    return False


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that :func:`add_lora` adapts, in module order."""
    return [name for name, module in model.named_modules() if _is_target(module)]


def add_lora(model: nn.Module, rank: int, alpha: float | None, seed: int) -> int:
    """Adapt every target layer of ``model`` in place and freeze its weight.

    Args:
        model: the network (already holding its initial weights).
        rank: r >= 1.
        alpha: adapter scale numerator (``None``: ``alpha = rank``, a scale of 1).
        seed: seeds the ``A`` matrices (layers in module order), the same on every process.

    Returns:
        The number of adapted layers.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = (rank if alpha is None else alpha) / rank
    names = lora_targets(model)
    for name in names:
        layer = model.get_submodule(name)
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        rows, cols = weight.shape[0], weight[0].numel()
        adapter = LowRank(rows, cols, rank, scale, generator).to(weight.device)
        parametrize.register_parametrization(layer, "weight", adapter)
        original = layer.get_parameter("parametrizations.weight.original")
        original.requires_grad_(False)
    return len(names)


def adapter_count(model: nn.Module) -> int:
    """Number of adapter parameters (elements) in ``model``."""
    return sum(p.numel() for n, p in model.named_parameters() if ADAPTER_MARK in f".{n}")


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter of ``model`` into its weight (plain state-dict names again).

    Returns:
        The number of merged layers.
    """
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            merged += 1
    return merged
