"""The contract every separation model of demucs_rr fulfils.

The separation engine relies on nothing else: a model maps a mixture (B, C, T) to stems
(B, S, C, T') and exposes the metadata below. Models whose output is shorter than their input
(Demucs) report through ``valid_length`` how long an input must be so that the output covers
``length`` samples once centre-trimmed; the engine pads centred with real neighbouring audio.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SeparationModel(Protocol):
    """Structural type of a separation model.

    Attributes:
        sources: stem names, in output order (S of them).
        samplerate: sample rate the model works at, in Hz.
        audio_channels: number of audio channels C the model takes and returns.
        segment_length: default chunk length for split inference, in samples.
    """

    sources: list[str]
    samplerate: int
    audio_channels: int
    segment_length: int

    def valid_length(self, length: int) -> int:
        """Smallest input length >= ``length`` whose output covers ``length`` samples."""
        ...

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate (B, C, T) into (B, S, C, T'), T' <= T, centred on the input."""
        ...
