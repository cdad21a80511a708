"""The trunk shared by BS-RoFormer and Mel-Band RoFormer: STFT, axial transformers, iSTFT.

A RoFormer separates in the STFT domain. The complex spectrogram of every channel is cut into
frequency bands; each band of each frame becomes one token of dimension D (``band_split``).
``depth`` blocks then alternate a transformer along time (one sequence per band) and one along
the bands (one sequence per frame), optionally preceded by a linear-attention transformer over
all tokens at once. Per stem, a mask estimator maps every token back to a complex mask of its
band; the masked spectrogram is inverted. The two families differ only in how bands are cut
(contiguous bands vs overlapping mel bands, see the subclasses).

Dimension letters: B batch, S stems, C audio channels, T samples, N STFT frames,
Q frequency bins (``n_fft // 2 + 1``), F bands, D model dimension, K band input features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import (
    FadedChunkingDefaults,
    StemLayout,
)
from demucs_rr.models.roformer_layers import BandSplit, MaskEstimator, RotaryEmbedding, Transformer

__all__ = [
    "AxialSpec",
    "RoformerBase",
    "as_complex",
    "build_axial_layers",
    "check_positive",
    "check_sources",
]


@dataclass(frozen=True)
class AxialSpec:
    """Sizes of the axial transformer stack (MSST config keys in brackets).

    Attributes:
        dim: token dimension D [dim]. depth: blocks [depth]. heads, dim_head: attention heads
        and their size [heads, dim_head]. time_depth, freq_depth, linear_depth: layers of each
        transformer in a block [time_transformer_depth, freq_transformer_depth,
        linear_transformer_depth; 0 = no linear transformer]. attn_dropout, ff_dropout:
        training dropout. norm_output: an RMSNorm closes each transformer (Mel-Band RoFormer).
    """

    dim: int
    depth: int
    heads: int
    dim_head: int
    time_depth: int
    freq_depth: int
    linear_depth: int
    attn_dropout: float
    ff_dropout: float
    norm_output: bool


def build_axial_layers(spec: AxialSpec) -> nn.ModuleList:
    """``depth`` blocks ``[linear transformer?, time transformer, freq transformer]``.

    One rotary embedding per axis is shared by all blocks (as in MSST, whose checkpoints hence
    repeat ``rotary_embed.freqs`` under every attention layer).
    """
    time_rotary = RotaryEmbedding(spec.dim_head)
    freq_rotary = RotaryEmbedding(spec.dim_head)
    common: dict[str, Any] = {
        "heads": spec.heads, "dim_head": spec.dim_head, "attn_dropout": spec.attn_dropout,
        "ff_dropout": spec.ff_dropout, "norm_output": spec.norm_output,
    }  # fmt: skip
    layers = nn.ModuleList()
    for _ in range(spec.depth):
        block = nn.ModuleList()
        if spec.linear_depth > 0:
            block.append(Transformer(spec.dim, spec.linear_depth, linear_attn=True, **common))
        block.append(Transformer(spec.dim, spec.time_depth, rotary_embed=time_rotary, **common))
        block.append(Transformer(spec.dim, spec.freq_depth, rotary_embed=freq_rotary, **common))
        layers.append(block)
    return layers


def as_complex(masks: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """(..., 2 K) real (re, im interleaved, any float dtype) -> (..., K) complex of spec's dtype."""
    real_dtype = spec.real.dtype
    pairs = masks.to(real_dtype).reshape(*masks.shape[:-1], -1, 2)
    return torch.view_as_complex(pairs.contiguous())


def check_positive(**values: int) -> None:
    """Raise ConfigError naming the first value that is not a positive integer."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")


def check_sources(sources: list[str], num_stems: int | None) -> int:
    """The stem count: ``len(sources)``, which ``num_stems`` (when given) must equal."""
    if not sources or len(set(sources)) != len(sources):
        raise ConfigError(f"sources must be distinct stem names, got {sources!r}")
    if num_stems is not None and num_stems != len(sources):
        raise ConfigError(
            f"model.num_stems is {num_stems} but {len(sources)} stems are named ({sources})"
        )
    return len(sources)


class RoformerBase(FadedChunkingDefaults, nn.Module):
    """Contract metadata, STFT framing and the axial trunk of a RoFormer.

    Subclasses register ``layers`` (:func:`build_axial_layers`), ``band_split`` and
    ``mask_estimators`` in MSST's order and define :meth:`band_input` / :meth:`apply_masks`.
    """

    layers: nn.ModuleList
    band_split: nn.Module
    mask_estimators: nn.ModuleList

    def _init_metadata(self, kwargs: dict[str, Any]) -> None:
        """Store the contract attributes and STFT settings from the constructor arguments."""
        check_positive(
            stft_n_fft=kwargs["stft_n_fft"],
            stft_hop_length=kwargs["stft_hop_length"],
            stft_win_length=kwargs["stft_win_length"],
            samplerate=kwargs["samplerate"],
            segment_length=kwargs["segment_length"],
        )
        if kwargs["stft_win_length"] > kwargs["stft_n_fft"]:
            raise ConfigError("model.stft_win_length must not exceed model.stft_n_fft")
        self._init_chunking(kwargs)
        self.stereo: bool = bool(kwargs["stereo"])
        self.audio_channels: int = 2 if self.stereo else 1
        self.n_fft: int = kwargs["stft_n_fft"]
        self.hop_length: int = kwargs["stft_hop_length"]
        self.win_length: int = kwargs["stft_win_length"]
        self.stft_normalized: bool = bool(kwargs["stft_normalized"])
        self.zero_dc: bool = bool(kwargs["zero_dc"])
        self.skip_connection: bool = bool(kwargs["skip_connection"])
        self.use_torch_checkpoint: bool = bool(kwargs["use_torch_checkpoint"])
        self.num_freqs = self.n_fft // 2 + 1

    def _init_trunk(self, kwargs: dict[str, Any], *, norm_output: bool) -> int:
        """Contract attributes, MSST's loss settings and the axial ``layers`` (registered
        first, as MSST does) from the constructor arguments; returns the stem count S."""
        stems = check_sources(list(kwargs["sources"]), kwargs["num_stems"])
        self._init_metadata(kwargs)
        self.multi_stft_resolution_loss_weight = kwargs["multi_stft_resolution_loss_weight"]
        self.multi_stft_resolutions_window_sizes = tuple(
            kwargs["multi_stft_resolutions_window_sizes"]
        )
        self.multi_stft_hop_size = kwargs["multi_stft_hop_size"]
        self.multi_stft_normalized = kwargs["multi_stft_normalized"]
        axial = AxialSpec(
            kwargs["dim"], kwargs["depth"], kwargs["heads"], kwargs["dim_head"],
            kwargs["time_transformer_depth"], kwargs["freq_transformer_depth"],
            kwargs["linear_transformer_depth"], kwargs["attn_dropout"], kwargs["ff_dropout"],
            norm_output=norm_output,
        )  # fmt: skip
        self.layers = build_axial_layers(axial)
        return stems

    def _init_heads(self, dim_inputs: tuple[int, ...], depth: int, stems: int) -> None:
        """``band_split`` and one ``mask_estimators`` entry per stem (MSST's order)."""
        dim, factor = self.init_kwargs["dim"], self.init_kwargs["mlp_expansion_factor"]
        self.band_split = BandSplit(dim, dim_inputs)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dim_inputs, depth, factor) for _ in range(stems)
        )

    def valid_length(self, length: int) -> int:
        """Any length is valid: the output always has the input's length."""
        return length

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the mask estimator of each stem (``mask_estimators.{s}``, in
        ``sources`` order); the band split and the axial trunk are shared."""
        return StemLayout(modules=("mask_estimators",))

    def band_input(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex spectrogram -> (B, N, sum K) real band-split input."""
        raise NotImplementedError

    def apply_masks(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex, (B, S, N, sum K) real masks -> (B, S, N, Q*C) complex."""
        raise NotImplementedError

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """Applied to the trunk output before the mask estimators (identity by default)."""
        return x

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        Args:
            mix: (B, C, T) waveform, C = ``audio_channels``, any T >= 1.

        Returns:
            (B, S, C, T) stems. Inputs too short for the STFT's reflect padding
            (T <= n_fft / 2) are zero-padded on the right first, then trimmed back.

        Raises:
            ValueError: if ``mix`` is not 3-D or has the wrong channel count.
        """
        if mix.dim() != 3 or mix.size(1) != self.audio_channels or mix.size(-1) < 1:
            raise ValueError(
                f"{type(self).__name__}.forward expects a (batch, {self.audio_channels}, time) "
                f"tensor with time >= 1, got shape {tuple(mix.shape)}"
            )
        length = mix.size(-1)
        padded = F.pad(mix, (0, max(0, self.n_fft // 2 + 1 - length)))
        spec = self.stft(padded)  # (B, N, Q*C) complex
        # (B, N, F, D); the residual stream stays in full precision under autocast
        x = self.band_split(self.band_input(spec)).to(spec.real.dtype)
        x = self.final(self.axial(x))
        masks = torch.stack([self._run(est, x) for est in self.mask_estimators], dim=1)
        out = self.apply_masks(spec, masks)  # (B, S, N, Q*C)
        if self.zero_dc:
            out[..., : self.audio_channels] = 0
        return self.istft(out, padded.size(-1))[..., :length]

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, N, Q*C) complex, bins frequency-major then channel (MSST's order)."""
        batch, channels, length = audio.shape
        spec = torch.stft(
            audio.reshape(batch * channels, length),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=torch.hann_window(self.win_length, device=audio.device, dtype=audio.dtype),
            normalized=self.stft_normalized,
            return_complex=True,
        )  # (B*C, Q, N)
        spec = spec.view(batch, channels, self.num_freqs, -1).permute(0, 3, 2, 1)
        return spec.reshape(batch, -1, self.num_freqs * channels)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """(B, S, N, Q*C) complex -> (B, S, C, length) waveforms."""
        batch, stems, frames, _ = spec.shape
        channels = self.audio_channels
        spec = spec.view(batch, stems, frames, self.num_freqs, channels).permute(0, 1, 4, 3, 2)
        audio = torch.istft(
            spec.reshape(batch * stems * channels, self.num_freqs, frames),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=torch.hann_window(self.win_length, device=spec.device, dtype=spec.real.dtype),
            normalized=self.stft_normalized,
            length=length,
        )
        return audio.view(batch, stems, channels, length)

    def axial(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer blocks: (B, N, F, D) -> (B, N, F, D)."""
        batch, frames, bands, dim = x.shape
        store: list[torch.Tensor] = []
        for block in self.layers:
            transformers = list(cast(nn.ModuleList, block))
            if len(transformers) == 3:  # linear attention over all N * F tokens at once
                tokens = self._run(transformers.pop(0), x.reshape(batch, frames * bands, dim))
                x = tokens.view(batch, frames, bands, dim)
            time_transformer, freq_transformer = transformers
            for previous in store:
                x = x + previous
            x = x.transpose(1, 2).reshape(batch * bands, frames, dim)
            x = self._run(time_transformer, x).view(batch, bands, frames, dim)
            x = x.transpose(1, 2).reshape(batch * frames, bands, dim)
            x = self._run(freq_transformer, x).view(batch, frames, bands, dim)
            if self.skip_connection:
                store.append(x)
        return x

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, through activation checkpointing when training asks for it."""
        if self.use_torch_checkpoint and self.training and torch.is_grad_enabled():
            return cast(torch.Tensor, checkpoint(module, x, use_reentrant=False))
        return cast(torch.Tensor, module(x))
