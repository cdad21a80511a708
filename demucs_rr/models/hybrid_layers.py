"""Encoder / decoder layers of the hybrid models (HDemucs, HTDemucs), named as the official ones.

A layer works either on the frequency branch, (B, C, F, T) spectrogram channels, with kernels
(k, 1) along frequency, or on the time branch, (B, C, T) waveform channels. Frequency layers
fold the bins into the batch for their DConv branch, which always runs along time.

Shapes use B = batch, C = channels, F = frequency bins, T = time steps (frames or samples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.dconv import DConv

__all__ = ["HDecLayer", "HEncLayer", "MultiWrap", "ScaledEmbedding"]


def _norm(enabled: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


def _dconv_over_time(dconv: nn.Module, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """Run ``dconv`` along time; a frequency tensor (B, C, F, T) has F folded into the batch."""
    if not freq:
        return cast(torch.Tensor, dconv(y))
    batch, channels, bins, frames = y.shape
    y = y.permute(0, 2, 1, 3).reshape(-1, channels, frames)
    y = dconv(y)
    return y.view(batch, bins, channels, frames).permute(0, 2, 1, 3)


class ScaledEmbedding(nn.Module):
    """Embedding table stored divided by ``scale`` (a faster effective learning rate).

    Args:
        num_embeddings: rows (frequency bins).
        embedding_dim: columns (channels).
        scale: factor applied at lookup.
        smooth: initialise as normalised cumulative sums (smooth along the rows).
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, scale: float = 10.0, smooth: bool = False
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            # (a shape-only build on the meta device skips it: cumsum there runs torch's
            # Python reference kernels, whose first import costs seconds)
            if smooth and not self.embedding.weight.is_meta:
                weight = torch.cumsum(self.embedding.weight, dim=0)
                counts = torch.arange(1, num_embeddings + 1).to(weight)
                self.embedding.weight.copy_(weight / counts.sqrt()[:, None])
            self.embedding.weight.div_(scale)
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:
        """Effective (num_embeddings, embedding_dim) table."""
        return self.embedding.weight * self.scale

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """(N,) int64 -> (N, embedding_dim)."""
        return cast(torch.Tensor, self.embedding(index) * self.scale)


class HEncLayer(nn.Module):
    """Encoder layer: strided conv -> [+ inject] -> norm1 -> GELU -> [DConv] -> [rewrite -> GLU].

    Args:
        chin: input channels.
        chout: output channels.
        kernel_size: kernel along frequency (or time).
        stride: stride along frequency (or time).
        norm_groups: GroupNorm groups when ``norm``.
        empty: only the strided convolution (its output merges the time into the freq. branch).
        freq: frequency layer (Conv2d with (k, 1) kernels) rather than time layer (Conv1d).
        dconv: add a DConv residual branch.
        norm: GroupNorm after the convolutions (else identity, no parameters).
        context: rewrite kernel ``1 + 2 * context``.
        dconv_kw: DConv keyword arguments.
        pad: pad by ``kernel_size // 4`` (frequency) / pad to keep ``T / stride`` steps.
        rewrite: add the rewrite convolution + GLU.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 0,
        dconv_kw: dict[str, Any] | None = None,
        pad: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel_size // 4 if pad else 0
        self.freq = freq
        self.kernel_size = kernel_size
        self.stride = stride
        self.empty = empty
        self.norm = norm
        self.pad = padding
        if freq:
            self.conv: nn.Module = nn.Conv2d(
                chin, chout, (kernel_size, 1), (stride, 1), (padding, 0)
            )
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, padding)
        self.rewrite: nn.Module | None = None
        self.dconv: nn.Module | None = None
        if empty:
            return
        self.norm1 = _norm(norm, norm_groups, chout)
        if rewrite:
            klass = nn.Conv2d if freq else nn.Conv1d
            self.rewrite = klass(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = _norm(norm, norm_groups, 2 * chout)
        if dconv:
            self.dconv = DConv(chout, **(dconv_kw or {}))

    def forward(self, x: torch.Tensor, inject: torch.Tensor | None = None) -> torch.Tensor:
        """Encode one level.

        Args:
            x: (B, C, F, T) for a frequency layer; (B, C, T) or (B, C, 1, T) for a time layer.
            inject: (B, C', T') time-branch tensor added after the convolution (merge level).

        Returns:
            (B, chout, F / stride, T) or (B, chout, ceil(T / stride)).
        """
        if not self.freq and x.dim() == 4:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if not self.freq and x.shape[-1] % self.stride:
            x = F.pad(x, (0, self.stride - x.shape[-1] % self.stride))
        y = self.conv(x)
        if self.empty:
            return cast(torch.Tensor, y)
        if inject is not None:
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_over_time(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return F.glu(self.norm2(self.rewrite(y)), dim=1)


class HDecLayer(nn.Module):
    """Decoder layer: (+ skip) -> [rewrite -> norm1 -> GLU] -> [DConv] -> transposed conv -> norm2
    -> crop -> GELU (except the outermost level).

    Args:
        chin: input channels.
        chout: output channels.
        last: outermost level (no final GELU).
        kernel_size, stride, norm_groups, empty, freq, dconv, norm, dconv_kw, rewrite: as
            :class:`HEncLayer`.
        context: rewrite kernel ``1 + 2 * context``.
        pad: crop ``kernel_size // 4`` bins per side (frequency) / steps on the left (time).
        context_freq: the frequency rewrite also spans neighbouring bins (else (1, k) kernel).
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        last: bool = False,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 1,
        dconv_kw: dict[str, Any] | None = None,
        pad: bool = True,
        context_freq: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.freq = freq
        self.chin = chin
        self.empty = empty
        self.stride = stride
        self.kernel_size = kernel_size
        self.norm = norm
        self.context_freq = context_freq
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = _norm(norm, norm_groups, chout)
        self.rewrite: nn.Module | None = None
        self.dconv: nn.Module | None = None
        if empty:
            return
        if rewrite:
            if not freq:
                self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * context, 1, context)
            elif context_freq:
                self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:
                self.rewrite = nn.Conv2d(chin, 2 * chin, (1, 1 + 2 * context), 1, (0, context))
            self.norm1 = _norm(norm, norm_groups, 2 * chin)
        if dconv:
            self.dconv = DConv(chin, **(dconv_kw or {}))

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None, length: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one level.

        Args:
            x: (B, chin, F, T) or (B, chin, T) (a 3-D input of a frequency layer gets F = 1).
            skip: encoder output of the same level (None for an empty layer).
            length: time length to crop to (time layers).

        Returns:
            (output, pre): output (B, chout, 4F, T) / (B, chout, length), and ``pre``, the
            tensor fed to the transposed convolution.
        """
        if self.freq and x.dim() == 3:
            x = x.reshape(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            y = x
        else:
            if skip is None:
                raise ValueError("a non-empty decoder layer needs its skip connection")
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_over_time(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            assert length is not None
            z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z, y


class MultiWrap(nn.Module):
    """Independent copies of a frequency layer, one per frequency band (``split_ratios``).

    Encoder: band limits are adjusted so that each band's strided convolution tiles the bins of
    the unsplit layer; decoder: the overlapping transposed-convolution rows of neighbouring bands
    are summed (one bias only).

    Args:
        make_layer: builds one band's layer (an unpadded HEncLayer / HDecLayer without norm).
        split_ratios: increasing band limits in (0, 1), as fractions of the bins.
    """

    def __init__(self, make_layer: Callable[[], nn.Module], split_ratios: list[float]) -> None:
        super().__init__()
        self.split_ratios = list(split_ratios)
        self.layers = nn.ModuleList([make_layer() for _ in range(len(split_ratios) + 1)])
        first = self.layers[0]
        self.conv = isinstance(first, HEncLayer)
        if first.norm or not first.freq or first.pad:
            raise ValueError("MultiWrap needs unpadded frequency layers without norm")

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, length: int | None = None
    ) -> Any:
        """Encoder: (B, C, F, T) -> (B, C', F / 4, T). Decoder: -> ((B, C', 4F, T), None)."""
        if self.conv:
            return self._encode(x)
        assert skip is not None
        return self._decode(x, skip), None

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        bins = x.shape[2]
        start = 0
        outs = []
        for ratio, module in zip([*self.split_ratios, 1], self.layers, strict=True):
            layer = cast(HEncLayer, module)
            kernel, stride = layer.kernel_size, layer.stride
            pad = kernel // 4
            if ratio == 1:
                limit = bins
            else:
                limit = int(round(bins * ratio))
                size = limit - start + (pad if start == 0 else 0)
                frames = round((size - kernel) / stride + 1)
                limit = start + (frames - 1) * stride + kernel - (pad if start == 0 else 0)
            if limit <= start or limit > bins:
                raise ValueError(f"frequency band [{start}, {limit}) is invalid for {bins} bins")
            y = x[:, :, start:limit, :]
            if start == 0:
                y = F.pad(y, (0, 0, pad, 0))
            if ratio == 1:
                y = F.pad(y, (0, 0, 0, pad))
            outs.append(layer(y))
            start = limit - kernel + stride
        return torch.cat(outs, dim=2)

    def _decode(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        bins = x.shape[2]
        start = 0
        outs: list[torch.Tensor] = []
        last = True
        for ratio, module in zip([*self.split_ratios, 1], self.layers, strict=True):
            layer = cast(HDecLayer, module)
            limit = bins if ratio == 1 else int(round(bins * ratio))
            last, layer.last = layer.last, True  # no GELU inside: applied after the merge
            out, _ = layer(x[:, :, start:limit], skip[:, :, start:limit], None)
            layer.last = last
            stride = layer.stride
            if outs:
                bias = cast(torch.Tensor, layer.conv_tr.bias).view(1, -1, 1, 1)
                outs[-1][:, :, -stride:] += out[:, :, :stride] - bias
                out = out[:, :, stride:]
            if ratio == 1:
                out = out[:, :, : -stride // 2, :]
            if start == 0:
                out = out[:, :, stride // 2 :, :]
            outs.append(out)
            start = limit
        out = torch.cat(outs, dim=2)
        return out if last else F.gelu(out)
