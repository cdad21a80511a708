"""Which parameters a run trains: ``freeze`` globs, and the count line printed at start."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from demucs_rr.errors import ConfigError
from demucs_rr.train.lora import ADAPTER_MARK

__all__ = ["counts", "freeze"]


def freeze(module: nn.Module, patterns: Sequence[str]) -> int:
    """Freeze the parameters whose names match a glob of ``patterns``; returns how many.

    Raises:
        ConfigError: a pattern matches no parameter (a typo would silently train everything).
    """
    names = [name for name, _ in module.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(
                f"freeze pattern {pattern!r} matches no parameter of {type(module).__name__} "
                f"(its names look like {names[0]}, ..., {names[-1]})"
            )
    count = 0
    for name, param in module.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)
            count += 1
    return count


def counts(module: nn.Module) -> str:
    """``parameters: N trainable, M frozen`` (with the adapters' share)."""
    params = list(module.named_parameters())
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    frozen = sum(p.numel() for _, p in params if not p.requires_grad)
    adapters = sum(p.numel() for n, p in params if ADAPTER_MARK in f".{n}")
    tensors = sum(1 for _, p in params if p.requires_grad)
    line = f"parameters: {trainable:,} trainable in {tensors} tensors, {frozen:,} frozen"
    return line + (f" ({adapters:,} of the trainable ones in LoRA adapters)" if adapters else "")
