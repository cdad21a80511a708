"""SCNet (sparse compression network), state-dict compatible with MSST's ``scnet`` model type.

Paper: Tong et al., "SCNet: Sparse Compression Network for Music Source Separation" (2024).
Reference implementation: ZFTurbo/Music-Source-Separation-Training (MIT),
``models/scnet/scnet.py`` and ``separation.py``, whose released checkpoints (SCNet, SCNet large,
SCNet XL, XL IHF) load into :class:`SCNet` with a strict ``load_state_dict``.

Data flow, for a mixture (B, C, T):

1. zero-pad T to a multiple of the hop giving an even number of STFT frames (MSST's rule; more
   padding when the track is shorter than half an FFT window, which MSST cannot take);
2. STFT (rectangular window of ``win_size``, centred, optionally ``normalized``) of every
   channel; real and imaginary parts become 2C feature channels (c0 real, c0 imag, c1 ...);
3. ``encoder``: ``len(dims) - 1`` :class:`~demucs_rr.models.scnet_layers.SDblock` s, each
   splitting the bins into low / mid / high bands (``band_SR``), down-sampling each band with
   its own stride and convolution stack, then a 3x3 convolution; the block input after the
   bands is kept as the skip;
4. ``separation_net``: dual-path BiLSTM layers (:mod:`demucs_rr.models.scnet_separation`);
5. ``decoder``: per block, a fusion layer (skip + GLU-gated 3x3 conv) and a sparse up-sample
   layer; the last one outputs ``dims[0] * S`` channels;
6. consecutive channel pairs of those, in (dims[0], S) order, are the real and imaginary parts
   of the S * C output spectrograms (MSST's reshape, kept as is); inverse STFT; trim to T.

State-dict layout: ``encoder.{i}`` (``SDlayer.convs.{band}``,
``conv_modules.{band}.layers.{d}.{0,1,3,4,6}``, ``globalconv``), ``decoder.{j}.0.conv`` and
``decoder.{j}.1.convtrs.{band}`` (``decoder.0`` is the deepest block), and
``separation_net.dp_modules.{k}.{lstm_layers,linear_layers,norm_layers}.{0,1}``.
The stems are carried only by the last decoder block (``decoder.{last}.1.convtrs``, with
``dims[0] * S`` output channels).
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
from demucs_rr.models.scnet_layers import DecoderBlock, SDblock
from demucs_rr.models.scnet_separation import SeparationNet

__all__ = ["SCNet"]


class SCNet(FadedChunkingDefaults, nn.Module):
    """SCNet music source separation (MSST ``model_type: scnet``).

    Args:
        sources: stem names in output order (S of them).
        audio_channels: audio channels C; ``dims[0]`` must be ``2 * C``.
        dims: channels before the encoder and after each encoder block.
        nfft / hop_size / win_size / normalized: STFT (rectangular window of ``win_size``).
        band_SR: fractions of the bins in the low, mid and high bands.
        band_stride / band_kernel: down-sampling stride and kernel height per band.
        conv_depths: convolution-module depth per band.
        compress / conv_kernel: hidden width divisor and kernel of the convolution modules.
        num_dplayer: dual-path layers (even). expand: LSTM hidden size factor.
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
        dims: list[int] = [4, 32, 64, 128],  # noqa: B006 (never mutated; MSST's defaults)
        nfft: int = 4096,
        hop_size: int = 1024,
        win_size: int = 4096,
        normalized: bool = True,
        band_SR: list[float] = [0.175, 0.392, 0.433],  # noqa: B006
        band_stride: list[int] = [1, 4, 16],  # noqa: B006
        band_kernel: list[int] = [3, 4, 16],  # noqa: B006
        conv_depths: list[int] = [3, 2, 1],  # noqa: B006
        compress: float = 4,
        conv_kernel: int = 3,
        num_dplayer: int = 6,
        expand: int = 1,
        samplerate: int = 44100,
        segment_length: int = 485100,
        num_overlap: int = 4,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        kwargs = collect_kwargs(locals())
        _check_config(kwargs)
        self._init_chunking(kwargs)
        self.audio_channels = audio_channels
        self.dims = list(dims)
        self.nfft, self.hop_size, self.win_size = nfft, hop_size, win_size
        self.normalized = normalized

        # MSST's construction order (encoder block, then its decoder block, per depth), so
        # that a seeded construction draws the same initial weights.
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for index in range(len(dims) - 1):
            self.encoder.append(
                SDblock(
                    dims[index], dims[index + 1], list(band_SR), list(band_stride),
                    list(band_kernel), list(conv_depths), compress, conv_kernel,
                )
            )  # fmt: skip
            out = dims[index] if index else dims[0] * len(sources)
            self.decoder.insert(
                0, DecoderBlock(dims[index + 1], out, list(band_stride), list(band_kernel))
            )
        self.separation_net = SeparationNet(dims[-1], expand, num_dplayer)

    def valid_length(self, length: int) -> int:
        """Any length is valid: the model pads internally and returns ``length`` samples."""
        return length

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the band up-sampling convolutions of the last decoder block
        (``decoder.{last}.1.convtrs.{band}``), whose ``dims[0] * S`` output channels are, stem
        by stem, the real and imaginary parts of the stem's C spectrograms (weight dim 1, bias
        dim 0)."""
        upsample = cast(DecoderBlock, self.decoder[-1])[1]
        return StemLayout(stem_blocks(self, upsample, {"weight": 1, "bias": 0}, len(self.sources)))

    def padding(self, length: int) -> int:
        """Zeros appended to ``length`` samples before the STFT (at least one)."""
        hop = self.hop_size
        padding = hop - length % hop
        if (length + padding) // hop % 2 == 0:  # an even number of frames for the rfft
            padding += hop
        while length + padding <= self.nfft // 2:  # the centred STFT reflects n_fft // 2
            padding += 2 * hop
        return padding

    def _window(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.ones(self.win_size, device=mix.device, dtype=torch.float32)

    def stft(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, 2C, F, T) channels-last, F = nfft // 2 + 1, T = L // hop + 1."""
        batch, channels, length = mix.shape
        spec = torch.stft(
            mix.reshape(batch * channels, length).float(), self.nfft, self.hop_size,
            self.win_size, self._window(mix), center=True, normalized=self.normalized,
            return_complex=True,
        )  # fmt: skip
        bins, frames = spec.shape[-2:]
        spec = torch.view_as_real(spec).view(batch, channels, bins, frames, 2)
        spec = spec.permute(0, 2, 3, 1, 4).reshape(batch, bins, frames, 2 * channels)
        return spec.permute(0, 3, 1, 2)  # (B, 2C, F, T) stored (B, F, T, 2C)

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, dims[0] * S, F, T) -> (B, S, C, (T - 1) * hop) waveforms."""
        batch, channels, bins, frames = spec.shape
        pairs = spec.float().permute(0, 2, 3, 1).reshape(batch, bins, frames, channels // 2, 2)
        spec_c = torch.view_as_complex(pairs).permute(0, 3, 1, 2)
        wav = torch.istft(
            spec_c.reshape(batch * channels // 2, bins, frames), self.nfft, self.hop_size,
            self.win_size, self._window(spec), center=True, normalized=self.normalized,
        )  # fmt: skip
        return wav.view(batch, len(self.sources), self.audio_channels, -1)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate (B, C, T) into (B, S, C, T), any T >= 1."""
        if mix.dim() != 3 or mix.size(1) != self.audio_channels:
            raise ValueError(
                f"SCNet expects a (batch, {self.audio_channels}, time) tensor, got "
                f"{tuple(mix.shape)}"
            )
        length = mix.size(-1)
        x = self.stft(F.pad(mix, (0, self.padding(length))))
        skips, lengths, sizes = [], [], []
        for block in self.encoder:
            x, skip, band_lengths, band_sizes = block(x)
            skips.append(skip)
            lengths.append(band_lengths)
            sizes.append(band_sizes)
        x = self.separation_net(x)
        for block in self.decoder:
            x = cast(DecoderBlock, block)(x, skips.pop(), lengths.pop(), sizes.pop())
        return self.istft(x)[..., :length]


def _check_config(kwargs: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for values SCNet cannot take."""
    check_num_overlap(kwargs["num_overlap"])
    for key in ("band_SR", "band_stride", "band_kernel", "conv_depths"):
        if len(kwargs[key]) != 3:
            raise ConfigError(f"SCNet: model.{key} needs 3 values (low, mid, high band)")
    if not kwargs["sources"]:
        raise ConfigError("SCNet: model.sources needs at least one source name")
    dims = kwargs["dims"]
    if len(dims) < 2 or dims[0] != 2 * kwargs["audio_channels"]:
        raise ConfigError("SCNet: model.dims needs 2+ values, the first 2 * audio_channels")
    if kwargs["num_dplayer"] % 2:
        raise ConfigError("SCNet: model.num_dplayer must be even")
    if kwargs["conv_kernel"] % 2 == 0:
        raise ConfigError("SCNet: model.conv_kernel must be odd")
    if min(kwargs["band_stride"]) < 1 or min(kwargs["band_kernel"]) < 1:
        raise ConfigError("SCNet: model.band_stride and model.band_kernel must be positive")
    if not 0 < kwargs["hop_size"] <= kwargs["win_size"] <= kwargs["nfft"]:
        raise ConfigError("SCNet: model.hop_size <= model.win_size <= model.nfft is required")
