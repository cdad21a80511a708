"""Numeric precision of the model forward passes: ``fp32`` (default), ``bf16`` or ``fp16``.

Only the model runs in reduced precision, through :func:`torch.autocast` (convolutions,
matrix products and LSTMs in bf16/fp16; normalisations, softmax and the STFT stay in float32).
Everything the engine does around it (windows, overlap-add, normalisation) stays float32, and
the outputs are float32.

Where each precision is offered:

- ``bf16``: CPUs with bf16 instructions (``avx512_bf16`` or ``amx_bf16``; elsewhere torch
  emulates bf16 and it is slower than fp32, so it is refused) and CUDA GPUs that support bf16;
- ``fp16``: CUDA (and Apple MPS) only; CPUs have no fast fp16 path.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from demucs_rr.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")

__all__ = ["PRECISIONS", "autocast", "check_precision", "cpu_flags", "cpu_has_bf16"]


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
