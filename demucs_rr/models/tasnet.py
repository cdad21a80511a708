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

The indices above only fix the state-dict keys: code reaches the parts by name
(``separator.bottleneck_norm``, ``.bottleneck``, ``.blocks``, ``.mask_conv``; a block's
``conv_in``, ``act_in``, ``norm_in``, ``dsconv``; see :mod:`demucs_rr.models.tasnet_layers`).

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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.base import SingleModelDefaults, StemLayout, stem_blocks
from demucs_rr.models.tasnet_layers import (
    EPS,
    NORM_TYPES,
    ChannelwiseLayerNorm,
    Chomp1d,
    DepthwiseSeparableConv,
    GlobalLayerNorm,
    TemporalBlock,
    TemporalConvNet,
    choose_norm,
    overlap_and_add,
)

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

MASK_NONLINEARS = ("relu", "softmax")


class Encoder(nn.Module):
    """Strided conv (50 % overlap) + ReLU: (B, C, T) -> (B, N, K)."""

    def __init__(self, L: int, N: int, audio_channels: int) -> None:
        super().__init__()
        self.conv1d_U = nn.Conv1d(audio_channels, N, kernel_size=L, stride=L // 2, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, N, K), T >= L."""
        return F.relu(self.conv1d_U(mixture))


class Decoder(nn.Module):
    """Masked representation -> per-frame waveforms (Linear) -> overlap-add."""

    def __init__(self, N: int, L: int, audio_channels: int) -> None:
        super().__init__()
        self.L = L
        self.audio_channels = audio_channels
        self.basis_signals = nn.Linear(N, audio_channels * L, bias=False)

    def frames(self, mixture_w: torch.Tensor, est_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, K) representation and (B, S, N, K) masks -> (B, S, C, K, L) frames."""
        source_w = mixture_w.unsqueeze(1) * est_mask  # (B, S, N, K)
        source_w = source_w.transpose(2, 3)  # (B, S, K, N)
        est: torch.Tensor = self.basis_signals(source_w)  # (B, S, K, C*L)
        b, s, k, _ = est.shape
        return est.view(b, s, k, self.audio_channels, self.L).transpose(2, 3)  # (B, S, C, K, L)

    def forward(self, mixture_w: torch.Tensor, est_mask: torch.Tensor) -> torch.Tensor:
        """-> (B, S, C, (K - 1) * L/2 + L) waveforms."""
        return overlap_and_add(self.frames(mixture_w, est_mask).contiguous(), self.L // 2)


class ConvTasNet(SingleModelDefaults, nn.Module):
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
        N: int = 256,
        L: int = 20,
        B: int = 256,
        H: int = 512,
        P: int = 3,
        X: int = 8,
        R: int = 4,
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
        self.num_sources = len(self.sources)
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
        self.separator = TemporalConvNet(
            N, B, H, P, X, R, self.num_sources, norm_type, causal, mask_nonlinear
        )
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

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the 1x1 mask convolution, whose ``S * N`` output channels are one
        mask per stem, stem-major (weight dim 0; it has no bias)."""
        mask = self.separator.mask_conv
        return StemLayout(stem_blocks(self, mask, {"weight": 0}, self.num_sources))

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
            return mix.new_zeros(mix.size(0), self.num_sources, self.audio_channels, length)
        mixture_w = self.encoder(mix)  # (B, N, K)
        est_mask = self.separator(mixture_w)  # (B, S, N, K)
        est_source = self.decoder(mixture_w, est_mask)  # (B, S, C, (K - 1) * L/2 + L)
        return F.pad(est_source, (0, length - est_source.size(-1)))  # (B, S, C, T)


def _check_config(sources: list[str], L: int, norm_type: str, mask_nonlinear: str) -> None:
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
