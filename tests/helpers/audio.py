"""Test audio: a deterministic tone mix and byte-level mutations of files."""

from __future__ import annotations

import math

import torch


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
