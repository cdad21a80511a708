"""The separation network of SCNet: dual-path BiLSTM layers with a time-axis FFT between them.

Module names and shapes follow MSST's ``models/scnet/separation.py``. The forward passes are
ours and keep the features in sequence-major layouts, so each LSTM reads its input in place:

- a dual-path layer takes (F, B, T, C) (frequency-major), runs the frequency path on
  (F, B*T, C) sequences, writes its residual sum as (T, B, F, C), runs the time path on
  (T, B*F, C) and writes the result as (F, B, T, C) again; both permutations ride on the
  residual additions, and C stays the contiguous axis throughout.
- between layers the time axis alternates between T frames of C real channels and
  T // 2 + 1 frequencies of 2C channels (``rfft`` / ``irfft`` over T, ``norm="ortho"``, real
  parts in the first C channels, imaginary parts in the last C), as MSST's FeatureConversion.

``GroupNorm(1, C)`` normalises each batch item over all of (C, F, T) (statistics in float32).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DualPathRNN", "SeparationNet", "norm_items", "recording"]


def recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` (``out=`` is refused then)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def norm_items(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``GroupNorm(1, C)`` of a (L, B, M, C) tensor: per batch item b over (L, M, C).

    Returns a contiguous (L, B, M, C) tensor. The statistics come from ``layer_norm`` (a
    single accurate pass); the per-channel affine follows in one more.
    """
    length, batch, other, channels = x.shape
    items = x.transpose(0, 1).reshape(batch, -1)  # a view for B = 1
    y = F.layer_norm(items, items.shape[1:], eps=norm.eps).view(batch, length, other, channels)
    weight, bias = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    if recording(y, weight, bias):
        return torch.addcmul(bias, y.transpose(0, 1), weight).contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    return torch.addcmul(bias, y.transpose(0, 1), weight, out=out)


class DualPathRNN(nn.Module):
    """One dual-path layer: a BiLSTM across frequency, then one across time, each residual.

    Args:
        d_model: feature channels C.
        expand: LSTM hidden size factor (hidden = C * expand).
    """

    def __init__(self, d_model: int, expand: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.hidden_size = d_model * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(d_model, self.hidden_size, num_layers=1, bidirectional=True) for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(
            nn.Linear(self.hidden_size * 2, d_model) for _ in range(2)
        )
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, d_model) for _ in range(2))

    def path(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Residual BiLSTM along dim 0 of a contiguous (L, B, M, C) -> (M, B, L, C)."""
        length, batch, other, channels = x.shape
        lstm = cast(nn.LSTM, self.lstm_layers[index])
        linear = cast(nn.Linear, self.linear_layers[index])
        y = norm_items(x, cast(nn.GroupNorm, self.norm_layers[index]))
        y = lstm(y.view(length, batch * other, channels))[0]  # (L, B*M, 2H)
        y = F.linear(y, linear.weight, linear.bias).view(length, batch, other, channels)
        x, y = x.permute(2, 1, 0, 3), y.permute(2, 1, 0, 3)
        if recording(x, y):
            return (x + y).contiguous()
        out = x.new_empty((other, batch, length, channels), dtype=torch.result_type(x, y))
        return torch.add(x, y, out=out)  # the residual sum, written in the other layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(F, B, T, C) -> (F, B, T, C): frequency path, then time path."""
        return self.path(self.path(x, 0), 1)


def to_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(F, B, T, C) real -> (F, B, T // 2 + 1, 2C): orthonormal rfft over T, [real | imag]."""
    spec = torch.view_as_real(torch.fft.rfft(x.float(), dim=2, norm="ortho"))  # (F,B,T',C,2)
    f, b, t, c, _ = spec.shape
    return spec.transpose(3, 4).reshape(f, b, t, 2 * c)


def from_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(F, B, T', 2C) [real | imag] -> (F, B, 2 (T' - 1), C): orthonormal irfft over T."""
    half = x.size(-1) // 2
    x = x.float()
    spec = torch.complex(x[..., :half], x[..., half:])
    return cast(torch.Tensor, torch.fft.irfft(spec, dim=2, norm="ortho"))


class SeparationNet(nn.Module):
    """``num_layers`` dual-path layers; even ones work on frames, odd ones on their spectrum.

    Args:
        channels: channels C entering (and leaving) the network.
        expand: LSTM hidden size factor.
        num_layers: number of dual-path layers (even, so that the output is back on frames).
    """

    def __init__(self, channels: int, expand: int = 1, num_layers: int = 6) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.dp_modules = nn.ModuleList(
            DualPathRNN(channels * (2 if i % 2 == 1 else 1), expand) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, C, F, T), channels-last in and out (T even)."""
        x = x.permute(2, 0, 3, 1).contiguous()  # (F, B, T, C): a view for B = 1
        for index, layer in enumerate(self.dp_modules):
            x = layer(x)
            x = to_spectrum(x) if index % 2 == 0 else from_spectrum(x)
        return x.permute(1, 3, 0, 2).contiguous(memory_format=torch.channels_last)
