"""The two-branch U-Net shared by HDemucs and HTDemucs.

A frequency branch encodes the spectrogram (``F = nfft / 2`` bins, ``T = ceil(L / hop)``
frames, complex values as channels or magnitudes) with strided convolutions along frequency;
a time branch encodes the waveform with strided 1-D convolutions, ``stride`` per level as well,
so both reach the same time resolution. Where the frequency axis collapses to one bin the time
branch is injected into the frequency branch and both continue as one. The decoders mirror the
encoders; the output is the inverse STFT of the frequency decoder plus the time decoder output.

Shapes use B = batch, S = sources, C = audio channels, L = samples, F = bins, T = frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import Any

import torch
from torch import nn

from demucs_rr.models import spec
from demucs_rr.models.base import SingleModelDefaults, StemLayout, stem_blocks
from demucs_rr.models.hybrid_layers import HDecLayer, HEncLayer, MultiWrap, ScaledEmbedding

__all__ = [
    "BranchPlan",
    "HybridUNet",
    "Normalized",
    "Segment",
    "SegmentLike",
    "Skips",
    "parse_segment",
    "segment_json",
]

Segment = float | Fraction
"""Segment duration in seconds: a float or an exact fraction (HTDemucs training length)."""

SegmentLike = float | Fraction | str | Mapping[str, int]
"""What a ``segment`` constructor argument may be (see :func:`parse_segment`)."""


def parse_segment(value: SegmentLike) -> Segment:
    """A segment from a number, a Fraction, a ``"39/5"`` string or a ``{"numerator",
    "denominator"}`` mapping (the JSON forms used by packages)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, str):
        return Fraction(value)
    if isinstance(value, Mapping):
        return Fraction(int(value["numerator"]), int(value["denominator"]))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"segment must be a number or a fraction, got {value!r}")
    return value


def segment_json(value: Segment) -> float | str:
    """JSON-able form of a segment (exact fractions as ``"num/den"`` strings)."""
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    return value


@dataclass(frozen=True)
class BranchPlan:
    """Structure of the two U-Net branches (constructor arguments of HDemucs / HTDemucs)."""

    sources: int
    audio_channels: int
    channels: int
    channels_time: int | None
    growth: float
    nfft: int
    cac: bool
    depth: int
    rewrite: bool
    hybrid: bool
    multi_freqs: list[float]
    multi_freqs_depth: int
    freq_emb: float
    emb_scale: float
    emb_smooth: bool
    kernel_size: int
    time_stride: int
    stride: int
    context: int
    context_enc: int
    norm_starts: int
    norm_groups: int
    dconv_mode: int


@dataclass
class Skips:
    """What the encoders leave for the decoders: outputs and input lengths of each level."""

    saved: list[torch.Tensor] = field(default_factory=list)  # frequency / merged branch
    saved_t: list[torch.Tensor] = field(default_factory=list)  # time branch
    lengths: list[int] = field(default_factory=list)
    lengths_t: list[int] = field(default_factory=list)


@dataclass
class Normalized:
    """Normalised inputs of both branches and their statistics (per batch item)."""

    z: torch.Tensor  # (B, C, F, T, 2) mixture spectrum
    x: torch.Tensor  # (B, C', F, T) frequency-branch input
    mean: torch.Tensor
    std: torch.Tensor
    xt: torch.Tensor  # (B, C, L) time-branch input
    meant: torch.Tensor
    stdt: torch.Tensor


class HybridUNet(SingleModelDefaults, nn.Module):
    """Base class: branch construction and the encoder / decoder passes.

    Subclasses set the metadata attributes and call :meth:`_build_branches` in their constructor.
    ``real_stft`` (not a constructor argument) forces the STFT implementation for this model
    (see :func:`demucs_rr.models.spec.use_real_stft`).
    """

    sources: list[str]
    samplerate: int
    audio_channels: int
    segment: Segment
    init_kwargs: dict[str, Any]
    nfft: int
    cac: bool
    wiener_iters: int
    end_iters: int
    pre_padding: spec.PrePadding
    freq_emb: ScaledEmbedding | None
    freq_emb_scale: float

    def __init__(self) -> None:
        super().__init__()
        self.real_stft: bool | None = None

    @property
    def segment_length(self) -> int:
        """Default split chunk in samples: ``int(segment * samplerate)``."""
        return int(self.segment * self.samplerate)

    @segment_length.setter
    def segment_length(self, samples: int) -> None:
        self.segment = Fraction(int(samples), self.samplerate)

    # ------------------------------------------------------------------------- construction

    def _build_branches(self, plan: BranchPlan, dconv_kw: Callable[[int], dict[str, Any]]) -> None:
        """Create ``encoder``, ``decoder``, ``tencoder``, ``tdecoder`` and ``freq_emb``.

        Each level divides the bins of the frequency branch and the samples of the time branch
        by ``stride`` until at most ``kernel_size`` bins remain; that level collapses them to one
        and its time encoder is a bare convolution whose output (one step per frame) is injected
        into the frequency branch. Further levels are 1-D convolutions with stride
        ``time_stride`` on the merged branch.
        """
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        if plan.hybrid:
            self.tencoder = nn.ModuleList()
            self.tdecoder = nn.ModuleList()
        self.freq_emb = None
        chin = plan.audio_channels
        chin_z = chin * (2 if plan.cac else 1)
        chout = plan.channels_time or plan.channels
        chout_z = plan.channels
        freqs = plan.nfft // 2
        for index in range(plan.depth):
            freq = freqs > 1
            last_freq = freq and freqs <= plan.kernel_size
            if last_freq:
                chout = chout_z = max(chout, chout_z)
            kw, kwt = self._level_kwargs(plan, index, freqs, dconv_kw(index))
            multi = bool(plan.multi_freqs) and index < plan.multi_freqs_depth
            self.encoder.append(
                self._make_level(
                    HEncLayer, multi, plan, chin_z, chout_z, context=plan.context_enc, **kw
                )
            )
            if plan.hybrid and freq:
                self.tencoder.append(
                    HEncLayer(
                        chin,
                        chout,
                        dconv=bool(plan.dconv_mode & 1),
                        context=plan.context_enc,
                        empty=last_freq,
                        **kwt,
                    )
                )
            if index == 0:
                chin = plan.audio_channels * plan.sources
                chin_z = chin * (2 if plan.cac else 1)
            self.decoder.insert(
                0,
                self._make_level(
                    HDecLayer,
                    multi,
                    plan,
                    chout_z,
                    chin_z,
                    last=index == 0,
                    context=plan.context,
                    context_freq=not multi,
                    **kw,
                ),
            )
            if plan.hybrid and freq:
                self.tdecoder.insert(
                    0,
                    HDecLayer(
                        chout,
                        chin,
                        dconv=bool(plan.dconv_mode & 2),
                        empty=last_freq,
                        last=index == 0,
                        context=plan.context,
                        **kwt,
                    ),
                )
            chin, chin_z = chout, chout_z
            chout, chout_z = int(plan.growth * chout), int(plan.growth * chout_z)
            if freq:
                freqs = 1 if freqs <= plan.kernel_size else freqs // plan.stride
            if index == 0 and plan.freq_emb:
                self.freq_emb = ScaledEmbedding(
                    freqs, chin_z, smooth=plan.emb_smooth, scale=plan.emb_scale
                )
                self.freq_emb_scale = plan.freq_emb

    @staticmethod
    def _level_kwargs(
        plan: BranchPlan, index: int, freqs: int, dconv_kw: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Layer keyword arguments of level ``index``: (frequency / merged, time branch)."""
        freq = freqs > 1
        last_freq = freq and freqs <= plan.kernel_size
        kernel = plan.kernel_size if freq else 2 * plan.time_stride
        if last_freq:
            kernel = freqs
        kw: dict[str, Any] = {
            "kernel_size": kernel,
            "stride": plan.stride if freq else plan.time_stride,
            "freq": freq,
            "pad": not last_freq,
            "norm": index >= plan.norm_starts,
            "rewrite": plan.rewrite,
            "norm_groups": plan.norm_groups,
            "dconv_kw": dconv_kw,
        }
        kwt = {
            **kw,
            "freq": False,
            "kernel_size": plan.kernel_size,
            "stride": plan.stride,
            "pad": True,
        }
        return kw, kwt

    @staticmethod
    def _make_level(
        klass: type[HEncLayer] | type[HDecLayer],
        multi: bool,
        plan: BranchPlan,
        chin: int,
        chout: int,
        **kw: Any,
    ) -> nn.Module:
        """One frequency (or merged) layer, or a per-band :class:`MultiWrap` of them."""
        dconv = bool(plan.dconv_mode & (1 if klass is HEncLayer else 2))
        if not multi:
            return klass(chin, chout, dconv=dconv, **kw)
        if not kw["pad"]:
            raise ValueError("multi_freqs levels must keep more than kernel_size bins")
        return MultiWrap(
            partial(klass, chin, chout, dconv=dconv, **{**kw, "pad": False}), plan.multi_freqs
        )

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the outermost decoder layer of each branch (every band's layer of
        a per-band level): its transposed convolution (weight dim 1, bias dim 0) and the norm
        after it when it has one (dim 0), whose ``S * C`` channels (``S * 2C`` for a
        complex-as-channels spectrogram) are the stems, stem-major."""
        outer = [self.decoder[-1]]
        if hasattr(self, "tdecoder"):
            outer.append(self.tdecoder[-1])
        sources = len(self.sources)
        blocks: dict[str, tuple[int, int]] = {}
        for top in outer:
            for layer in top.modules():
                if isinstance(layer, HDecLayer):
                    blocks |= stem_blocks(self, layer.conv_tr, {"weight": 1, "bias": 0}, sources)
                    blocks |= stem_blocks(self, layer.norm2, {"weight": 0, "bias": 0}, sources)
        return StemLayout(blocks)

    # ---------------------------------------------------------------------------- forward

    def _normalize_inputs(self, mix: torch.Tensor) -> Normalized:
        """Spectrogram of ``mix`` (B, C, L) and both normalised branch inputs."""
        z = spec.hybrid_stft(mix, self.nfft, self.pre_padding, real=self.real_stft)
        x = spec.complex_as_channels(z) if self.cac else spec.magnitude(z, real=self.real_stft)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        return Normalized(
            z=z,
            x=(x - mean) / (1e-5 + std),
            mean=mean,
            std=std,
            xt=(mix - meant) / (1e-5 + stdt),
            meant=meant,
            stdt=stdt,
        )

    def _encode(
        self, x: torch.Tensor, xt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, Skips]:
        """Run all encoder levels (``xt`` None: no time branch); returns the bottom tensors."""
        skips = Skips()
        tencoder: list[nn.Module] = list(self.tencoder) if xt is not None else []
        for index, encode in enumerate(self.encoder):
            skips.lengths.append(x.shape[-1])
            inject = None
            if xt is not None and index < len(tencoder):
                skips.lengths_t.append(xt.shape[-1])
                tenc = tencoder[index]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt
                else:
                    skips.saved_t.append(xt)
            x = encode(x, inject)
            if index == 0 and self.freq_emb is not None:
                bins = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(bins).t()[None, :, :, None].expand_as(x)
                x = x + self.freq_emb_scale * emb
            skips.saved.append(x)
        return x, xt, skips

    def _decode(
        self, x: torch.Tensor, xt: torch.Tensor | None, skips: Skips
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run all decoder levels from the bottom tensors ``x`` / ``xt``.

        Time decoders pair with the outer frequency decoders; the one matching the merge level
        starts from the frequency decoder's pre-convolution tensor at its single bin.
        """
        tdecoder: list[nn.Module] = list(self.tdecoder) if xt is not None else []
        offset = len(self.decoder) - len(tdecoder)
        for index, decode in enumerate(self.decoder):
            x, pre = decode(x, skips.saved.pop(), skips.lengths.pop())
            if xt is None or index < offset:
                continue
            tdec = tdecoder[index - offset]
            length_t = skips.lengths_t.pop()
            if tdec.empty:
                xt, _ = tdec(pre[:, :, 0], None, length_t)
            else:
                xt, _ = tdec(xt, skips.saved_t.pop(), length_t)
        return x, xt

    def _mask(self, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Source spectra (B, S, C, F, T, 2) from the de-normalised decoder output ``m``."""
        if self.cac:
            return spec.channels_as_complex(m)
        iterations = self.end_iters if self.training else self.wiener_iters
        return spec.phase_from_mixture(m, z, iterations, real=self.real_stft)

    def _combine(
        self, x: torch.Tensor, xt: torch.Tensor | None, inputs: Normalized, length: int
    ) -> torch.Tensor:
        """De-normalise both branches, invert the spectrogram and sum: (B, S, C, length)."""
        batch, _, bins, frames = inputs.x.shape
        sources = len(self.sources)
        x = x.reshape(batch, sources, -1, bins, frames)
        x = x * inputs.std[:, None] + inputs.mean[:, None]
        out = spec.hybrid_istft(
            self._mask(inputs.z, x), length, self.pre_padding, real=self.real_stft
        )
        if xt is None:
            return out
        xt = xt.reshape(batch, sources, -1, length)
        return xt * inputs.stdt[:, None] + inputs.meant[:, None] + out

    def _check_input(self, mix: torch.Tensor) -> None:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, {self.audio_channels}, time) tensor, "
                f"got shape {tuple(mix.shape)}"
            )
