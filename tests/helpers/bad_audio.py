"""A generated corpus of bad, odd and damaged audio files, and small valid files to mutate.

Every case says what ``demucs-rr separate`` must do with it: ``ok`` (stems written, nothing on
stderr), ``warn`` (stems written, exactly one warning line naming the file) or ``error`` (no
stems, exactly one error line naming the file). Files are tiny (well under a second of audio)
so the whole corpus runs through the CLI in seconds; the 3-hour file is sparse
(:func:`write_sparse_silence`).
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lameenc
import numpy as np
import soundfile

SR = 22050


def tone(seconds: float = 0.5, samplerate: int = SR, channels: int = 1) -> np.ndarray:
    """A (T, C) float32 tone, peak 0.3: a different frequency per channel."""
    t = np.arange(int(seconds * samplerate)) / samplerate
    rows = [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]
    return np.stack(rows, axis=1).astype(np.float32)


def wav_bytes(samplerate: int = SR, channels: int = 1, seconds: float = 0.5) -> bytes:
    """A canonical 44-byte-header 16-bit PCM wav (fmt at byte 12, data size at byte 40)."""
    data = (tone(seconds, samplerate, channels) * 32767).astype("<i2").tobytes()
    fmt = struct.pack(
        "<HHIIHH", 1, channels, samplerate, samplerate * 2 * channels, 2 * channels, 16
    )
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def mp3_bytes(seconds: float = 1.0, samplerate: int = SR) -> bytes:
    """A mono CBR mp3 of a tone, encoded with lameenc (no Xing header)."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(64)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    pcm = (tone(seconds, samplerate)[:, 0] * 32767).astype(np.int16)
    return bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())


def encoded_bytes(fmt: str, subtype: str, seconds: float = 0.5) -> bytes:
    """The bytes of a mono tone encoded by libsndfile (``fmt`` FLAC or OGG, ``subtype``)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds), SR, format=fmt, subtype=subtype)
    return buffer.getvalue()


@functools.cache
def valid_files() -> dict[str, bytes]:
    """Small valid files of every format the readers decode in-process (0.5 s, 1 s for mp3)."""
    return {
        "wav": wav_bytes(),
        "flac": encoded_bytes("FLAC", "PCM_16"),
        "ogg": encoded_bytes("OGG", "VORBIS"),
        "mp3": mp3_bytes(1.0),
    }


def _patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """``data`` with ``struct.pack(fmt, *values)`` written at ``offset``."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _flip(data: bytes, start: int, step: int = 37) -> bytes:
    """``data`` with every ``step``-th byte from ``start`` xor-ed with 0x55."""
    out = bytearray(data)
    for i in range(start, len(out), step):
        out[i] ^= 0x55
    return bytes(out)


def _sf(path: Path, data: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> None:
    soundfile.write(str(path), data, rate, subtype=subtype, format=fmt)


@dataclass(frozen=True)
class Case:
    """One corpus file and what ``separate`` must do with it.

    Attributes:
        name: file name (unique stem across the corpus, so a batch of all of them is valid).
        expect: ``ok``, ``warn`` or ``error``.
        words: a phrase the error or warning line must contain.
        seconds: audio length the stems must have (``ok``/``warn``), within one sample; -1 when
            the decoder decides (mp3).
        build: writes the file at the given path.
    """

    name: str
    expect: str
    words: str
    seconds: float
    build: Callable[[Path], None]


def _derived(kind: str, change: Callable[[bytes], bytes] = bytes) -> Callable[[Path], None]:
    """A builder writing ``change`` of the valid file of ``kind`` (``wav``, ``flac``, ...)."""

    def build(path: Path) -> None:
        path.write_bytes(change(valid_files()[kind]))

    return build


def _bytes(data: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(data)

    return build


def _nan(path: Path) -> None:
    data = tone(0.2, SR, 2)
    data[100, 1] = np.nan
    _sf(path, data, SR, "FLOAT")


def _inf(path: Path) -> None:
    data = tone(0.2, SR, 1).astype(np.float64)
    data[5, 0] = np.inf
    _sf(path, data, SR, "DOUBLE")


def _truncated(wav: bytes) -> bytes:
    """A wav whose data size says 10 times what the file holds (a truncated download)."""
    return _patch(wav, 40, "<I", 10 * (len(wav) - 44))


#: Every case of the corpus, in a fixed order.
CORPUS: list[Case] = [
    # fine, if odd: decoded as they are
    Case("u8.wav", "ok", "", 0.5, lambda p: _sf(p, tone(), SR, "PCM_U8")),
    Case("int32.wav", "ok", "", 0.5, lambda p: _sf(p, tone(), SR, "PCM_32")),
    Case("float64.wav", "ok", "", 0.5, lambda p: _sf(p, tone(), SR, "DOUBLE")),
    Case("six192k.wav", "ok", "", 0.05, lambda p: _sf(p, tone(0.05, 192000, 6), 192000, "PCM_24")),
    Case("mono8k.wav", "ok", "", 0.5, lambda p: _sf(p, tone(0.5, 8000), 8000, "PCM_16")),
    Case("one_sample.wav", "ok", "", 1 / SR, lambda p: _sf(p, tone(1 / SR), SR, "PCM_16")),
    Case("rf64.wav", "ok", "", 0.5, lambda p: _sf(p, tone(), SR, "PCM_16", "RF64")),
    Case("mp3_named.wav", "ok", "", -1, _derived("mp3")),
    Case("wav_named.mp3", "ok", "", 0.5, _derived("wav")),
    Case("flac_named.ogg", "ok", "", 0.5, _derived("flac")),
    # decoded as far as they go, with one warning line
    Case(
        "truncated.wav",
        "warn",
        "declares 5.0 s but the file holds 0.5 s",
        0.5,
        _derived("wav", _truncated),
    ),
    Case(
        "wav_cut_payload.wav",
        "warn",
        "(truncated?)",
        0.1,
        _derived("wav", lambda b: b[: 44 + 4410]),
    ),
    Case(
        "mp3_damaged.mp3",
        "warn",
        "the decoder reported damaged data",
        -1,
        _derived("mp3", lambda b: _flip(b, len(b) // 3, 101)),
    ),
    # refused with one error line
    Case("empty.wav", "error", "empty", 0, _bytes(b"")),
    Case("dir.wav", "error", "no audio files", 0, lambda p: p.mkdir()),
    Case("text.wav", "error", "cannot decode", 0, _bytes(b"this is not audio\n" * 20)),
    Case(
        "bits7.wav",
        "error",
        "7 bits per sample",
        0,
        _derived("wav", lambda b: _patch(b, 34, "<H", 7)),
    ),
    Case(
        "bits12.wav",
        "error",
        "12 bits per sample",
        0,
        _derived("wav", lambda b: _patch(b, 34, "<H", 12)),
    ),
    Case(
        "float16.wav",
        "error",
        "16 bits per sample",
        0,
        _derived("wav", lambda b: _patch(b, 20, "<H", 3)),
    ),
    Case(
        "align.wav", "error", "inconsistent", 0, _derived("wav", lambda b: _patch(b, 34, "<H", 8))
    ),
    Case(
        "zero_channels.wav",
        "error",
        "cannot decode",
        0,
        _derived("wav", lambda b: _patch(b, 22, "<H", 0)),
    ),
    Case(
        "rate22051.wav", "error", "no simple ratio", 0, lambda p: _sf(p, tone(0.1), 22051, "PCM_16")
    ),
    Case(
        "rate100.wav",
        "error",
        "outside the supported",
        0,
        lambda p: _sf(p, tone(0.1), 100, "PCM_16"),
    ),
    Case("nan.wav", "error", "NaN", 0, _nan),
    Case("inf.wav", "error", "infinite", 0, _inf),
    Case("wav_cut_header.wav", "error", "cannot decode", 0, _derived("wav", lambda b: b[:30])),
    Case("flac_cut_header.flac", "error", "cannot decode", 0, _derived("flac", lambda b: b[:30])),
    Case(
        "flac_cut_payload.flac",
        "error",
        "cannot decode",
        0,
        _derived("flac", lambda b: b[: len(b) // 2]),
    ),
    Case(
        "flac_damaged.flac", "error", "cannot decode", 0, _derived("flac", lambda b: _flip(b, 200))
    ),
    Case("ogg_cut_header.ogg", "error", "cannot decode", 0, _derived("ogg", lambda b: b[:100])),
    Case(
        "ogg_cut_payload.ogg",
        "error",
        "cannot decode",
        0,
        _derived("ogg", lambda b: b[: len(b) // 2]),
    ),
    Case("mp3_cut_header.mp3", "error", "cannot decode", 0, _derived("mp3", lambda b: b[:37])),
    Case("random.mp3", "error", "cannot decode", 0, _bytes(np.random.default_rng(0).bytes(5000))),
]


def write_sparse_silence(path: Path, seconds: float, samplerate: int = 8000) -> Path:
    """A mono 16-bit wav of digital silence, written sparse: the header, then a hole.

    Its apparent size is ``2 * seconds * samplerate`` bytes (173 MB for 3 hours at 8 kHz) but
    it takes almost no disk, and reading the hole is fast (the kernel returns zeros).
    """
    frames = int(seconds * samplerate)
    header = wav_bytes(samplerate, 1, 0.0)
    header = _patch(header, 4, "<I", 36 + 2 * frames)
    header = _patch(header, 40, "<I", 2 * frames)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 2 * frames)
    return path
