"""Shared pytest fixtures: paths to ../shared data (skipped in a user's clone) and small audio."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "official"
EVAL_DATA = SHARED / "eval-data"


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    """Folder of the official parity fixtures; skips when ../shared is absent (user's clone)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official parity fixtures not found at {FIXTURES} (present in CI only)")
    return FIXTURES


@pytest.fixture(scope="session")
def eval_data() -> Path:
    """Folder of third-party evaluation audio; skips when ../shared is absent."""
    if not EVAL_DATA.is_dir():
        pytest.skip(f"evaluation data not found at {EVAL_DATA} (present in CI only)")
    return EVAL_DATA


def make_tone_mix(seconds: float = 1.0, samplerate: int = 44100, channels: int = 2) -> torch.Tensor:
    """A deterministic (C, T) test signal: two tones plus a little noise, peak below 0.5."""
    t = torch.arange(int(seconds * samplerate)) / samplerate
    gen = torch.Generator().manual_seed(0)
    rows = []
    for c in range(channels):
        tone = 0.2 * torch.sin(2 * math.pi * (220 + 110 * c) * t)
        tone = tone + 0.1 * torch.sin(2 * math.pi * 55 * t)
        rows.append(tone + 0.01 * torch.randn(t.shape, generator=gen))
    return torch.stack(rows).float()
