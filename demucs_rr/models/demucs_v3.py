"""Waveform Demucs of Demucs 3/4 (``demucs.demucs.Demucs``): the v2 U-Net with GELU, GroupNorm
and DConv residual branches, weight-compatible with the official release (time-only members of
the ``mdx`` / ``repro_mdx_a`` bags).

Module tree (indices are those of the official ``nn.Sequential`` layers):

- ``encoder.{i}``: Conv1d(k, s) -> norm -> GELU [-> DConv] [-> Conv1d(1) -> norm -> GLU]
- ``decoder.{j}`` (innermost first): [Conv1d(2·context + 1) -> norm -> GLU] [-> DConv] ->
  ConvTranspose1d(k, s) [-> norm -> GELU except for the outermost level]
- ``lstm`` (optional bottleneck BLSTM).

The norm is GroupNorm(``norm_groups``) from level ``norm_starts`` on, otherwise an identity
without parameters. Shapes use B = batch, S = sources, C = audio channels, L = samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from julius.resample import resample_frac
from torch import nn

from demucs_rr.models.base import SingleModelDefaults, StemLayout, center_trim, stem_blocks
from demucs_rr.models.dconv import DConv, WindowedBLSTM, rescale_convs
from demucs_rr.models.hybrid_base import SegmentLike, parse_segment, segment_json

__all__ = ["DemucsV3"]

_Tensor = TypeVar("_Tensor")


class DemucsV3(SingleModelDefaults, nn.Module):
    """Demucs 3/4 waveform source separation model.

    Args:
        sources: stem names, in output order (S of them).
        audio_channels: input/output audio channels C.
        channels: channels of the first level (x ``growth`` per level).
        growth: channel multiplier per level.
        depth: number of levels.
        rewrite: add the 1x1 (encoder) / context (decoder) convolutions.
        lstm_layers: bottleneck BLSTM layers (0: none).
        kernel_size: kernel of the strided convolutions.
        stride: stride of the strided convolutions.
        context: decoder rewrite context (kernel ``2 * context + 1``, padded).
        gelu: GELU activations (else ReLU).
        glu: GLU after the rewrite convolutions (else ReLU).
        norm_starts: first level with GroupNorm layers.
        norm_groups: GroupNorm groups.
        dconv_mode: DConv in encoders (bit 1) and / or decoders (bit 2).
        dconv_depth: DConv blocks.
        dconv_comp: DConv channel compression.
        dconv_attn: first level whose DConv has LocalState attention.
        dconv_lstm: first level whose DConv has a BLSTM.
        dconv_init: initial DConv LayerScale.
        normalize: normalise each item by its mono mean / std inside ``forward``.
        resample: upsample x2 before the encoder and downsample after the decoder.
        rescale: reference std of the initial weight rescaling (0: none).
        samplerate: sample rate in Hz.
        segment: default split chunk in seconds (metadata).

    Attributes:
        init_kwargs: every constructor argument as JSON-able values.
        segment_length: ``int(segment * samplerate)`` samples.
    """

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        channels: int = 64,
        growth: float = 2.0,
        depth: int = 6,
        rewrite: bool = True,
        lstm_layers: int = 0,
        kernel_size: int = 8,
        stride: int = 4,
        context: int = 1,
        gelu: bool = True,
        glu: bool = True,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        normalize: bool = True,
        resample: bool = True,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: SegmentLike = 4 * 10,
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = {
            key: value for key, value in locals().items() if key not in ("self", "__class__")
        }
        self.init_kwargs["sources"] = list(sources)
        self.init_kwargs["segment"] = segment_json(parse_segment(segment))
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.resample = resample
        self.channels = channels
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment = parse_segment(segment)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.skip_scales = nn.ModuleList()  # unused; kept for layout parity (no parameters)

        in_channels = audio_channels
        for index in range(depth):

            def norm(dim: int, index: int = index) -> nn.Module:
                return nn.GroupNorm(norm_groups, dim) if index >= norm_starts else nn.Identity()

            def dconv(index: int = index, dim: int = channels) -> nn.Module:
                return DConv(
                    dim,
                    depth=dconv_depth,
                    init=dconv_init,
                    compress=dconv_comp,
                    attn=index >= dconv_attn,
                    lstm=index >= dconv_lstm,
                )

            act: type[nn.Module] = nn.GELU if gelu else nn.ReLU
            rewrite_act: nn.Module = nn.GLU(dim=1) if glu else nn.ReLU()
            scale = 2 if glu else 1
            encode: list[nn.Module] = [
                nn.Conv1d(in_channels, channels, kernel_size, stride),
                norm(channels),
                act(),
            ]
            if dconv_mode & 1:
                encode.append(dconv())
            if rewrite:
                encode += [
                    nn.Conv1d(channels, scale * channels, 1),
                    norm(scale * channels),
                    rewrite_act,
                ]
            self.encoder.append(nn.Sequential(*encode))

            out_channels = in_channels if index > 0 else len(self.sources) * audio_channels
            decode: list[nn.Module] = []
            if rewrite:
                decode += [
                    nn.Conv1d(channels, scale * channels, 2 * context + 1, padding=context),
                    norm(scale * channels),
                    rewrite_act,
                ]
            if dconv_mode & 2:
                decode.append(dconv())
            decode.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride))
            if index > 0:
                decode += [norm(out_channels), act()]
            self.decoder.insert(0, nn.Sequential(*decode))
            in_channels = channels
            channels = int(growth * channels)

        self.lstm = WindowedBLSTM(in_channels, lstm_layers) if lstm_layers else None
        if rescale:
            rescale_convs(self, reference=rescale)

    @property
    def segment_length(self) -> int:
        """Default split chunk in samples: ``int(segment * samplerate)``."""
        return int(self.segment * self.samplerate)

    @segment_length.setter
    def segment_length(self, samples: int) -> None:
        self.segment = Fraction(int(samples), self.samplerate)

    def valid_length(self, length: int) -> int:
        """Input length whose output covers ``length`` samples once centre-trimmed.

        The forward pass pads any input to this length itself; feeding it real context instead
        of zeros is what split inference does. E.g. default config: 1,940,400 -> 1,942,186.
        """
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        if self.resample:
            length = math.ceil(length / 2)
        return int(length)

    def stem_layout(self) -> StemLayout:
        """Per-stem weights: the last transposed convolution, whose ``S * C`` output channels
        are the stems, stem-major (weight dim 1, bias dim 0)."""
        last = [m for m in self.decoder[-1].modules() if isinstance(m, nn.ConvTranspose1d)][-1]
        return StemLayout(stem_blocks(self, last, {"weight": 1, "bias": 0}, len(self.sources)))

    def upgrade_state(self, state: Mapping[str, _Tensor]) -> dict[str, _Tensor]:
        """Rename ``{encoder,decoder}.{i}.2.*`` keys of early checkpoints to ``.3.``."""
        state = dict(state)
        for index in range(self.depth):
            for part in ("encoder", "decoder"):
                for name in ("bias", "weight"):
                    new, old = f"{part}.{index}.3.{name}", f"{part}.{index}.2.{name}"
                    if old in state and new not in state:
                        state[new] = state.pop(old)
        return state

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        Args:
            mix: (B, C, L) waveform.

        Returns:
            (B, S, C, L) stems (the input is zero-padded, centred, to ``valid_length(L)``).
        """
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"DemucsV3 expects a (batch, {self.audio_channels}, time) tensor, "
                f"got shape {tuple(mix.shape)}"
            )
        length = mix.shape[-1]
        x = mix
        mean: torch.Tensor | float = 0
        std: torch.Tensor | float = 1
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)
        delta = self.valid_length(length) - length
        x = F.pad(x, (delta // 2, delta - delta // 2))
        if self.resample:
            x = resample_frac(x, 1, 2)
        saved = []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x + center_trim(saved.pop(), x))
        if self.resample:
            x = resample_frac(x, 2, 1)
        x = center_trim(x * std + mean, length)
        return x.view(x.size(0), len(self.sources), self.audio_channels, x.size(-1))
