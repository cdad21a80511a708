"""Conv-TasNet for music, weight-compatible with the official v2 ``demucs.tasnet.ConvTasNet``
(Demucs 2.0.3, itself adapted from kaituoxu/Conv-TasNet).

The module tree reproduces the official one exactly, so that the released state dicts (hub files
``tasnet-beb46fac.th``, ``tasnet_extra-df3777b2.th``) load with a strict ``load_state_dict``:

- ``encoder.conv1d_U``: Conv1d(C -> N, kernel L, stride L/2, no bias), then ReLU.
- ``separator.network``: ``[0]`` channel-wise LayerNorm over N, ``[1]`` 1x1 bottleneck N -> B,
  ``[2]`` R repeats of X :class:`TemporalBlock` (dilation 2**x), ``[3]`` 1x1 mask conv B -> S*N.
- ``...{r}.{x}.net``: ``[0]`` 1x1 B -> H, ``[1]`` PReLU, ``[2]`` norm(H),
  ``[3]`` :class:`DepthwiseSeparableConv` whose ``net`` is ``[depthwise, PReLU, norm, 1x1 H -> B]``
  (causal: ``[depthwise, Chomp1d, PReLU, norm, 1x1]``, so its keys are ``net.{0,2,3,4}``).
- ``decoder.basis_signals``: Linear(N -> C*L, no bias), then overlap-add with hop L/2.

Normalisation (``norm_type``), exactly as the official code:

- ``gLN``: one mean/variance per example over channels *and* time (not causal).
- ``cLN``: mean/variance over channels, separately at every frame (kaituoxu's
  ``ChannelwiseLayerNorm``; despite the name used in the Conv-TasNet paper, it is *not* a
  cumulative norm: no statistic crosses frames). Frame-local, hence causal.
- ``BN`` (``nn.BatchNorm1d``) and ``id`` (no norm) are kept for completeness.

Dimension letters: B batch, S sources, C audio channels, T samples, N encoder filters,
K encoder frames (``K = (T - L) // (L // 2) + 1``), H / B' hidden / bottleneck channels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EPS",
    "Chomp1d",
    "ChannelwiseLayerNorm",
    "ConvTasNet",
    "Decoder",
    "DepthwiseSeparableConv",
    "Encoder",
    "GlobalLayerNorm",
    "TemporalBlock",
    "TemporalConvNet",
    "choose_norm",
    "overlap_and_add",
]

#: Epsilon inside the square root of gLN / cLN (official value).
EPS = 1e-8

NORM_TYPES = ("gLN", "cLN", "BN", "id")
MASK_NONLINEARS = ("relu", "softmax")


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


class DepthwiseSeparableConv(nn.Module):
    """Dilated depthwise conv, PReLU, norm and 1x1 conv, all bias-free (``net`` Sequential).

    Args:
        in_channels: channels H of the depthwise conv.
        out_channels: channels of the pointwise output (the bottleneck B').
        kernel_size: depthwise kernel size P.
        dilation: depthwise dilation (frames).
        norm_type: see :func:`choose_norm`.
        causal: pad (P - 1) * dilation frames on both sides and chomp the right ones (left-only
            context), else pad (P - 1) * dilation // 2 on both sides.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 norm_type: str = "gLN", causal: bool = False) -> None:
        super().__init__()
        span = (kernel_size - 1) * dilation
        padding = span if causal else span // 2
        layers: list[nn.Module] = [
            nn.Conv1d(in_channels, in_channels, kernel_size, stride=1, padding=padding,
                      dilation=dilation, groups=in_channels, bias=False)
        ]
        if causal:
            layers.append(Chomp1d(padding))
        layers += [nn.PReLU(), choose_norm(norm_type, in_channels),
                   nn.Conv1d(in_channels, out_channels, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, K) -> (B, B', K)."""
        return self.net(x)


class TemporalBlock(nn.Module):
    """1x1 conv B' -> H, PReLU, norm, depthwise-separable conv H -> B', plus the residual.

    The official block has no skip-connection output (unlike the Conv-TasNet paper).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, dilation: int,
                 norm_type: str = "gLN", causal: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_channels, hidden, 1, bias=False),
            nn.PReLU(),
            choose_norm(norm_type, hidden),
            DepthwiseSeparableConv(hidden, in_channels, kernel_size, dilation, norm_type, causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, B', K) -> (B, B', K)."""
        return self.net(x) + x


class TemporalConvNet(nn.Module):
    """The separator: estimates one mask per source over the encoder representation."""

    def __init__(self, N: int, B: int, H: int, P: int, X: int, R: int, C: int,  # noqa: N803
                 norm_type: str = "gLN", causal: bool = False,
                 mask_nonlinear: str = "relu") -> None:
        super().__init__()
        self.C = C
        self.mask_nonlinear = mask_nonlinear
        repeats = [
            nn.Sequential(*[TemporalBlock(B, H, P, 2**x, norm_type, causal) for x in range(X)])
            for _ in range(R)
        ]
        self.network = nn.Sequential(
            ChannelwiseLayerNorm(N),  # always cLN here, whatever norm_type
            nn.Conv1d(N, B, 1, bias=False),
            nn.Sequential(*repeats),
            nn.Conv1d(B, C * N, 1, bias=False),
        )

    def masks(self, score: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, S*N, K) -> masks (B, S, N, K) (ReLU, or softmax over sources)."""
        score = score.view(score.size(0), self.C, -1, score.size(-1))  # (B, S, N, K)
        if self.mask_nonlinear == "softmax":
            return F.softmax(score, dim=1)
        return F.relu(score)

    def forward(self, mixture_w: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> masks (B, S, N, K)."""
        return self.masks(self.network(mixture_w))


class Encoder(nn.Module):
    """Strided conv (50 % overlap) + ReLU: (B, C, T) -> (B, N, K)."""

    def __init__(self, L: int, N: int, audio_channels: int) -> None:  # noqa: N803
        super().__init__()
        self.conv1d_U = nn.Conv1d(audio_channels, N, kernel_size=L, stride=L // 2, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, N, K), T >= L."""
        return F.relu(self.conv1d_U(mixture))


class Decoder(nn.Module):
    """Masked representation -> per-frame waveforms (Linear) -> overlap-add."""

    def __init__(self, N: int, L: int, audio_channels: int) -> None:  # noqa: N803
        super().__init__()
        self.L = L
        self.audio_channels = audio_channels
        self.basis_signals = nn.Linear(N, audio_channels * L, bias=False)

    def frames(self, mixture_w: torch.Tensor, est_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, K) representation and (B, S, N, K) masks -> (B, S, C, K, L) frames."""
        source_w = mixture_w.unsqueeze(1) * est_mask  # (B, S, N, K)
        source_w = source_w.transpose(2, 3)  # (B, S, K, N)
        est = self.basis_signals(source_w)  # (B, S, K, C*L)
        b, s, k, _ = est.shape
        return est.view(b, s, k, self.audio_channels, self.L).transpose(2, 3)  # (B, S, C, K, L)

    def forward(self, mixture_w: torch.Tensor, est_mask: torch.Tensor) -> torch.Tensor:
        """-> (B, S, C, (K - 1) * L/2 + L) waveforms."""
        return overlap_and_add(self.frames(mixture_w, est_mask).contiguous(), self.L // 2)


class ConvTasNet(nn.Module):
    """Conv-TasNet music source separation (official v2 Demucs flavour).

    Args:
        sources: stem names, in output order (S = ``len(sources)``).
        N: encoder filters. L: encoder filter length in samples (hop L // 2).
        B: bottleneck channels. H: channels of the convolutional blocks.
        P: depthwise kernel size. X: blocks per repeat (dilations 1 .. 2**(X-1)). R: repeats.
        audio_channels: input/output audio channels C.
        norm_type: ``gLN`` (released), ``cLN``, ``BN`` or ``id``; a causal model needs a
            frame-local one (``cLN``, or ``BN`` / ``id``) to be causal end to end.
        causal: left-only context in the dilated convs (Chomp1d after the depthwise conv).
        mask_nonlinear: ``relu`` (released) or ``softmax`` over sources.
        samplerate: sample rate in Hz (metadata).
        segment_length: default chunk length for split inference, in samples (8 s).

    Released models are ``ConvTasNet(sources, X=10)``: 10,977,872 parameters, 366 state tensors.
    Initialisation reproduces the official one, including its quirk: ``xavier_normal_`` on every
    parameter with more than one dimension, so the (1, N, 1) norm gains/biases are xavier-drawn
    too instead of staying 1 / 0.

    Attributes:
        init_kwargs: every constructor argument (defaults filled in) as JSON-able values, so
            that ``ConvTasNet(**model.init_kwargs)`` rebuilds the same architecture.
    """

    def __init__(
        self,
        sources: list[str],
        N: int = 256,  # noqa: N803  (official argument names)
        L: int = 20,  # noqa: N803
        B: int = 256,  # noqa: N803
        H: int = 512,  # noqa: N803
        P: int = 3,  # noqa: N803
        X: int = 8,  # noqa: N803
        R: int = 4,  # noqa: N803
        audio_channels: int = 2,
        norm_type: str = "gLN",
        causal: bool = False,
        mask_nonlinear: str = "relu",
        samplerate: int = 44100,
        segment_length: int = 44100 * 2 * 4,
    ) -> None:
        super().__init__()
        _check_config(sources, L, norm_type, mask_nonlinear)
        self.init_kwargs: dict[str, Any] = {
            "sources": list(sources), "N": N, "L": L, "B": B, "H": H, "P": P, "X": X, "R": R,
            "audio_channels": audio_channels, "norm_type": norm_type, "causal": causal,
            "mask_nonlinear": mask_nonlinear, "samplerate": samplerate,
            "segment_length": segment_length,
        }  # fmt: skip
        self.sources: list[str] = list(sources)
        self.C = len(self.sources)
        self.N, self.L, self.B, self.H, self.P, self.X, self.R = N, L, B, H, P, X, R
        self.norm_type = norm_type
        self.causal = causal
        self.mask_nonlinear = mask_nonlinear
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment_length = segment_length

        # Official creation order (encoder, separator, decoder) and init: a seeded construction
        # draws the same weights as the official class.
        self.encoder = Encoder(L, N, audio_channels)
        self.separator = TemporalConvNet(N, B, H, P, X, R, self.C, norm_type, causal,
                                         mask_nonlinear)
        self.decoder = Decoder(N, L, audio_channels)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)

    @property
    def hop(self) -> int:
        """Encoder stride in samples (L // 2)."""
        return self.L // 2

    def valid_length(self, length: int) -> int:
        """Any length is valid: the output is zero-padded back to the input length."""
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        Args:
            mix: (B, C, T) waveform, C = ``audio_channels``.

        Returns:
            (B, S, C, T) stems. The decoder covers ``(K - 1) * L/2 + L`` samples; the rest is
            zero-padded on the right, as the official model does. Inputs shorter than one
            encoder frame (T < L) give zeros (the official model raises there).

        Raises:
            ValueError: if ``mix`` is not 3-D or has the wrong channel count.
        """
        if mix.dim() != 3 or mix.size(1) != self.audio_channels:
            raise ValueError(
                f"ConvTasNet.forward expects a (batch, {self.audio_channels}, time) tensor, got "
                f"shape {tuple(mix.shape)}"
            )
        length = mix.size(-1)
        if length < self.L:
            return mix.new_zeros(mix.size(0), self.C, self.audio_channels, length)
        mixture_w = self.encoder(mix)  # (B, N, K)
        est_mask = self.separator(mixture_w)  # (B, S, N, K)
        est_source = self.decoder(mixture_w, est_mask)  # (B, S, C, (K - 1) * L/2 + L)
        return F.pad(est_source, (0, length - est_source.size(-1)))  # (B, S, C, T)


def _check_config(sources: list[str], L: int, norm_type: str,  # noqa: N803
                  mask_nonlinear: str) -> None:
    """Reject constructor values the official code would fail on later (or silently misuse)."""
    if not sources:
        raise ValueError("ConvTasNet needs at least one source name")
    if L < 2:
        raise ValueError(f"ConvTasNet needs L >= 2 (hop L // 2 >= 1), got L={L}")
    if norm_type not in NORM_TYPES:
        raise ValueError(f"unknown norm_type {norm_type!r}; use one of {', '.join(NORM_TYPES)}")
    if mask_nonlinear not in MASK_NONLINEARS:
        raise ValueError(
            f"unknown mask_nonlinear {mask_nonlinear!r}; use one of {', '.join(MASK_NONLINEARS)}"
        )
