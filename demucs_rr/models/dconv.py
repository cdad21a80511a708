"""Building blocks shared by the Demucs 3/4 models: the DConv residual branch and its parts.

``DConv`` is a stack of dilated residual blocks applied along time; from a configurable level on,
each block also holds a windowed bidirectional LSTM and a local attention layer. Module and
parameter names follow the official ``demucs.demucs`` ones so that released weights load as is.

Shapes use B = batch, C = channels, T = time steps.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DConv",
    "LayerScale",
    "LocalState",
    "WindowedBLSTM",
    "add_scaled",
    "rescale_convs",
]


class LayerScale(nn.Module):
    """Learnt per-channel scale, initialised to a small constant.

    Args:
        channels: number of channels C.
        init: initial value of every scale.
        channel_last: scale the last axis (B, T, C) instead of axis 1 (B, C, T).
    """

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) or, with ``channel_last``, (B, T, C) -> same shape."""
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` in one pass over memory (``addcmul``)."""
        scale = self.scale if self.channel_last else self.scale[:, None]
        return torch.addcmul(residual, scale, x)


def add_scaled(gamma: nn.Module, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``residual + gamma(x)`` for a :class:`LayerScale` or an identity ``gamma``."""
    if isinstance(gamma, LayerScale):
        return gamma.add_to(residual, x)
    return residual + cast(torch.Tensor, gamma(x))


class WindowedBLSTM(nn.Module):
    """Bidirectional LSTM + Linear(2·dim -> dim), run on overlapping windows for long inputs.

    Inputs longer than ``max_steps`` are cut into windows of ``max_steps`` with 50 % overlap
    (zero padded at the end), processed independently and stitched back, each window keeping
    its central half (plus the outer quarters at both ends of the signal).

    Args:
        dim: channel count D (LSTM input and hidden size).
        layers: stacked LSTM layers.
        max_steps: window length (a multiple of 4), None for a single pass.
        skip: add the input to the output.
    """

    def __init__(
        self, dim: int, layers: int = 1, max_steps: int | None = None, skip: bool = False
    ) -> None:
        super().__init__()
        if max_steps is not None and max_steps % 4:
            raise ValueError(f"max_steps must be a multiple of 4, got {max_steps}")
        self.max_steps = max_steps
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)
        self.skip = skip

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, T) -> (N, D, T) in one pass (time-major LSTM)."""
        y = self.lstm(x.permute(2, 0, 1))[0]
        return cast(torch.Tensor, self.linear(y)).permute(1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> (B, D, T)."""
        batch, dim, length = x.shape
        if self.max_steps is None or length <= self.max_steps:
            y = self._run(x)
        else:
            width = self.max_steps
            hop = width // 2
            count = math.ceil(length / hop)
            padded = F.pad(x, (0, (count - 1) * hop + width - length))
            windows = padded.unfold(-1, width, hop)  # (B, D, count, width)
            windows = windows.permute(0, 2, 1, 3).reshape(-1, dim, width)
            out = self._run(windows).reshape(batch, count, dim, width)
            edge = hop // 2
            parts = [out[:, 0, :, :-edge]]
            parts += [out[:, k, :, edge:-edge] for k in range(1, count - 1)]
            parts.append(out[:, -1, :, edge:])
            y = torch.cat(parts, dim=-1)[..., :length]
        return y + x if self.skip else y


class LocalState(nn.Module):
    """Local attention over time with a learnt, per-query exponential decay of the distance.

    Scores between key step t and query step s are ``k_t·q_s / sqrt(C / heads)`` plus
    ``sum_k -k·|t - s| / sqrt(ndecay) · sigmoid(d_{k,s}) / 2``; a step never attends to itself.
    The attended content goes through a 1x1 projection and is added to the input.

    Args:
        channels: channel count C (a multiple of ``heads``).
        heads: attention heads.
        ndecay: number of decay rates per head.
    """

    def __init__(self, channels: int, heads: int = 4, ndecay: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        if ndecay:
            self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
            # Start close to zero decay (behind a sigmoid): the widest initial window.
            with torch.no_grad():
                self.query_decay.weight.mul_(0.01)
                if self.query_decay.bias is not None:
                    self.query_decay.bias.fill_(-2.0)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        batch, _, length = x.shape
        heads = self.heads
        indexes = torch.arange(length, device=x.device, dtype=x.dtype)
        delta = indexes[:, None] - indexes[None, :]  # (T keys, T queries)
        queries = self.query(x).view(batch, heads, -1, length)
        keys = self.key(x).view(batch, heads, -1, length)
        dots = torch.einsum("bhct,bhcs->bhts", keys, queries)
        dots /= keys.shape[2] ** 0.5
        if self.ndecay:
            decays = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
            decay_q = torch.sigmoid(self.query_decay(x).view(batch, heads, -1, length)) / 2
            decay_kernel = -decays.view(-1, 1, 1) * delta.abs() / self.ndecay**0.5
            dots += torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)
        eye = torch.eye(length, device=dots.device, dtype=torch.bool)
        dots.masked_fill_(eye, -100)
        weights = torch.softmax(dots, dim=2)
        content = self.content(x).view(batch, heads, -1, length)
        result = torch.einsum("bhts,bhct->bhcs", weights, content)
        return x + cast(torch.Tensor, self.proj(result.reshape(batch, -1, length)))


class DConv(nn.Module):
    """Residual branch of dilated 1-D convolutions: ``x = x + block_d(x)`` for each block.

    Block d: Conv1d(C -> hidden, ``kernel``, dilation 2^d) -> GroupNorm(1) -> GELU
    [-> WindowedBLSTM] [-> LocalState] -> Conv1d(hidden -> 2C, 1) -> GroupNorm(1) -> GLU ->
    LayerScale. ``hidden = int(C / compress)``.

    Args:
        channels: channel count C.
        compress: channel reduction inside the blocks.
        depth: number of blocks; negative for |depth| blocks without dilation.
        init: initial LayerScale value.
        norm: use the GroupNorm(1) layers.
        attn: add LocalState in every block.
        heads: LocalState heads.
        ndecay: LocalState decay rates.
        lstm: add a 2-layer WindowedBLSTM (windows of 200 steps) in every block.
        gelu: GELU activation (else ReLU).
        kernel: odd kernel size of the first convolution.
    """

    def __init__(
        self,
        channels: int,
        compress: float = 4,
        depth: int = 2,
        init: float = 1e-4,
        norm: bool = True,
        attn: bool = False,
        heads: int = 4,
        ndecay: int = 4,
        lstm: bool = False,
        gelu: bool = True,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"DConv kernel must be odd, got {kernel}")
        self.channels = channels
        self.compress = compress
        self.depth = abs(depth)
        dilate = depth > 0
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for index in range(self.depth):
            dilation = 2**index if dilate else 1
            mods: list[nn.Module] = [
                nn.Conv1d(
                    channels, hidden, kernel, dilation=dilation, padding=dilation * (kernel // 2)
                ),
                nn.GroupNorm(1, hidden) if norm else nn.Identity(),
                nn.GELU() if gelu else nn.ReLU(),
            ]
            if lstm:
                mods.append(WindowedBLSTM(hidden, layers=2, max_steps=200, skip=True))
            if attn:
                mods.append(LocalState(hidden, heads=heads, ndecay=ndecay))
            mods += [
                nn.Conv1d(hidden, channels * 2, 1),
                nn.GroupNorm(1, channels * 2) if norm else nn.Identity(),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            self.layers.append(nn.Sequential(*mods))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        for layer in self.layers:
            modules = list(cast(nn.Sequential, layer))
            y = x
            for module in modules[:-1]:
                y = module(y)
            x = add_scaled(modules[-1], x, y)  # the block's LayerScale
        return x


def rescale_convs(module: nn.Module, reference: float) -> None:
    """Divide weight and bias of every (transposed) 1-D / 2-D convolution by
    ``sqrt(std(weight) / reference)``: the initial weight rescaling of the Demucs models.
    Skipped on the ``meta`` device (no values; torch would import its Python reference kernels
    for it), where models are built to receive stored weights."""
    kinds = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, kinds) and not sub.weight.is_meta:
                scale = (sub.weight.std() / reference) ** 0.5
                sub.weight.div_(scale)
                if sub.bias is not None:
                    sub.bias.div_(scale)
