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

``GroupNorm(1, C)`` normalises each batch item over all of (C, F, T) (statistics in float32);
its per-channel affine is folded into the input weights of the LSTM that follows it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.scnet_layers import recording

__all__ = [
    "DualPathRNN",
    "SeparationNet",
    "normed_lstm",
    "standardize_items",
]


def standardize_items(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / std of each batch item of a (L, B, M, C) tensor, over (L, M, C).

    Returns a contiguous (L, B, M, C) tensor; ``layer_norm`` takes the statistics (a single
    accurate pass, float32 accumulation).
    """
    length, batch, other, channels = x.shape
    items = x.transpose(0, 1).reshape(batch, -1)  # a view for B = 1
    y = F.layer_norm(items, items.shape[1:], eps=eps).view(batch, length, other, channels)
    return y.transpose(0, 1).contiguous()


def normed_lstm(lstm: nn.LSTM, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``lstm(norm(x))`` for a (L, N, C) ``x`` whose items are already standardised.

    The norm's per-channel affine is folded into the LSTM's input weights and biases
    (``W diag(g) x + W b``), which spares a pass over the activations.
    """
    gain, shift = norm.weight, norm.bias
    params: list[torch.Tensor] = []
    for suffix in ("", "_reverse"):
        w_ih = getattr(lstm, f"weight_ih_l0{suffix}")
        b_ih = getattr(lstm, f"bias_ih_l0{suffix}")
        w_hh, b_hh = getattr(lstm, f"weight_hh_l0{suffix}"), getattr(lstm, f"bias_hh_l0{suffix}")
        params += [w_ih * gain, w_hh, torch.addmv(b_ih, w_ih, shift), b_hh]
    state = x.new_zeros((2, x.size(1), lstm.hidden_size))
    output = torch.lstm(x, (state, state), params, True, 1, 0.0, lstm.training, True, False)
    return output[0]


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
        norm = cast(nn.GroupNorm, self.norm_layers[index])
        y = standardize_items(x, norm.eps).view(length, batch * other, channels)
        y = normed_lstm(lstm, norm, y)  # (L, B*M, 2H)
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
