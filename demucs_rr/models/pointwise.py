"""1x1 convolutions as matrix products in reduced precision on the CPU.

oneDNN treats the weight of a 1x1 convolution as channels-last (its strides fit both layouts), so
in bf16 it computes a channels-last output and torch then transposes it back into a new tensor:
that copy costs several times the convolution itself (on a (1, 48, 86000) input: 5.6 ms
convolution + 22.6 ms copy, against 5.5 ms for the same product as one GEMM). In float32 the
plain layout is kept and nothing changes.

:func:`gemm_pointwise_convs` gives every plain 1x1 ``Conv1d`` / ``Conv2d`` of a model a forward
that, for bf16 / fp16 inputs or under CPU autocast, computes ``W @ x + b`` with ``addmm`` /
``baddbmm`` (autocast casts them like the convolution); float32 inputs keep the convolution, so
float32 results are unchanged bit for bit. Parameters and state-dict names are untouched.

Shapes use B = batch, C = channels, F = frequency bins, T = time steps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PointwiseConv1d", "PointwiseConv2d", "gemm_pointwise_convs"]


def _use_gemm(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")


def _pointwise(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``weight`` (Co, Ci, 1[, 1]) applied to ``x`` (B, Ci, N) -> (B, Co, N)."""
    w = weight.reshape(weight.shape[0], -1)
    batch = x.shape[0]
    if bias is None:
        return torch.matmul(w.expand(batch, *w.shape), x)
    if batch == 1:
        return torch.addmm(bias[:, None], w, x[0])[None]
    return torch.baddbmm(bias[None, :, None], w.expand(batch, *w.shape), x)


class PointwiseConv1d(nn.Conv1d):
    """``nn.Conv1d`` with kernel 1 whose reduced-precision CPU forward is one GEMM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Ci, T) -> (B, Co, T)."""
        if not _use_gemm(x) or x.dim() != 3:
            return super().forward(x)
        return _pointwise(self.weight, self.bias, x)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a 1x1 kernel whose reduced-precision CPU forward is one GEMM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Ci, F, T) -> (B, Co, F, T)."""
        if not _use_gemm(x) or x.dim() != 4:
            return super().forward(x)
        batch, channels, bins, frames = x.shape
        out = _pointwise(self.weight, self.bias, x.reshape(batch, channels, bins * frames))
        return out.view(batch, -1, bins, frames)


def _plain(conv: nn.Conv1d | nn.Conv2d) -> bool:
    dims = len(conv.kernel_size)
    ones = (1,) * dims
    return (
        conv.kernel_size == ones
        and conv.stride == ones
        and conv.dilation == ones
        and conv.padding in ((0,) * dims, "valid")
        and conv.groups == 1
    )


def gemm_pointwise_convs(model: object) -> int:
    """Switch every plain 1x1 convolution of ``model`` to its GEMM forward.

    Returns how many were switched by this call (0 the second time); subclasses of the
    convolutions (other forwards) are left alone.
    """
    if not isinstance(model, nn.Module):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv1d and _plain(module):
            module.__class__ = PointwiseConv1d
            count += 1
        elif type(module) is nn.Conv2d and _plain(module):
            module.__class__ = PointwiseConv2d
            count += 1
    return count
