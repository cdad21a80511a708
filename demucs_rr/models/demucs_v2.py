"""Demucs v2: the waveform U-Net with a BLSTM bottleneck, weight-compatible with the official
``demucs.model.Demucs`` of Demucs 2.0.3.

The module tree reproduces the official one exactly, so that the released state dicts (hub files
``demucs-e07c671f.th`` and friends) load with a strict ``load_state_dict``:

- ``encoder.{i}``: ``Sequential(Conv1d(k=8, s=4), ReLU, [Conv1d(k=1) -> GLU | ReLU])``
- ``decoder.{j}`` (``j = depth - 1 - i``, innermost first): ``Sequential([Conv1d(k=context) ->
  GLU | ReLU], ConvTranspose1d(k=8, s=4), [ReLU except for the outermost level])``
- ``lstm.lstm`` (bidirectional ``nn.LSTM``, time-major) and ``lstm.linear`` (2·dim -> dim).

Shapes use B = batch, C = audio channels, S = sources, T = time samples.
"""

from __future__ import annotations

import math
from typing import Any

import julius
import torch
from torch import nn

from demucs_rr.models.base import SingleModelDefaults, StemLayout, center_trim, stem_blocks
from demucs_rr.sources import MUSDB_SOURCES

__all__ = [
    "BLSTM",
    "DEMUCS_V2_CONFIGS",
    "Demucs",
    "demucs_v2",
    "rescale_module",
]

#: Constructor overrides of the released v2 Demucs models (``sources`` is always
#: :data:`demucs_rr.sources.MUSDB_SOURCES`). ``demucs_quantized`` shares the ``demucs``
#: architecture but its DiffQ-packed weights are not supported, hence it is absent.
DEMUCS_V2_CONFIGS: dict[str, dict[str, Any]] = {
    "demucs": {"channels": 64},
    "demucs_extra": {"channels": 64},
    "demucs48_hq": {"channels": 48},
    "demucs_unittest": {"channels": 4},
}


class BLSTM(nn.Module):
    """Bidirectional LSTM over time followed by a Linear(2·dim -> dim); no residual.

    Args:
        dim: channel count D of the bottleneck (LSTM input and hidden size).
        layers: number of stacked LSTM layers.
    """

    def __init__(self, dim: int, layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> (B, D, T)."""
        x = x.permute(2, 0, 1)  # (T, B, D), time-major as the official module
        x = self.lstm(x)[0]  # (T, B, 2D)
        x = self.linear(x)  # (T, B, D)
        return x.permute(1, 2, 0)  # (B, D, T)


def _rescale_conv(conv: nn.Conv1d | nn.ConvTranspose1d, reference: float) -> None:
    """Divide weight and bias by sqrt(std(W) / reference) (official v2 ``rescale_conv``)."""
    std = conv.weight.std().detach()
    scale = (std / reference) ** 0.5
    conv.weight.data /= scale
    if conv.bias is not None:
        conv.bias.data /= scale


def rescale_module(module: nn.Module, reference: float) -> None:
    """Rescale every Conv1d / ConvTranspose1d of ``module`` in place (the v2 initialisation);
    skipped on the ``meta`` device, where models are built to receive stored weights."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)) and not sub.weight.is_meta:
            _rescale_conv(sub, reference)


class Demucs(SingleModelDefaults, nn.Module):
    """Demucs v2 waveform source separation model.

    Args:
        sources: stem names, in output order (S = ``len(sources)``).
        audio_channels: number of input/output audio channels C.
        channels: channel count of the first encoder level.
        depth: number of encoder/decoder levels.
        rewrite: add the 1x1 (encoder) / ``context`` (decoder) convolutions.
        glu: use GLU after the rewrite convolutions (doubling their outputs), else ReLU.
        rescale: reference std of the init-time weight rescaling; 0 disables it.
        resample: upsample x2 before the encoder and downsample /2 after the decoder (julius).
        kernel_size: kernel size of the strided (transposed) convolutions.
        stride: stride of the strided (transposed) convolutions.
        growth: channel multiplier from one level to the next.
        lstm_layers: number of BLSTM layers at the bottleneck (0: no BLSTM).
        context: kernel size of the decoder rewrite convolution (unpadded).
        normalize: normalize each example by its mono mean / unbiased std inside ``forward``.
        samplerate: sample rate in Hz (metadata).
        segment_length: default chunk length for split inference, in samples (metadata).

    Attributes:
        init_kwargs: every constructor argument (defaults filled in) as JSON-able values, so
            that ``Demucs(**model.init_kwargs)`` rebuilds the same architecture.
    """

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        channels: int = 64,
        depth: int = 6,
        rewrite: bool = True,
        glu: bool = True,
        rescale: float = 0.1,
        resample: bool = True,
        kernel_size: int = 8,
        stride: int = 4,
        growth: float = 2.0,
        lstm_layers: int = 2,
        context: int = 3,
        normalize: bool = False,
        samplerate: int = 44100,
        segment_length: int = 4 * 10 * 44100,
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = {
            "sources": list(sources),
            "audio_channels": audio_channels,
            "channels": channels,
            "depth": depth,
            "rewrite": rewrite,
            "glu": glu,
            "rescale": rescale,
            "resample": resample,
            "kernel_size": kernel_size,
            "stride": stride,
            "growth": growth,
            "lstm_layers": lstm_layers,
            "context": context,
            "normalize": normalize,
            "samplerate": samplerate,
            "segment_length": segment_length,
        }
        self.sources: list[str] = list(sources)
        self.audio_channels = audio_channels
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.resample = resample
        self.channels = channels
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment_length = segment_length

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()

        # Modules are created in the official order (encoder level, then its decoder level) so
        # that a seeded construction draws the same initial weights.
        activation: nn.Module
        if glu:
            activation = nn.GLU(dim=1)  # first half = value, second half = gate
            ch_scale = 2
        else:
            activation = nn.ReLU()
            ch_scale = 1
        in_channels = audio_channels
        for index in range(depth):
            encode: list[nn.Module] = [
                nn.Conv1d(in_channels, channels, kernel_size, stride),
                nn.ReLU(),
            ]
            if rewrite:
                encode += [nn.Conv1d(channels, ch_scale * channels, 1), activation]
            self.encoder.append(nn.Sequential(*encode))

            out_channels = in_channels if index > 0 else len(self.sources) * audio_channels
            decode: list[nn.Module] = []
            if rewrite:
                decode += [nn.Conv1d(channels, ch_scale * channels, context), activation]
            decode.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride))
            if index > 0:
                decode.append(nn.ReLU())
            self.decoder.insert(0, nn.Sequential(*decode))
            in_channels = channels
            channels = int(growth * channels)

        self.lstm: BLSTM | None = BLSTM(in_channels, lstm_layers) if lstm_layers else None

        if rescale:
            rescale_module(self, reference=rescale)

    def valid_length(self, length: int) -> int:
        """Input length to feed so that the output covers ``length`` samples.

        Exact official algorithm; the output of a valid input is then centre trimmed to
        ``length`` by the caller (:func:`~demucs_rr.models.base.center_trim`). E.g. default
        config: 44100 -> 49834.
        """
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = math.ceil((length - self.kernel_size) / self.stride) + 1
            length = max(1, length)
            length += self.context - 1
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

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        Args:
            mix: (B, C, T) waveform, C = ``audio_channels``.

        Returns:
            (B, S, C, T') stems, T' <= T (untrimmed model output, centred on the input; for the
            default config T' = T - 5460 when T is a valid length).

        Raises:
            ValueError: if ``mix`` is not 3-D or has the wrong channel count.
        """
        if mix.dim() != 3:
            raise ValueError(
                f"Demucs.forward expects a (batch, channels, time) tensor, got shape "
                f"{tuple(mix.shape)}"
            )
        if mix.size(1) != self.audio_channels:
            raise ValueError(
                f"Demucs.forward expects {self.audio_channels} audio channels, got shape "
                f"{tuple(mix.shape)}"
            )
        x = mix
        mean: torch.Tensor | float
        std: torch.Tensor | float
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)  # (B, 1, T)
            mean = mono.mean(dim=-1, keepdim=True)  # (B, 1, 1)
            std = mono.std(dim=-1, keepdim=True)  # (B, 1, 1), unbiased
        else:
            mean = 0
            std = 1
        # Runs even without normalize (x / 1.00001), as the official code: keep it bit-exact.
        x = (x - mean) / (1e-5 + std)

        if self.resample:
            x = julius.resample_frac(x, 1, 2)  # (B, C, 2T)

        saved: list[torch.Tensor] = []
        for encode in self.encoder:
            x = encode(x)  # (B, ch_i, T_i)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)  # (B, ch_last, T_bottom)
        for decode in self.decoder:
            skip = center_trim(saved.pop(-1), x)
            x = x + skip
            x = decode(x)  # (B, ch_{i-1} or S*C, T')

        if self.resample:
            x = julius.resample_frac(x, 2, 1)  # (B, S*C, T'/2)
        x = x * std + mean
        # Source-major channel layout: channel index = s * C + c.
        return x.reshape(x.size(0), len(self.sources), self.audio_channels, x.size(-1))


def demucs_v2(name: str, **overrides: Any) -> Demucs:
    """Build a released v2 Demucs architecture by name (randomly initialised).

    Args:
        name: one of :data:`DEMUCS_V2_CONFIGS` (``demucs``, ``demucs_extra``, ``demucs48_hq``,
            ``demucs_unittest``).
        overrides: extra constructor keyword arguments.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in DEMUCS_V2_CONFIGS:
        known = ", ".join(sorted(DEMUCS_V2_CONFIGS))
        raise ValueError(f"unknown v2 Demucs model {name!r}; known: {known}")
    kwargs: dict[str, Any] = {"sources": list(MUSDB_SOURCES), **DEMUCS_V2_CONFIGS[name]}
    kwargs.update(overrides)
    return Demucs(**kwargs)
