"""Tiny models of the real architectures, seeded, for tests that need their behaviour (a
maximum segment, a spectrogram branch) but not their size."""

from __future__ import annotations

from typing import Any

import torch

from demucs_rr.models.htdemucs import HTDemucs

SOURCES = ["drums", "bass", "other", "vocals"]

TINY_HT: dict[str, Any] = {
    "sources": SOURCES,
    "channels": 8,
    "depth": 4,
    "t_layers": 2,
    "t_heads": 2,
    "bottom_channels": 16,
    "dconv_mode": 3,
    "segment": 1.0,
}
"""A small HT Demucs: 1 s training segment (its maximum chunk), every kind of layer."""


def tiny_htdemucs(seed: int = 0, **overrides: Any) -> HTDemucs:
    """:data:`TINY_HT` (with ``overrides``), weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return HTDemucs(**{**TINY_HT, **overrides})


TINY_BAND_SPLIT: dict[str, dict[str, Any]] = {
    "BSRoformer": {
        "dim": 16, "depth": 1, "stereo": True, "heads": 2, "dim_head": 8,
        "time_transformer_depth": 1, "freq_transformer_depth": 1, "linear_transformer_depth": 0,
        "mlp_expansion_factor": 1,
        "stft_n_fft": 512, "stft_hop_length": 128, "stft_win_length": 512,
        "freqs_per_bands": (1,) * 8 + (8,) * 8 + (16,) * 11 + (9,), "segment_length": 44100,
    },
    "MelBandRoformer": {
        "dim": 16, "depth": 1, "stereo": True, "heads": 2, "dim_head": 8,
        "time_transformer_depth": 1, "freq_transformer_depth": 1, "linear_transformer_depth": 0,
        "mlp_expansion_factor": 1,
        "stft_n_fft": 512, "stft_hop_length": 128, "stft_win_length": 512, "num_bands": 16,
        "segment_length": 44100,
    },
    "SCNet": {
        "dims": [4, 8, 16], "nfft": 512, "hop_size": 128, "win_size": 512, "num_dplayer": 2,
        "segment_length": 44100,
    },
    "MDX23C": {
        "n_fft": 512, "hop_length": 128, "dim_f": 256, "num_subbands": 2, "num_scales": 3,
        "num_blocks_per_scale": 1, "num_channels": 8, "growth": 4, "segment_length": 44100,
    },
}  # fmt: skip
"""Small stereo band-split networks (n_fft 512), registry class name -> constructor kwargs
without ``sources``."""


def tiny_band_split(arch: str, sources: list[str], seed: int = 0) -> Any:
    """:data:`TINY_BAND_SPLIT` ``[arch]`` with ``sources``, weights drawn after
    ``torch.manual_seed(seed)``."""
    from demucs_rr.models.registry import build_model

    torch.manual_seed(seed)
    return build_model(arch, {**TINY_BAND_SPLIT[arch], "sources": list(sources)})
