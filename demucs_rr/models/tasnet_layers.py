"""Building blocks of Conv-TasNet: the norms, the temporal blocks and the separator.

:class:`TemporalConvNet` (the separator) and its :class:`TemporalBlock` s keep the official
module tree, hence the official state-dict keys (``network.{0..3}``, ``net.{0..3}``); code
reaches their parts through named properties (``bottleneck``, ``blocks``, ``dsconv``,
``depthwise``...), never through those indices. See :mod:`demucs_rr.models.tasnet` for the full
model and the normalisation semantics.

Dimension letters: B batch, S sources, N encoder filters, K encoder frames, H / B' hidden /
bottleneck channels, P depthwise kernel size.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EPS",
    "NORM_TYPES",
    "ChannelwiseLayerNorm",
    "Chomp1d",
    "DepthwiseSeparableConv",
    "GlobalLayerNorm",
    "TemporalBlock",
    "TemporalConvNet",
    "choose_norm",
    "overlap_and_add",
]

#: Epsilon inside the square root of gLN / cLN (official value).
EPS = 1e-8

_M = TypeVar("_M", bound=nn.Module)

NORM_TYPES = ("gLN", "cLN", "BN", "id")


def overlap_and_add(frames: torch.Tensor, step: int) -> torch.Tensor:
    """Sum frames placed every ``step`` samples.

    Args:
        frames: (..., K, L) frames, K >= 1.
        step: hop between consecutive frames, in samples (1 <= step <= L).

    Returns:
        (..., (K - 1) * step + L) signal.
    """
    *outer, num_frames, frame_length = frames.shape
    sub = math.gcd(frame_length, step)  # frames are cut in sub-frames of this length
    sub_step, sub_per_frame = step // sub, frame_length // sub
    out_length = step * (num_frames - 1) + frame_length
    index = torch.arange(num_frames, device=frames.device)[:, None] * sub_step
    index = (index + torch.arange(sub_per_frame, device=frames.device)).reshape(-1)
    pieces = frames.reshape(*outer, num_frames * sub_per_frame, sub)
    out = frames.new_zeros(*outer, out_length // sub, sub)
    out.index_add_(-2, index, pieces)
    return out.reshape(*outer, out_length)


class ChannelwiseLayerNorm(nn.Module):
    """Layer norm over channels at every time step (cLN): frame-local, hence causal.

    Args:
        channels: channel count N; ``gamma`` and ``beta`` have shape (1, N, 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K), biased variance, ``EPS`` inside the square root."""
        mean = torch.mean(y, dim=1, keepdim=True)  # (B, 1, K)
        var = torch.var(y, dim=1, keepdim=True, unbiased=False)  # (B, 1, K)
        return self.gamma * (y - mean) / torch.pow(var + EPS, 0.5) + self.beta


class GlobalLayerNorm(nn.Module):
    """Layer norm over channels and time of each example (gLN); not causal.

    Args:
        channels: channel count N; ``gamma`` and ``beta`` have shape (1, N, 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K), biased variance, ``EPS`` inside the square root."""
        mean = y.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)  # (B, 1, 1)
        var = torch.pow(y - mean, 2).mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        return self.gamma * (y - mean) / torch.pow(var + EPS, 0.5) + self.beta


def choose_norm(norm_type: str, channels: int) -> nn.Module:
    """The normalisation layer named ``norm_type`` (one of :data:`NORM_TYPES`)."""
    if norm_type == "gLN":
        return GlobalLayerNorm(channels)
    if norm_type == "cLN":
        return ChannelwiseLayerNorm(channels)
    if norm_type == "id":
        return nn.Identity()
    if norm_type == "BN":
        return nn.BatchNorm1d(channels)
    raise ValueError(f"unknown norm_type {norm_type!r}; use one of {', '.join(NORM_TYPES)}")


class Chomp1d(nn.Module):
    """Drop the last ``chomp_size`` frames: turns a both-sides padded conv into a causal one."""

    def __init__(self, chomp_size: int) -> None:
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, K + chomp_size) -> (B, H, K)."""
        if self.chomp_size == 0:  # the official x[..., :-0] would return an empty tensor
            return x
        return x[:, :, : -self.chomp_size].contiguous()


def _part(seq: nn.Sequential, index: int, kind: type[_M]) -> _M:
    """``seq[index]``, checked to be a ``kind`` (named access to an official Sequential)."""
    module = seq[index]
    if not isinstance(module, kind):
        raise TypeError(f"expected a {kind.__name__} at [{index}], found {type(module).__name__}")
    return module


class DepthwiseSeparableConv(nn.Module):
    """Dilated depthwise conv, PReLU, norm and 1x1 conv, all bias-free (``net`` Sequential).

    The parts are reached by name (:attr:`depthwise`, :attr:`act`, :attr:`norm`,
    :attr:`pointwise`); the official ``net`` indices only fix the state-dict keys.

    Args:
        in_channels: channels H of the depthwise conv.
        out_channels: channels of the pointwise output (the bottleneck B').
        kernel_size: depthwise kernel size P.
        dilation: depthwise dilation (frames).
        norm_type: see :func:`choose_norm`.
        causal: pad (P - 1) * dilation frames on both sides and chomp the right ones (left-only
            context), else pad (P - 1) * dilation // 2 on both sides.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int,
        norm_type: str = "gLN",
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.causal = causal
        span = (kernel_size - 1) * dilation
        self.padding = span if causal else span // 2
        layers: list[nn.Module] = [
            nn.Conv1d(
                in_channels,
                in_channels,
                kernel_size,
                stride=1,
                padding=self.padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            )
        ]
        if causal:
            layers.append(Chomp1d(self.padding))
        layers += [
            nn.PReLU(),
            choose_norm(norm_type, in_channels),
            nn.Conv1d(in_channels, out_channels, 1, bias=False),
        ]
        self.net = nn.Sequential(*layers)

    @property
    def context(self) -> int:
        """Past frames the depthwise conv reads besides the current one: (P - 1) * dilation."""
        return (self.kernel_size - 1) * self.dilation

    @property
    def depthwise(self) -> nn.Conv1d:
        """The dilated depthwise conv H -> H, weight (H, 1, P)."""
        return _part(self.net, 0, nn.Conv1d)

    @property
    def act(self) -> nn.PReLU:
        """The PReLU after the depthwise conv (after the chomp when causal)."""
        return _part(self.net, -3, nn.PReLU)

    @property
    def norm(self) -> nn.Module:
        """The norm over H channels (see :func:`choose_norm`)."""
        return _part(self.net, -2, nn.Module)

    @property
    def pointwise(self) -> nn.Conv1d:
        """The 1x1 conv H -> B', weight (B', H, 1)."""
        return _part(self.net, -1, nn.Conv1d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, K) -> (B, B', K)."""
        out: torch.Tensor = self.net(x)
        return out


class TemporalBlock(nn.Module):
    """1x1 conv B' -> H, PReLU, norm, depthwise-separable conv H -> B', plus the residual.

    The official block has no skip-connection output (unlike the Conv-TasNet paper). The parts
    are reached by name (:attr:`conv_in`, :attr:`act_in`, :attr:`norm_in`, :attr:`dsconv`).
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        kernel_size: int,
        dilation: int,
        norm_type: str = "gLN",
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_channels, hidden, 1, bias=False),
            nn.PReLU(),
            choose_norm(norm_type, hidden),
            DepthwiseSeparableConv(hidden, in_channels, kernel_size, dilation, norm_type, causal),
        )

    @property
    def conv_in(self) -> nn.Conv1d:
        """The 1x1 conv B' -> H, weight (H, B', 1)."""
        return _part(self.net, 0, nn.Conv1d)

    @property
    def act_in(self) -> nn.PReLU:
        """The PReLU after :attr:`conv_in`."""
        return _part(self.net, 1, nn.PReLU)

    @property
    def norm_in(self) -> nn.Module:
        """The norm over H channels after :attr:`act_in`."""
        return _part(self.net, 2, nn.Module)

    @property
    def dsconv(self) -> DepthwiseSeparableConv:
        """The dilated depthwise-separable conv H -> B' (its dilation and padding included)."""
        return _part(self.net, 3, DepthwiseSeparableConv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, B', K) -> (B, B', K)."""
        out: torch.Tensor = self.net(x) + x
        return out


class TemporalConvNet(nn.Module):
    """The separator: estimates one mask per source over the encoder representation.

    ``network`` keeps the official layout (state-dict keys); the parts are reached by name:
    :attr:`bottleneck_norm`, :attr:`bottleneck`, :attr:`blocks` and :attr:`mask_conv`.

    Args:
        N, B, H, P, X, R: see :class:`ConvTasNet`.
        num_sources: number of sources S (one mask each).
        norm_type, causal, mask_nonlinear: see :class:`ConvTasNet`.
    """

    def __init__(
        self,
        N: int,
        B: int,
        H: int,
        P: int,
        X: int,
        R: int,
        num_sources: int,
        norm_type: str = "gLN",
        causal: bool = False,
        mask_nonlinear: str = "relu",
    ) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.mask_nonlinear = mask_nonlinear
        repeats = [
            nn.Sequential(*[TemporalBlock(B, H, P, 2**x, norm_type, causal) for x in range(X)])
            for _ in range(R)
        ]
        self.network = nn.Sequential(
            ChannelwiseLayerNorm(N),  # always cLN here, whatever norm_type
            nn.Conv1d(N, B, 1, bias=False),
            nn.Sequential(*repeats),
            nn.Conv1d(B, num_sources * N, 1, bias=False),
        )

    @property
    def bottleneck_norm(self) -> ChannelwiseLayerNorm:
        """The cLN over the N encoder channels, before :attr:`bottleneck`."""
        return _part(self.network, 0, ChannelwiseLayerNorm)

    @property
    def bottleneck(self) -> nn.Conv1d:
        """The 1x1 conv N -> B', weight (B', N, 1)."""
        return _part(self.network, 1, nn.Conv1d)

    @property
    def blocks(self) -> list[TemporalBlock]:
        """The R * X temporal blocks in order (dilations 1, 2, .., 2**(X-1), R times)."""
        repeats = _part(self.network, 2, nn.Sequential)
        return [
            block
            for repeat in repeats
            for block in repeat.children()
            if isinstance(block, TemporalBlock)
        ]

    @property
    def mask_conv(self) -> nn.Conv1d:
        """The 1x1 conv B' -> S*N giving the mask logits, weight (S*N, B', 1)."""
        return _part(self.network, 3, nn.Conv1d)

    def masks(self, score: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, S*N, K) -> masks (B, S, N, K) (ReLU, or softmax over sources)."""
        score = score.view(score.size(0), self.num_sources, -1, score.size(-1))  # (B, S, N, K)
        if self.mask_nonlinear == "softmax":
            return F.softmax(score, dim=1)
        return F.relu(score)

    def forward(self, mixture_w: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> masks (B, S, N, K)."""
        return self.masks(self.network(mixture_w))
