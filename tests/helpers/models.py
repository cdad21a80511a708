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
