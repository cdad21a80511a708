"""Small exact models used by tests, benchmarks and demos of the pipeline.

They follow the model contract of :mod:`demucs_rr.models.base`, carry ``init_kwargs`` so that
they can be saved as packages, and their outputs are known in closed form.
"""

from __future__ import annotations

import torch
from torch import nn

from demucs_rr.models.base import SingleModelDefaults


class FractionModel(SingleModelDefaults, nn.Module):
    """Stems that are fixed fractions of the input, optionally with a shorter output.

    Output source ``s`` is ``fractions[s] * mix``, centre-trimmed by ``crop`` samples on each side,
    so with ``crop > 0`` the engine must pad with real context to get exact results.

    Args:
        sources: stem names.
        fractions: one gain per source (they sum to 1 for a lossless split).
        audio_channels: channel count C.
        samplerate: sample rate in Hz.
        segment_length: chunk length in samples used by split inference.
        crop: samples removed on each side by the forward pass.
    """

    fractions: torch.Tensor  # (S,) buffer

    def __init__(
        self,
        sources: list[str],
        fractions: list[float] | None = None,
        audio_channels: int = 2,
        samplerate: int = 44100,
        segment_length: int = 44100,
        crop: int = 0,
    ) -> None:
        super().__init__()
        if fractions is None:
            fractions = [1.0 / len(sources)] * len(sources)
        if len(fractions) != len(sources):
            raise ValueError("one fraction per source is needed")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment_length = segment_length
        self.crop = crop
        self.register_buffer("fractions", torch.tensor(fractions, dtype=torch.float32))
        self.init_kwargs = dict(
            sources=self.sources,
            fractions=list(fractions),
            audio_channels=audio_channels,
            samplerate=samplerate,
            segment_length=segment_length,
            crop=crop,
        )

    def valid_length(self, length: int) -> int:
        """Input length whose output covers ``length`` samples."""
        return length + 2 * self.crop

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, S, C, T - 2 * crop)."""
        out = mix[:, None] * self.fractions[None, :, None, None]
        return out[..., self.crop : out.shape[-1] - self.crop]
