"""Numeric precision of the model forward passes: ``fp32`` (default), ``bf16`` or ``fp16``.

Only the model runs in reduced precision, through :func:`torch.autocast` (convolutions,
matrix products and LSTMs in bf16/fp16; the STFT and the input statistics stay in float32).
Everything the engine does around it (windows, overlap-add, normalisation) stays float32, and
the outputs are float32. On the CPU, :func:`prepare_model` also gives 1x1 convolutions a GEMM
forward (:mod:`demucs_rr.models.pointwise`) and, for bf16, stores the weights of models that
declare ``bf16_weights`` (HT Demucs) in bf16 once, instead of autocast casting them at every
call and mixing float32 and bf16 activations.

Where each precision is offered:

- ``bf16``: CPUs with bf16 instructions (``avx512_bf16`` or ``amx_bf16``; elsewhere torch
  emulates bf16 and it is slower than fp32, so it is refused) and CUDA GPUs that support bf16;
- ``fp16``: CUDA (and Apple MPS) only; CPUs have no fast fp16 path.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from demucs_rr.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from demucs_rr.models.base import SeparationModel

PRECISIONS = ("fp32", "bf16", "fp16")

_M = TypeVar("_M", bound="SeparationModel")

__all__ = [
    "PRECISIONS",
    "autocast",
    "check_precision",
    "cpu_flags",
    "cpu_has_bf16",
    "prepare_model",
]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision that ``device`` cannot run fast.

    Raises:
        ConfigError: unknown precision, or one the device lacks (one line, naming what to use).
    """
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    kind = device.type
    if precision == "fp32":
        return
    if precision == "fp16" and kind not in ("cuda", "mps"):
        raise ConfigError(f"fp16 needs a CUDA or MPS device (got {kind}); use bf16 or fp32")
    if precision == "bf16" and kind == "cpu" and not cpu_has_bf16():
        raise ConfigError(
            "bf16 on this CPU would be emulated (no avx512_bf16/amx_bf16) and slower than "
            "fp32; use fp32"
        )
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use fp16 or fp32")
    if precision == "bf16" and kind == "mps":
        raise ConfigError("bf16 is not offered on MPS; use fp16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A context in which model forward passes run in ``precision`` on ``device``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: _M, precision: str, device: torch.device, *, owned: bool) -> _M:
    """``model`` (already on ``device``) readied for forward passes in ``precision``.

    CPU only (elsewhere autocast alone is right): 1x1 convolutions get their GEMM forward
    (float32 inputs do not use it), and with bf16 a model whose ``bf16_weights`` is set (HT
    Demucs, a bag of them) gets bf16 weights; such a model runs only under :func:`autocast` in
    bf16. A model the caller owns (``owned`` False) is left as it is: a copy is prepared.
    """
    import copy

    import torch
    from torch import nn

    from demucs_rr.models.pointwise import gemm_pointwise_convs

    if precision == "fp32" or device.type != "cpu" or not isinstance(model, nn.Module):
        return model
    runner = model if owned else copy.deepcopy(model)
    gemm_pointwise_convs(runner)
    if precision == "bf16" and runner.bf16_weights:
        runner.to(torch.bfloat16)
    return runner
