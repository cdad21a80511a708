"""MDX23C (TFC-TDF v3 U-Net), state-dict compatible with MSST's ``mdx23c`` model type.

Reference implementation: ZFTurbo/Music-Source-Separation-Training (MIT),
``models/mdx23c_tfc_tdf_v3.py`` (class ``TFC_TDF_net``), the architecture of kuielab's
MDX-Net v3 entry to the Sound Demixing Challenge 2023. Its released checkpoints (MSST's MUSDB18
and vocals models, and the UVR MDX23C models trained with MSST) load into :class:`MDX23C` with a
strict ``load_state_dict``.

Data flow, for a mixture (B, C, T):

1. zero-pad T so that the centred STFT (Hann window ``n_fft``, hop ``hop_length``) has a number
   of frames divisible by ``scale[0] ** num_scales`` (chunks of MSST's sizes need none);
2. STFT; keep the lowest ``dim_f`` bins; real and imaginary parts of each channel become 2C
   feature channels, and the bins are cut into ``num_subbands`` sub-bands stacked as channels
   (MSST's ``cac2cws``): ``dim_c = 2 * C * num_subbands`` channels of ``dim_f / num_subbands``;
3. ``first_conv`` (1x1) to ``num_channels``; a U-Net over (frames, bins) of ``num_scales``
   encoder blocks (:class:`~demucs_rr.models.mdx23c_layers.TFC_TDF` then ``Downscale``, which
   adds ``growth`` channels), a bottleneck TFC-TDF, and mirrored decoder blocks (``Upscale``,
   concatenation with the encoder output, TFC-TDF);
4. the result times the ``first_conv`` output, concatenated with the input features, through
   ``final_conv`` (1x1, act, 1x1) to ``S * dim_c`` channels; sub-bands back to bins; zero
   bins above ``dim_f``; inverse STFT; trim to T.

State-dict layout: ``first_conv``, ``encoder_blocks.{i}.{tfc_tdf,downscale}``,
``bottleneck_block``, ``decoder_blocks.{i}.{upscale,tfc_tdf}``, ``final_conv.{0,2}``; a
TFC-TDF holds ``blocks.{l}.{tfc1.{0,2},tdf.{0,2,3,5},tfc2.{0,2},shortcut}``. The stems are
carried only by ``final_conv.2`` (``S * dim_c`` output channels, stem-major).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import (
    FadedChunkingDefaults,
    StemLayout,
    check_num_overlap,
    collect_kwargs,
    stem_blocks,
)
from demucs_rr.models.mdx23c_layers import (
    TFC_TDF,
    DecoderBlock,
    EncoderBlock,
    activate_,
    check_norm,
    make_act,
    pointwise,
)

__all__ = ["MDX23C"]


class MDX23C(FadedChunkingDefaults, nn.Module):
    """MDX23C music source separation (MSST ``model_type: mdx23c``).

    Args:
        sources: stem names in output order (S of them; MSST: ``training.instruments``, or
            ``[training.target_instrument]``).
        audio_channels: audio channels C (MSST's ``audio.num_channels``).
        n_fft / hop_length: STFT (Hann window of ``n_fft``). dim_f: bins kept (from 0).
        act / norm: activation and norm names (MSST's ``model.act`` / ``model.norm``).
        num_subbands: sub-bands stacked as channels. num_scales: U-Net depth.
        scale: (time, frequency) down-sampling factor per scale.
        num_blocks_per_scale: blocks per TFC-TDF. num_channels: channels after
            ``first_conv``. growth: channels added per scale. bottleneck_factor: TDF factor.
        samplerate: sample rate in Hz. segment_length: chunk size in samples (MSST's
            ``chunk_size``).
        num_overlap, normalize: MSST's ``inference.num_overlap`` and ``inference.normalize``
            (the engine's chunking and normalisation, :class:`FadedChunkingDefaults`).

    Raises:
        ConfigError: a value the network cannot be built with (named in the message).
    """

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        n_fft: int = 8192,
        hop_length: int = 1024,
        dim_f: int = 4096,
        act: str = "gelu",
        norm: str = "InstanceNorm",
        num_subbands: int = 4,
        num_scales: int = 5,
        scale: list[int] = [2, 2],  # noqa: B006 (never mutated; MSST's value)
        num_blocks_per_scale: int = 2,
        num_channels: int = 128,
        growth: int = 128,
        bottleneck_factor: int = 4,
        samplerate: int = 44100,
        segment_length: int = 261120,
        num_overlap: int = 4,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        kwargs = collect_kwargs(locals())
        _check_config(kwargs)
        self._init_chunking(kwargs)
        self.audio_channels = audio_channels
        self.n_fft, self.hop_length, self.dim_f = n_fft, hop_length, dim_f
        self.num_subbands, self.num_scales, self.scale = num_subbands, num_scales, list(scale)
        self._build(num_channels, growth, num_blocks_per_scale, bottleneck_factor, norm, act)

    def _build(self, c: int, g: int, blocks: int, bn: int, norm: str, act: str) -> None:
        """The layers, in MSST's creation order (a seeded build draws MSST's initial weights)."""
        dim_c = self.num_subbands * self.audio_channels * 2
        f = self.dim_f // self.num_subbands
        self.first_conv = nn.Conv2d(dim_c, c, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(self.num_scales):
            self.encoder_blocks.append(EncoderBlock(c, g, blocks, f, bn, self.scale, norm, act))
            f, c = f // self.scale[1], c + g
        self.bottleneck_block = TFC_TDF(c, c, blocks, f, bn, norm, act)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(self.num_scales):
            f = f * self.scale[1]
            self.decoder_blocks.append(DecoderBlock(c, g, blocks, f, bn, self.scale, norm, act))
            c = c - g
        self.final_conv = nn.Sequential(
            nn.Conv2d(c + dim_c, c, 1, 1, 0, bias=False),
            make_act(act),
            nn.Conv2d(c, len(self.sources) * dim_c, 1, 1, 0, bias=False),
        )

    def valid_length(self, length: int) -> int:
        """Any length is valid: the model pads internally and returns ``length`` samples."""
        return length

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the last 1x1 convolution (``final_conv.2``, no bias), whose
        ``S * dim_c`` output channels are the stems, stem-major (weight dim 0)."""
        return StemLayout(stem_blocks(self, self.final_conv[2], {"weight": 0}, len(self.sources)))

    def padded_length(self, length: int) -> int:
        """Samples the STFT runs on: frames divisible by ``scale[0] ** num_scales``."""
        hop, unit = self.hop_length, int(self.scale[0] ** self.num_scales)
        frames = -(-length // hop) + 1  # frames of the centred STFT of ceil(length / hop) hops
        frames = max(-(-frames // unit) * unit, unit)
        while (frames - 1) * hop <= self.n_fft // 2:  # the centred STFT reflects n_fft // 2
            frames += unit
        return (frames - 1) * hop

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        return torch.hann_window(self.n_fft, periodic=True, device=x.device)

    def stft(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, dim_c, T, F') features: channel ((c * 2 + re/im) * k + sub-band)."""
        batch, channels, length = mix.shape
        spec = torch.stft(
            mix.reshape(batch * channels, length).float(), self.n_fft, self.hop_length,
            window=self._window(mix), center=True, return_complex=True,
        )  # fmt: skip
        frames, k = spec.size(-1), self.num_subbands
        spec = torch.view_as_real(spec[:, : self.dim_f])  # (B*C, dim_f, T, 2)
        spec = spec.view(batch, channels, k, self.dim_f // k, frames, 2)
        spec = spec.permute(0, 1, 5, 2, 4, 3)  # (B, C, 2, k, T, F')
        return spec.reshape(batch, channels * 2 * k, frames, self.dim_f // k)

    def istft(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S * dim_c, T, F') -> (B, S, C, (T - 1) * hop) waveforms."""
        batch, _, frames, bins = x.shape
        sources, channels, k = len(self.sources), self.audio_channels, self.num_subbands
        spec = x.new_zeros(
            (batch * sources * channels, self.n_fft // 2 + 1, frames, 2), dtype=torch.float32
        )
        target = spec[:, : self.dim_f].view(batch, sources, channels, k, bins, frames, 2)
        x = x.view(batch, sources, channels, 2, k, frames, bins)
        target.copy_(x.permute(0, 1, 2, 4, 6, 5, 3))
        wav = torch.istft(
            torch.view_as_complex(spec), self.n_fft, self.hop_length,
            window=self._window(x), center=True,
        )  # fmt: skip
        return wav.view(batch, sources, channels, -1)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate (B, C, T) into (B, S, C, T), any T >= 1."""
        if mix.dim() != 3 or mix.size(1) != self.audio_channels:
            raise ValueError(
                f"MDX23C expects a (batch, {self.audio_channels}, time) tensor, got "
                f"{tuple(mix.shape)}"
            )
        length = mix.size(-1)
        features = self.stft(F.pad(mix, (0, self.padded_length(length) - length)))
        first = pointwise(features, self.first_conv.weight)
        x, skips = first, []
        for encoder in self.encoder_blocks:
            x = cast(EncoderBlock, encoder).tfc_tdf(x)
            skips.append(x)
            x = cast(EncoderBlock, encoder).downscale(x)
        x = self.bottleneck_block(x)
        for decoder in self.decoder_blocks:
            x = torch.cat([cast(DecoderBlock, decoder).upscale(x), skips.pop()], 1)
            x = cast(DecoderBlock, decoder).tfc_tdf(x)
        x = x * first if x.requires_grad else x.mul_(first)
        x = self._final(torch.cat([features, x], 1))
        return self.istft(x)[..., :length]

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """``final_conv``: 1x1, act, 1x1 -> (B, S * dim_c, T, F')."""
        conv_in, act, conv_out = self.final_conv
        y = activate_(pointwise(x, cast(nn.Conv2d, conv_in).weight), act)
        return pointwise(y, cast(nn.Conv2d, conv_out).weight)


def _check_config(kwargs: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for values MDX23C cannot take."""
    check_num_overlap(kwargs["num_overlap"])
    if not kwargs["sources"]:
        raise ConfigError("MDX23C: training.instruments needs at least one source name")
    check_norm(kwargs["norm"])
    make_act(kwargs["act"])
    scale, k = kwargs["scale"], kwargs["num_subbands"]
    if len(scale) != 2 or min(scale) < 1:
        raise ConfigError("MDX23C: model.scale needs 2 positive values (time, frequency)")
    if kwargs["dim_f"] % k or (kwargs["dim_f"] // k) % scale[1] ** kwargs["num_scales"]:
        raise ConfigError(
            "MDX23C: audio.dim_f must split into model.num_subbands sub-bands divisible by "
            "model.scale[1] ** model.num_scales"
        )
    if kwargs["dim_f"] > kwargs["n_fft"] // 2 + 1:
        raise ConfigError("MDX23C: audio.dim_f exceeds audio.n_fft // 2 + 1 bins")
    if kwargs["growth"] < 0 or kwargs["num_channels"] < 1 or kwargs["bottleneck_factor"] < 1:
        raise ConfigError("MDX23C: model.num_channels, growth, bottleneck_factor out of range")
