"""Encoder and decoder blocks of SCNet (sparse down-sample / up-sample layers).

Module names and parameter shapes follow MSST's ``models/scnet/scnet.py`` so that its state
dicts load strictly; the forward passes are ours. Spectrogram tensors are (B, C, F, T) (batch,
channels, frequency bins, STFT frames) stored channels-last (memory order B, F, T, C): every
band slice along F is then one contiguous block, the convolutions run on oneDNN's native
``nhwc`` layout and the hand-over to the dual-path network is a free view.

The convolution modules of MSST run ``Conv1d`` over time on (B * f, C, T) rows; here they run as
``Conv2d`` with (1, k) kernels on the (B, C, f, T) band itself (same weights, unsqueezed), and
their ``GroupNorm(1, C)`` takes its statistics per (b, f) row over (C, T), as MSST's does.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvolutionModule",
    "DecoderBlock",
    "FusionLayer",
    "SDblock",
    "SDlayer",
    "SUlayer",
    "band_padding",
    "band_splits",
    "norm_rows",
    "recording",
]


def recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` (in-place and ``out=`` are off)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def norm_rows(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``GroupNorm(1, C)`` of every (b, f) row of a channels-last (B, C, f, T) tensor.

    Each row's (T, C) block is contiguous in memory: one ``layer_norm`` over it, with the
    per-channel affine repeated along T, normalises it in a single pass.
    """
    batch, channels, bins, frames = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch, bins, frames * channels)  # a view
    weight, bias = norm.weight.repeat(frames), norm.bias.repeat(frames)
    y = F.layer_norm(rows, (frames * channels,), weight.to(x.dtype), bias.to(x.dtype), norm.eps)
    return y.view(batch, bins, frames, channels).permute(0, 3, 1, 2)


def band_splits(bins: int, sr_low: float, sr_mid: float) -> list[tuple[int, int]]:
    """(start, end) bin ranges of the low, mid and high bands of ``bins`` frequency bins.

    The same float expressions as MSST, so the boundaries agree to the bin.
    """
    low = math.ceil(bins * sr_low)
    mid = math.ceil(bins * (sr_low + sr_mid))
    return [(0, low), (low, mid), (mid, bins)]


def band_padding(length: int, stride: int, kernel: int) -> tuple[int, int]:
    """Zero bins (before, after) that make a band of ``length`` bins fit its down-sample conv."""
    total = kernel - stride if stride == 1 else (stride - length % stride) % stride
    return total // 2, total - total // 2


class ConvLayer(nn.Sequential):
    """One residual layer of a :class:`ConvolutionModule` (MSST's ``nn.Sequential``).

    Indices: 0 GroupNorm(1, C), 1 Conv1d C -> 2h (kernel k), 2 GLU, 3 depthwise Conv1d h -> h,
    4 GroupNorm(1, h), 5 SiLU (MSST's Swish), 6 Conv1d h -> C (1x1).
    """

    def __init__(self, channels: int, hidden: int, kernel: int) -> None:
        padding = kernel // 2
        super().__init__(
            nn.GroupNorm(1, channels),
            nn.Conv1d(channels, hidden * 2, kernel, padding=padding),
            nn.GLU(1),
            nn.Conv1d(hidden, hidden, kernel, padding=padding, groups=hidden),
            nn.GroupNorm(1, hidden),
            nn.SiLU(),
            nn.Conv1d(hidden, channels, 1),
        )

    def add_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the residual branch, for a (B, C, f, T) band (convolutions over T).

        The closing 1x1 convolution accumulates straight into ``x`` (a GEMM over its
        channels-last rows) when ``x`` is channels-last and autograd does not record: ``x``
        must then be the caller's own tensor, as the module's band is.
        """
        norm_in, conv_in = cast(nn.GroupNorm, self[0]), cast(nn.Conv1d, self[1])
        depthwise, norm_mid = cast(nn.Conv1d, self[3]), cast(nn.GroupNorm, self[4])
        conv_out = cast(nn.Conv1d, self[6])
        pad = (0, conv_in.kernel_size[0] // 2)
        y = F.conv2d(norm_rows(x, norm_in), conv_in.weight.unsqueeze(2), conv_in.bias, padding=pad)
        y = F.glu(y, dim=1)
        y = F.conv2d(
            y, depthwise.weight.unsqueeze(2), depthwise.bias, padding=pad, groups=y.size(1)
        )
        y = F.silu(norm_rows(y, norm_mid)).permute(0, 2, 3, 1)  # (B, f, T, h)
        weight, bias = conv_out.weight.squeeze(2), cast(torch.Tensor, conv_out.bias)
        rows = x.permute(0, 2, 3, 1)  # (B, f, T, C)
        if recording(x, y) or not rows.is_contiguous() or not y.is_contiguous():
            return x + F.linear(y, weight, bias).permute(0, 3, 1, 2)
        rows = rows.view(-1, rows.size(-1))
        rows.addmm_(y.reshape(rows.size(0), -1), weight.t().to(x.dtype)).add_(bias.to(x.dtype))
        return x


class ConvolutionModule(nn.Module):
    """Stack of ``depth`` residual :class:`ConvLayer` s over time (MSST's ConvolutionModule).

    Outside autograd the layers add into the input in place: the SD block hands each module a
    band tensor of its own.

    Args:
        channels: input/output channels C.
        depth: number of layers (MSST takes ``abs(depth)``).
        compress: channel compression; hidden width ``int(channels / compress)``.
        kernel: odd kernel size of the time convolutions.
    """

    def __init__(self, channels: int, depth: int = 2, compress: float = 4, kernel: int = 3) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(ConvLayer(channels, hidden, kernel) for _ in range(abs(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, f, T) -> (B, C, f, T)."""
        for layer in self.layers:
            x = cast(ConvLayer, layer).add_residual(x)
        return x


class SDlayer(nn.Module):
    """Sparse down-sample layer: one strided (kernel, 1) convolution per frequency band.

    Args:
        channels_in: input channels. channels_out: output channels.
        band_sr: fractions of the bins in the low, mid and high bands.
        band_stride: down-sampling factor per band. band_kernel: kernel height per band.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        band_sr: list[float],
        band_stride: list[int],
        band_kernel: list[int],
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (kernel, 1), (stride, 1))
            for stride, kernel in zip(band_stride, band_kernel, strict=True)
        )
        self.strides = list(band_stride)
        self.kernels = list(band_kernel)
        self.sr_low, self.sr_mid = band_sr[0], band_sr[1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        """(B, C_in, F, T) -> three (B, C_out, f_i, T) bands and their input sizes (bins)."""
        splits = band_splits(x.size(2), self.sr_low, self.sr_mid)
        bands, sizes = [], []
        layout = zip(self.convs, self.strides, self.kernels, splits, strict=True)
        for module, stride, kernel, (start, end) in layout:
            conv = cast(nn.Conv2d, module)
            before, after = band_padding(end - start, stride, kernel)
            band = x[:, :, start:end]
            if before != after:  # the convolution pads symmetrically only
                band, before = F.pad(band, (0, 0, before, after)), 0
            bands.append(F.conv2d(band, conv.weight, conv.bias, conv.stride, (before, 0)))
            sizes.append(end - start)
        return bands, sizes


class SUlayer(nn.Module):
    """Sparse up-sample layer: one transposed (kernel, 1) convolution per band, trimmed back.

    Args:
        channels_in: input channels. channels_out: output channels.
        band_stride / band_kernel: as the matching :class:`SDlayer`.
    """

    def __init__(
        self, channels_in: int, channels_out: int, band_stride: list[int], band_kernel: list[int]
    ) -> None:
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (kernel, 1), (stride, 1))
            for stride, kernel in zip(band_stride, band_kernel, strict=True)
        )

    def forward(self, x: torch.Tensor, lengths: list[int], sizes: list[int]) -> torch.Tensor:
        """(B, C_in, F', T) with band sizes ``lengths`` -> (B, C_out, sum(sizes), T)."""
        outputs, start = [], 0
        for convtr, length, size in zip(self.convtrs, lengths, sizes, strict=True):
            out = cast(torch.Tensor, convtr(x[:, :, start : start + length]))
            trim = abs(size - out.size(2)) // 2
            outputs.append(out[:, :, trim : trim + size])
            start += length
        return torch.cat(outputs, dim=2)


class FusionLayer(nn.Module):
    """Decoder fusion: add the skip, then a GLU-gated 3x3 convolution.

    MSST convolves ``cat([x, x])`` with a (2C, 2C) kernel; the two input halves of the kernel
    are summed here instead (the same linear map on half the input channels).
    """

    def __init__(
        self, channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 2, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) and a skip of the same shape -> (B, C, F, T)."""
        half = x.size(1)
        weight = self.conv.weight[:, :half] + self.conv.weight[:, half:]
        x = x + skip if recording(x, skip) else x.add_(skip)  # x is the decoder's own
        y = F.conv2d(x, weight, self.conv.bias, self.conv.stride, self.conv.padding)
        return F.glu(y, dim=1)


class SDblock(nn.Module):
    """Encoder block: :class:`SDlayer`, a :class:`ConvolutionModule` per band, a global conv.

    Args:
        channels_in / channels_out: channels before and after the block.
        band_sr / band_stride / band_kernel: band layout (see :class:`SDlayer`).
        depths: convolution-module depth of each band. compress / kernel: their shape.
        kernel_size: odd kernel of the global 3x3 convolution.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        band_sr: list[float],
        band_stride: list[int],
        band_kernel: list[int],
        depths: list[int],
        compress: float = 4,
        kernel: int = 3,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.SDlayer = SDlayer(channels_in, channels_out, band_sr, band_stride, band_kernel)
        self.conv_modules = nn.ModuleList(
            ConvolutionModule(channels_out, depth, compress, kernel) for depth in depths
        )
        self.globalconv = nn.Conv2d(
            channels_out, channels_out, kernel_size, 1, (kernel_size - 1) // 2
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        """(B, C_in, F, T) -> output (B, C_out, F', T), skip (same), band sizes out and in."""
        bands, sizes = self.SDlayer(x)
        bands = [
            F.gelu(module(band)) for module, band in zip(self.conv_modules, bands, strict=True)
        ]
        lengths = [band.size(2) for band in bands]
        full = torch.cat(bands, dim=2)
        return self.globalconv(full), full, lengths, sizes


class DecoderBlock(nn.Sequential):
    """A decoder block: ``0`` :class:`FusionLayer`, ``1`` :class:`SUlayer` (MSST's
    ``nn.Sequential``, called with the skip and band sizes of its encoder block)."""

    def __init__(
        self, channels_in: int, channels_out: int, band_stride: list[int], band_kernel: list[int]
    ) -> None:
        super().__init__(
            FusionLayer(channels_in), SUlayer(channels_in, channels_out, band_stride, band_kernel)
        )

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, skip: torch.Tensor, lengths: list[int], sizes: list[int]
    ) -> torch.Tensor:
        """(B, C_in, F', T) -> (B, C_out, F, T)."""
        fusion, upsample = cast(FusionLayer, self[0]), cast(SUlayer, self[1])
        return cast(torch.Tensor, upsample(fusion(x, skip), lengths, sizes))
