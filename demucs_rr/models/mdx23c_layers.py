"""Blocks of the MDX23C network (TFC-TDF U-Net), state-dict compatible with MSST.

Module names follow MSST's ``models/mdx23c_tfc_tdf_v3.py``: every ``nn.Sequential`` keeps its
(norm, activation, layer) indices, so ``tfc1.0`` is a norm and ``tfc1.2`` a convolution. The
forward passes are ours. Feature maps are (B, C, T, F) (batch, channels, STFT frames,
frequency bins of one sub-band group), contiguous. Norms and activations run on buffers that
the block owns, in place where the input is not needed any more, which spares a fresh
(page-faulted) allocation per layer; 1x1 convolutions run as matrix products over (T, F).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.errors import ConfigError
from demucs_rr.models.scnet_layers import recording

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "DecoderBlock",
    "Downscale",
    "EncoderBlock",
    "TDFBlock",
    "TFC_TDF",
    "Upscale",
    "activate_",
    "check_norm",
    "make_act",
    "make_norm",
    "normalize",
    "pointwise",
]

NORMS = ("BatchNorm", "InstanceNorm", "GroupNorm<groups>", "Identity")
ACTIVATIONS = ("gelu", "relu", "elu<alpha>")


def check_norm(norm: str) -> None:
    """Refuse a norm name MSST does not build (MSST silently drops such a norm; refusing it
    keeps a misspelt config from loading a model without its norms).

    Raises:
        ConfigError: an unknown name.
    """
    groups = norm[len("GroupNorm") :] if norm.startswith("GroupNorm") else ""
    if norm not in ("BatchNorm", "InstanceNorm", "Identity") and not groups.isdigit():
        raise ConfigError(f"MDX23C: unknown model.norm {norm!r}; use one of {', '.join(NORMS)}")


def make_norm(norm: str, channels: int) -> nn.Module:
    """MSST's norm layer ``norm`` over ``channels`` (``Identity``: none).

    Raises:
        ConfigError: an unknown name (:func:`check_norm`).
    """
    check_norm(norm)
    if norm == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if norm == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "Identity":
        return nn.Identity()
    return nn.GroupNorm(int(norm[len("GroupNorm") :]), channels)


def make_act(act: str) -> nn.Module:
    """MSST's activation ``act`` (``gelu``, ``relu`` or ``elu<alpha>``).

    Raises:
        ConfigError: an unknown name.
    """
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU()
    if act.startswith("elu"):
        try:
            return nn.ELU(float(act[3:]))
        except ValueError:
            pass
    raise ConfigError(f"MDX23C: unknown model.act {act!r}; use one of {', '.join(ACTIVATIONS)}")


def normalize(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm`` applied to a (B, C, T, F) tensor (a new tensor)."""
    if isinstance(norm, nn.InstanceNorm2d) and not norm.track_running_stats:
        # One group per channel: the same statistics as instance_norm (which runs batch_norm
        # on a (1, B * C, T, F) view), from group_norm's faster contiguous kernel.
        return F.group_norm(x, x.size(1), norm.weight, norm.bias, norm.eps)
    return cast(torch.Tensor, norm(x))


def activate_(x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act`` applied to ``x`` (which the caller owns): in place, unless autograd records."""
    if x.requires_grad:
        return cast(torch.Tensor, act(x))
    if isinstance(act, nn.GELU):
        return cast(torch.Tensor, torch.ops.aten.gelu_(x, approximate=act.approximate))
    if isinstance(act, nn.ReLU):
        return x.relu_()
    if isinstance(act, nn.ELU):
        return F.elu_(x, act.alpha)
    return cast(torch.Tensor, act(x))


def pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """1x1 convolution of a contiguous (B, C, T, F) by a (C', C, 1, 1) weight -> (B, C', T, F).

    One ``W @ X`` product per batch item over the (C, T * F) matrix, written in place.
    """
    batch, channels, frames, bins = x.shape
    w = weight.view(weight.size(0), channels).to(x.dtype)
    if recording(x, w):
        y = torch.matmul(w, x.view(batch, channels, frames * bins))
    else:
        y = x.new_empty((batch, w.size(0), frames * bins))
        for item in range(batch):
            torch.mm(w, x[item].view(channels, frames * bins), out=y[item])
    if bias is not None:
        y = y + bias.view(1, -1, 1)
    return y.view(batch, -1, frames, bins)


def norm_act_conv(x: torch.Tensor, layers: nn.Sequential) -> torch.Tensor:
    """MSST's (norm, act, conv) ``nn.Sequential`` on a (B, C, T, F) tensor."""
    y = activate_(normalize(x, layers[0]), layers[1])
    return cast(torch.Tensor, layers[2](y))


class TDFBlock(nn.Module):
    """One block of a :class:`TFC_TDF` (MSST builds it as a bare ``nn.Module``).

    ``tfc1``: (norm, act, 3x3 conv in_c -> c); ``tdf``: (norm, act, Linear F -> F // bn, norm,
    act, Linear F // bn -> F) over the bins; ``tfc2``: (norm, act, 3x3 conv c -> c);
    ``shortcut``: 1x1 conv in_c -> c.
    """

    def __init__(self, in_c: int, c: int, f: int, bn: int, norm: str, act: str) -> None:
        super().__init__()
        self.tfc1 = nn.Sequential(
            make_norm(norm, in_c), make_act(act), nn.Conv2d(in_c, c, 3, 1, 1, bias=False)
        )
        self.tdf = nn.Sequential(
            make_norm(norm, c),
            make_act(act),
            nn.Linear(f, f // bn, bias=False),
            make_norm(norm, c),
            make_act(act),
            nn.Linear(f // bn, f, bias=False),
        )
        self.tfc2 = nn.Sequential(
            make_norm(norm, c), make_act(act), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        )
        self.shortcut = nn.Conv2d(in_c, c, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_c, T, F) -> (B, c, T, F)."""
        shortcut = pointwise(x, self.shortcut.weight)
        x = norm_act_conv(x, self.tfc1)
        tdf = self.tdf
        y = activate_(normalize(x, tdf[0]), tdf[1])
        y = F.linear(y, cast(nn.Linear, tdf[2]).weight)
        y = activate_(normalize(y, tdf[3]), tdf[4])
        y = F.linear(y, cast(nn.Linear, tdf[5]).weight)
        x = x + y if recording(x, y) else x.add_(y)  # x: this block's own tensor
        x = norm_act_conv(x, self.tfc2)
        return x + shortcut if recording(x, shortcut) else x.add_(shortcut)


class TFC_TDF(nn.Module):  # MSST's name
    """``blocks`` :class:`TDFBlock` s: TF convolution, time-distributed bottleneck over the bins,
    TF convolution, plus a 1x1 shortcut.

    Args:
        in_c: input channels. c: output channels. blocks: number of blocks (MSST's ``l``).
        f: frequency bins F. bn: bottleneck factor (F -> F // bn -> F).
        norm / act: MSST names (see :func:`make_norm`, :func:`make_act`).
    """

    def __init__(
        self, in_c: int, c: int, blocks: int, f: int, bn: int, norm: str, act: str
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TDFBlock(in_c if index == 0 else c, c, f, bn, norm, act) for index in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_c, T, F) -> (B, c, T, F)."""
        for block in self.blocks:
            x = block(x)
        return x


class Downscale(nn.Module):
    """Norm, activation, strided convolution (kernel = stride = ``scale``):
    (B, in_c, T, F) -> (B, out_c, T / s0, F / s1)."""

    conv_class: type[nn.Conv2d] | type[nn.ConvTranspose2d] = nn.Conv2d

    def __init__(self, in_c: int, out_c: int, scale: list[int], norm: str, act: str) -> None:
        super().__init__()
        kernel = (scale[0], scale[1])
        self.conv = nn.Sequential(
            make_norm(norm, in_c),
            make_act(act),
            self.conv_class(in_c, out_c, kernel_size=kernel, stride=kernel, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_c, T, F) -> (B, out_c, T', F') as the class docstring says."""
        return norm_act_conv(x, self.conv)


class Upscale(Downscale):
    """Norm, activation, transposed convolution (kernel = stride = ``scale``):
    (B, in_c, T, F) -> (B, out_c, T * s0, F * s1)."""

    conv_class = nn.ConvTranspose2d


class EncoderBlock(nn.Module):
    """A U-Net encoder scale: ``tfc_tdf`` (c -> c), then ``downscale`` (c -> c + growth)."""

    def __init__(
        self, c: int, g: int, blocks: int, f: int, bn: int, scale: list[int], norm: str, act: str
    ) -> None:
        super().__init__()
        self.tfc_tdf = TFC_TDF(c, c, blocks, f, bn, norm, act)
        self.downscale = Downscale(c, c + g, scale, norm, act)


class DecoderBlock(nn.Module):
    """A U-Net decoder scale: ``upscale`` (c -> c - growth), concatenation with the encoder
    output of that scale, ``tfc_tdf`` (2 (c - growth) -> c - growth)."""

    def __init__(
        self, c: int, g: int, blocks: int, f: int, bn: int, scale: list[int], norm: str, act: str
    ) -> None:
        super().__init__()
        self.upscale = Upscale(c, c - g, scale, norm, act)
        self.tfc_tdf = TFC_TDF(2 * (c - g), c - g, blocks, f, bn, norm, act)
