"""Waveform pictures of stems: a min/max envelope drawn into a PNG with numpy and zlib only."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch


def envelope(wav: torch.Tensor, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column minimum and maximum of a (C, T) waveform over all channels, around its mean."""
    samples = wav.detach().float().cpu().numpy().reshape(-1, wav.shape[-1])
    samples = samples - samples.mean(axis=1, keepdims=True)
    length = samples.shape[-1]
    edges = np.linspace(0, length, width + 1).astype(np.int64)
    lows = np.zeros(width, dtype=np.float32)
    highs = np.zeros(width, dtype=np.float32)
    for i in range(width):
        a, b = edges[i], max(edges[i + 1], edges[i] + 1)
        block = samples[:, a:b] if a < length else samples[:, :0]
        if block.size:
            lows[i], highs[i] = block.min(), block.max()
    return lows, highs


def render(
    wav: torch.Tensor,
    width: int = 600,
    height: int = 64,
    color: tuple[int, int, int] = (56, 132, 255),
) -> np.ndarray:
    """An RGBA image (height, width, 4) of the waveform's envelope on a transparent ground.

    The vertical scale is the stem's own peak (after removing its mean), so quiet stems stay
    visible.
    """
    lows, highs = envelope(wav, width)
    peak = max(float(np.abs(lows).max()), float(np.abs(highs).max()), 1e-4)
    mid = (height - 1) / 2
    top = np.floor(mid - highs / peak * mid).astype(np.int64)
    bottom = np.ceil(mid - lows / peak * mid).astype(np.int64)
    rows = np.arange(height)[:, None]
    mask = (rows >= top[None, :]) & (rows <= bottom[None, :])
    image = np.zeros((height, width, 4), dtype=np.uint8)
    image[mask] = (*color, 255)
    image[int(mid), :, :] = np.where(mask[int(mid), :, None], image[int(mid), :, :], 60)
    return image


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 4) uint8 RGBA image (8-bit, no interlace, filter 0)."""
    height, width, _ = image.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            chunk(b"IEND", b""),
        ]
    )


def write_waveform(wav: torch.Tensor, path: Path) -> None:
    """Render a (C, T) stem and write the PNG atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encode_png(render(wav)))
    os.replace(tmp, path)
