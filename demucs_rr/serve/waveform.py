"""Waveform pictures of stem files: a min/max envelope drawn into a PNG with numpy and zlib only."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from demucs_rr.staging import atomic_write


def file_envelope(path: Path, width: int, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(width,) per-column minimum and maximum over all channels of an audio file, around each
    channel's mean, read in blocks (memory does not grow with the length)."""
    info = sf.info(str(path))
    length = max(1, info.frames)
    total = np.zeros(info.channels)
    for chunk in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = (total / length).astype(np.float32)
    lows = np.full(width, np.inf, dtype=np.float32)
    highs = np.full(width, -np.inf, dtype=np.float32)
    start = 0
    for chunk in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        values = chunk - mean  # (n, C)
        cols = np.minimum(np.arange(start, start + len(values)) * width // length, width - 1)
        firsts = np.flatnonzero(np.diff(cols, prepend=-1))  # sorted: one run per column
        used = cols[firsts]
        lows[used] = np.minimum(lows[used], np.minimum.reduceat(values.min(axis=1), firsts))
        highs[used] = np.maximum(highs[used], np.maximum.reduceat(values.max(axis=1), firsts))
        start += len(values)
    empty = ~np.isfinite(lows)
    lows[empty], highs[empty] = 0.0, 0.0
    return lows, highs


def draw(
    lows: np.ndarray,
    highs: np.ndarray,
    height: int = 64,
    color: tuple[int, int, int] = (56, 132, 255),
) -> np.ndarray:
    """An RGBA image (height, width, 4) of a (width,) min/max envelope, scaled to its peak."""
    width = len(lows)
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


def write_waveform_file(stem: Path, path: Path, width: int = 600) -> None:
    """Render the stem file ``stem`` (read in blocks) and write the PNG atomically to ``path``."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(encode_png(draw(*file_envelope(stem, width))))
