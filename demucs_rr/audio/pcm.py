"""Plain wav files read straight into (C, T) float32: the fast path of both readers.

For a 16-bit stereo wav, libsndfile's float conversion followed by the (T, C) -> (C, T) copy
costs about three times a direct read (0.2 against 0.065 CPU-s per 4-minute stem, measured
with ``tools/bench_decode.py``): most of the time of an SDR-only evaluation. A wav qualifies
when its header is complete and plain: PCM of 16, 24 or 32 bits or 32-bit IEEE float
(WAVE_FORMAT_EXTENSIBLE included), a frame size equal to channels x bits / 8, a fmt chunk
before the data chunk and a data chunk of whole frames that the file holds entirely. Its
samples equal libsndfile's float32 bit for bit: libsndfile scales PCM by a power of two (2^-15
for 16 bit; 2^-31 for 24 and 32 bit, which it holds as int32 values with the 24 bits at the
top), which is exact after the one rounding of int32 -> float32 both make. Every other file
(compressed, 8 or 64-bit, truncated, a data size left unknown) goes through soundfile with the
checks of :mod:`demucs_rr.audio.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demucs_rr.audio.decode import read_wav_header
from demucs_rr.errors import AudioIOError

__all__ = ["PlainWav", "open_plain_wav", "read_plain_wav"]

_PCM, _FLOAT = 1, 3
#: (format tag, bits) -> (sample dtype as stored, the scale libsndfile applies)
_KINDS: dict[tuple[int, int], tuple[str, float]] = {
    (_PCM, 16): ("<i2", 2.0**-15),
    (_PCM, 24): ("<i4", 2.0**-31),  # three bytes widened to the top of an int32
    (_PCM, 32): ("<i4", 2.0**-31),
    (_FLOAT, 32): ("<f4", 1.0),
}
_BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class PlainWav:
    """A wav file the fast path reads; made by :func:`open_plain_wav`.

    Attributes:
        path: the file.
        rate: sample rate in Hz.
        channels: channel count C.
        frames: frames in the data chunk.
        offset: byte offset of the first frame.
        bits: bits per sample (16, 24 or 32).
        is_float: 32-bit IEEE float samples.
    """

    path: Path
    rate: int
    channels: int
    frames: int
    offset: int
    bits: int
    is_float: bool


def open_plain_wav(path: Path) -> PlainWav | None:
    """``path`` as a :class:`PlainWav` when its header qualifies (module docstring), else None
    (the caller decodes it with soundfile, which reports what is wrong with it)."""
    try:
        header = read_wav_header(path)
        file_size = path.stat().st_size
    except OSError:
        return None
    if header is None or header.fmt is None or not header.size or header.offset is None:
        return None
    fmt = header.fmt
    if (fmt.tag, fmt.bits) not in _KINDS or fmt.channels < 1 or fmt.rate < 1:
        return None
    if fmt.block_align != fmt.channels * fmt.bits // 8 or header.size % fmt.block_align:
        return None
    if header.offset + header.size > file_size:  # truncated: soundfile warns about it
        return None
    frames = header.size // fmt.block_align
    return PlainWav(
        path, fmt.rate, fmt.channels, frames, header.offset, fmt.bits, fmt.tag == _FLOAT
    )


def read_plain_wav(
    wav: PlainWav, start: int = 0, frames: int = -1, out: np.ndarray | None = None
) -> np.ndarray:
    """``frames`` frames from ``start`` (-1: to the end; fewer past the end) as float32.

    The file is read in blocks of about 4 MiB, each converted into its place in ``out`` while
    it is in the cache: no copy of the whole file is made.

    Args:
        wav: the file.
        start: first frame.
        frames: frame count, or -1 for all from ``start``.
        out: where to write, a float32 (C, n) array for the n frames read; made when None.

    Returns:
        (C, n) float32 array (``out`` when given), equal to soundfile's float32 read
        transposed.

    Raises:
        AudioIOError: one line: the file shrank since it was opened, or a float sample is NaN
            or infinite (refused like every reader does).
    """
    start = min(max(start, 0), wav.frames)
    stop = wav.frames if frames < 0 else min(wav.frames, start + frames)
    if out is None:
        out = np.empty((wav.channels, stop - start), dtype=np.float32)
    if out.shape != (wav.channels, stop - start) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(wav.channels, stop - start)}, not {out.shape}")
    frame = wav.channels * wav.bits // 8
    step = max(1, _BLOCK_BYTES // frame)
    buffer = bytearray(min(step, stop - start) * frame)
    try:
        with open(wav.path, "rb") as f:
            f.seek(wav.offset + start * frame)
            for at in range(0, stop - start, step):
                n = min(step, stop - start - at)
                view = memoryview(buffer)[: n * frame]
                if f.readinto(view) != n * frame:
                    raise AudioIOError(
                        f"cannot read {wav.path}: the file changed while it was read"
                    )
                _convert(wav, view, out[:, at : at + n])
    except OSError as err:
        raise AudioIOError(f"cannot read {wav.path}: {err.strerror or err}") from None
    return out


def _convert(wav: PlainWav, raw: memoryview, out: np.ndarray) -> None:
    """Interleaved samples ``raw`` into ``out`` (C, n) float32, scaled like libsndfile."""
    dtype, scale = _KINDS[(_FLOAT if wav.is_float else _PCM, wav.bits)]
    samples = _widened(raw) if wav.bits == 24 else np.frombuffer(raw, dtype)
    out[...] = samples.reshape(-1, wav.channels).T  # int -> float32: the one rounding
    if scale != 1.0:
        out *= np.float32(scale)  # a power of two: exact
    elif not np.isfinite(out).all():
        raise AudioIOError(f"cannot read {wav.path}: the audio contains NaN or infinite samples")


def _widened(raw: memoryview) -> np.ndarray:
    """24-bit little-endian samples as int32 with the 24 bits at the top (libsndfile's)."""
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
    wide = np.zeros((packed.shape[0], 4), dtype=np.uint8)
    wide[:, 1:] = packed
    return wide.view("<i4").reshape(-1)
