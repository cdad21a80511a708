"""The direct wav reader gives soundfile's float32 samples bit for bit, and leaves every file
it does not qualify for to soundfile."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import read_audio
from demucs_rr.audio.pcm import open_plain_wav, read_plain_wav
from demucs_rr.data.tracks import read_frames
from demucs_rr.errors import AudioIOError

RATE = 44100


def _samples(subtype: str, frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """(T, C) data covering the format's whole range, extremes included."""
    rng = np.random.default_rng(seed)
    if subtype == "FLOAT":
        data = rng.standard_normal((frames, channels)).astype(np.float32)
        data[:3] = np.array([[-1.0], [1.0], [3.4e38]], dtype=np.float32)  # the extremes
        return data
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32}[subtype]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = rng.integers(low, high, size=(frames, channels), endpoint=True, dtype=np.int64)
    values[:2] = [[low], [high]]
    return (values << (32 - bits)).astype(np.int32)  # soundfile writes int32 top-aligned


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("container", ["WAV", "WAVEX", "RF64"])
def test_plain_wav_equals_soundfile(
    tmp_path: Path, subtype: str, channels: int, container: str
) -> None:
    path = tmp_path / "x.wav"
    soundfile.write(str(path), _samples(subtype, 1001, channels), RATE, subtype, format=container)
    expected, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    plain = open_plain_wav(path)
    assert plain is not None and plain.frames == 1001 and plain.channels == channels
    wav, rate = read_audio(path)
    assert rate == RATE and wav.dtype == torch.float32 and wav.is_contiguous()
    assert np.array_equal(wav.numpy(), expected.T)  # bit for bit (no NaN in the data)
    for start, frames in [(0, 1), (17, 300), (900, -1), (995, 50), (1001, 10), (5000, 3)]:
        region = read_frames(path, start, frames).numpy()
        stop = 1001 if frames < 0 else start + frames
        assert np.array_equal(region, expected[start:stop].T), (start, frames)


def test_chunks_around_the_data_are_walked(tmp_path: Path) -> None:
    """An odd-sized chunk (padded) before the data and a chunk after it, as taggers write."""
    data = _samples("PCM_16", 64, 2).view(np.uint32) >> 16
    body = data.astype("<u2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 2, RATE, RATE * 4, 4, 16)
    chunks = (
        b"fmt " + struct.pack("<I", 16) + fmt
        + b"LIST" + struct.pack("<I", 3) + b"abc\0"
        + b"data" + struct.pack("<I", len(body)) + body
        + b"id3 " + struct.pack("<I", 4) + b"tags"
    )  # fmt: skip
    path = tmp_path / "tagged.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    expected, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert expected.shape == (64, 2)
    plain = open_plain_wav(path)
    assert plain is not None
    assert np.array_equal(read_plain_wav(plain), expected.T)


@pytest.mark.parametrize("subtype", ["PCM_U8", "DOUBLE", "PCM_S8"])
def test_other_encodings_go_to_soundfile(tmp_path: Path, subtype: str) -> None:
    fmt = "AIFF" if subtype == "PCM_S8" else "WAV"
    path = tmp_path / f"x.{fmt.lower()}"
    data = np.linspace(-1, 1, 200, dtype=np.float32)[:, None]
    soundfile.write(str(path), data, RATE, subtype, format=fmt)
    assert open_plain_wav(path) is None
    expected, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert np.array_equal(read_audio(path)[0].numpy(), expected.T)


def test_truncated_wav_goes_to_soundfile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The fast path refuses a data chunk the file does not hold; soundfile reads what is there
    and the reader warns."""
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), _samples("PCM_16", 4 * RATE, 2), RATE, "PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + RATE * 4])  # one second of four
    assert open_plain_wav(path) is None
    wav, _ = read_audio(path)
    assert wav.shape == (2, RATE)
    assert "truncated" in caplog.text


def test_float_wav_with_nan_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = np.zeros((100, 2), dtype=np.float32)
    data[50, 1] = np.nan
    soundfile.write(str(path), data, RATE, "FLOAT")
    assert open_plain_wav(path) is not None
    for read in (read_audio, read_frames):
        with pytest.raises(AudioIOError, match="NaN or infinite") as err:
            read(path)
        assert "\n" not in str(err.value)


def test_file_shrunk_after_open_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    soundfile.write(str(path), _samples("PCM_16", 1000, 2), RATE, "PCM_16")
    plain = open_plain_wav(path)
    assert plain is not None
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(AudioIOError, match="changed while it was read"):
        read_plain_wav(plain)


def test_bad_headers_keep_their_refusals(tmp_path: Path) -> None:
    """A frame size that does not match channels x bits is not read directly: the checked
    reader refuses it as before."""
    path = tmp_path / "x.wav"
    soundfile.write(str(path), _samples("PCM_16", 100, 2), RATE, "PCM_16")
    raw = bytearray(path.read_bytes())
    raw[32:34] = struct.pack("<H", 6)  # block align 6 for 2 x 16 bits
    path.write_bytes(bytes(raw))
    assert open_plain_wav(path) is None
    with pytest.raises(AudioIOError, match="inconsistent"):
        read_audio(path)
