"""Shared pytest fixtures: paths to ../shared data (skipped in a user's clone) and small audio."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run with one intra-op thread (the fixtures were produced that way), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_matches(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Fixture tolerance: max|out - ref| <= 1e-5 * max|ref| + 1e-6, shapes equal."""
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    err = float(np.abs(out - ref).max())
    bound = 1e-5 * float(np.abs(ref).max()) + 1e-6
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a reader ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    """Apply flips, truncations, insertions, zeroed runs (positions modulo the size) and
    little-endian header field overwrites (in the first 64 bytes)."""
    out = bytearray(data)
    for kind, position, value in steps:
        at = position % max(len(out), 1)
        if kind == "flip" and out:
            out[at] ^= value
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value])
        elif kind == "zero":
            out[at : at + value] = bytes(len(out[at : at + value]))
        elif kind.startswith("field"):
            width = 2 if kind == "field16" else 4
            field = (value & (256**width - 1)).to_bytes(width, "little")
            out[position : position + width] = field
    return bytes(out)
