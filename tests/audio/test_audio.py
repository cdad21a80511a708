"""Tests of demucs_rr.audio: decoding, channel/rate conversion and atomic writing."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import (
    AUDIO_EXTENSIONS,
    WriteOptions,
    convert_audio,
    convert_channels,
    ffmpeg_available,
    load_for_model,
    prepare_for_write,
    read_audio,
    resample,
    write_audio,
)
from demucs_rr.errors import AudioIOError, ConfigError
from tests.helpers.audio import make_tone_mix

SR = 44100
K = math.sqrt(0.5)

needs_ffmpeg = pytest.mark.skipif(
    not ffmpeg_available(), reason="ffmpeg/ffprobe not on PATH (needed for the ffmpeg fallback)"
)


def tone(freq: float, seconds: float, samplerate: int, channels: int = 1) -> torch.Tensor:
    """A (channels, T) sine at 0.5 amplitude."""
    t = torch.arange(int(seconds * samplerate), dtype=torch.float64) / samplerate
    return (0.5 * torch.sin(2 * math.pi * freq * t)).float().repeat(channels, 1)


def peak_frequency(wav: torch.Tensor, samplerate: int) -> float:
    """Frequency in Hz of the largest FFT bin of the first channel of (C, T)."""
    spectrum = torch.fft.rfft(
        wav[0].double() * torch.hann_window(wav.shape[-1], dtype=torch.double)
    )
    return float(spectrum.abs().argmax()) * samplerate / wav.shape[-1]


def max_xcorr(a: torch.Tensor, b: torch.Tensor, max_lag: int) -> float:
    """Largest normalised cross-correlation of two 1-D signals over lags within +-max_lag."""
    a, b = a.double(), b.double()
    n = a.numel() + b.numel()
    xc = torch.fft.irfft(torch.fft.rfft(a, n) * torch.fft.rfft(b, n).conj(), n)
    lags = torch.cat([xc[: max_lag + 1], xc[-max_lag:]])
    return float(lags.max() / (a.norm() * b.norm()))


def assert_one_line_error(err: pytest.ExceptionInfo[AudioIOError], path: Path) -> None:
    """The message is a single line that names the file."""
    message = str(err.value)
    assert "\n" not in message
    assert path.name in message


def only_files(folder: Path) -> list[str]:
    """Names in ``folder``, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("fmt", "encoding", "scale"),
    [
        ("wav", "int16", 2**15 - 1),
        ("wav", "int24", 2**23 - 1),
        ("flac", "int16", 2**15 - 1),
        ("flac", "int24", 2**23 - 1),
    ],
)
def test_integer_round_trip_within_quantisation(
    tmp_path: Path, fmt: str, encoding: str, scale: int
) -> None:
    wav = make_tone_mix(0.5, SR, 2)
    path = write_audio(wav, tmp_path / f"x.{fmt}", SR, WriteOptions(fmt, encoding, "none"))
    back, samplerate = read_audio(path)
    assert samplerate == SR and back.shape == wav.shape and back.dtype == torch.float32
    # readers divide by 2**15 / 2**23, the writer multiplied by 2**15 - 1 / 2**23 - 1
    full = 2 ** (15 if encoding == "int16" else 23)
    err = (back.double() * full / scale - wav.double()).abs().max()
    assert err <= 0.5 / scale + 1e-7
    assert soundfile.info(str(path)).subtype == {"int16": "PCM_16", "int24": "PCM_24"}[encoding]


def test_integer_codes_are_rounded_and_clamped(tmp_path: Path) -> None:
    wav = torch.tensor([[0.0, 0.25, -0.25, 1.5, -1.5, 1e-5, -1e-5, 0.99999]])
    write_audio(wav, tmp_path / "a.wav", SR, WriteOptions(clip_mode="none"))
    codes, _ = soundfile.read(str(tmp_path / "a.wav"), dtype="int16")
    expected = [0, 8192, -8192, 32767, -32767, 0, 0, 32767]  # 0.25 * 32767 = 8191.75
    assert codes.tolist() == expected
    write_audio(wav, tmp_path / "b.wav", SR, WriteOptions(encoding="int24", clip_mode="none"))
    codes24, _ = soundfile.read(str(tmp_path / "b.wav"), dtype="int32")
    assert (codes24 >> 8).tolist() == [0, 2097152, -2097152, 8388607, -8388607, 84, -84, 8388523]


def test_float32_round_trip_is_exact(tmp_path: Path) -> None:
    wav = make_tone_mix(0.5, SR, 2) * 3.0  # above full scale: float keeps it with clip 'none'
    path = write_audio(
        wav, tmp_path / "x.wav", SR, WriteOptions(encoding="float32", clip_mode="none")
    )
    back, _ = read_audio(path)
    assert torch.equal(back, wav)
    assert soundfile.info(str(path)).subtype == "FLOAT"


@pytest.mark.parametrize(("channels", "samplerate"), [(2, 44100), (1, 48000)])
def test_mp3_round_trip(tmp_path: Path, channels: int, samplerate: int) -> None:
    wav = make_tone_mix(1.0, samplerate, channels)
    path = write_audio(wav, tmp_path / "x.mp3", samplerate, WriteOptions(format="mp3"))
    back, rate = read_audio(path)
    assert rate == samplerate and back.shape[0] == channels
    assert abs(back.shape[-1] - wav.shape[-1]) <= 2400
    for c in range(channels):
        assert max_xcorr(back[c], wav[c], 2400) > 0.95


def test_mp3_rejects_more_than_two_channels(tmp_path: Path) -> None:
    with pytest.raises(AudioIOError, match="1 or 2 channels") as err:
        write_audio(torch.zeros(6, 1000), tmp_path / "x.mp3", SR, WriteOptions(format="mp3"))
    assert_one_line_error(err, tmp_path / "x.mp3")
    assert only_files(tmp_path) == []


def test_silent_file_reads_back_as_zeros(tmp_path: Path) -> None:
    path = write_audio(torch.zeros(2, 4410), tmp_path / "silence.flac", SR, WriteOptions("flac"))
    back, _ = read_audio(path)
    assert back.shape == (2, 4410) and not back.any()


# ------------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioIOError, match="no such file") as err:
        read_audio(tmp_path / "nope.wav")
    assert_one_line_error(err, tmp_path / "nope.wav")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "album.wav"
    folder.mkdir()
    with pytest.raises(AudioIOError, match="directory") as err:
        read_audio(folder)
    assert_one_line_error(err, folder)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.touch()
    with pytest.raises(AudioIOError, match="empty") as err:
        read_audio(path)
    assert_one_line_error(err, path)


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioIOError, match="cannot decode") as err:
        read_audio(path)
    assert_one_line_error(err, path)


def test_nan_samples_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = np.zeros((100, 2), dtype=np.float32)
    data[50, 1] = np.nan
    soundfile.write(str(path), data, SR, subtype="FLOAT")
    with pytest.raises(AudioIOError, match="NaN") as err:
        read_audio(path)
    assert_one_line_error(err, path)


@pytest.mark.parametrize("damage", ["first37", "garbage_middle", "first_half"])
def test_damaged_mp3_fails_cleanly_or_decodes_the_complete_frames(
    tmp_path: Path, damage: str
) -> None:
    """A header alone or a third of random bytes in the middle is one error line naming the file;
    a file cut in half decodes its complete frames (about half of the audio), as decoders do."""
    good = write_audio(make_tone_mix(1.0), tmp_path / "good.mp3", SR, WriteOptions(format="mp3"))
    data = bytearray(good.read_bytes())
    if damage == "first37":
        data = data[:37]
    elif damage == "first_half":
        data = data[: len(data) // 2]
    else:
        third = len(data) // 3
        data[third : 2 * third] = np.random.default_rng(0).bytes(third)
    path = tmp_path / f"{damage}.mp3"
    path.write_bytes(bytes(data))
    if damage != "first_half":
        with pytest.raises(AudioIOError) as err:
            read_audio(path)
        assert_one_line_error(err, path)
        return
    wav, samplerate = read_audio(path)
    assert samplerate == SR and wav.shape[0] == 2
    assert 0.4 * SR < wav.shape[-1] < 0.6 * SR
    assert bool(torch.isfinite(wav).all())


# ------------------------------------------------------------------------------------ ffmpeg


def make_m4a(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """Encode a stereo tone mix to AAC in an .m4a with the ffmpeg command line."""
    wav = make_tone_mix(1.0, SR, 2)
    source = write_audio(wav, tmp_path / "source.wav", SR, WriteOptions(clip_mode="none"))
    target = tmp_path / "song.m4a"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(source), "-c:a", "aac", str(target)]
    subprocess.run(cmd, check=True)
    return target, wav


@pytest.mark.integration
@needs_ffmpeg
def test_ffmpeg_fallback_decodes_m4a(tmp_path: Path) -> None:
    path, wav = make_m4a(tmp_path)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(str(path))  # so the ffmpeg path is the one under test
    back, samplerate = read_audio(path)
    assert samplerate == SR and back.shape[0] == 2 and back.dtype == torch.float32
    assert abs(back.shape[-1] - wav.shape[-1]) <= 2400
    assert max_xcorr(back[0], wav[0], 2400) > 0.9


@pytest.mark.integration
@pytest.mark.parametrize("how", ["which", "path"])
def test_missing_ffmpeg_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if ffmpeg_available():
        path, _ = make_m4a(tmp_path)
    else:
        path = tmp_path / "song.m4a"
        path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    if how == "which":
        monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    else:
        monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
    assert not ffmpeg_available()
    with pytest.raises(AudioIOError, match="install ffmpeg") as err:
        read_audio(path)
    assert_one_line_error(err, path)
    # formats soundfile handles keep working without ffmpeg
    back, _ = read_audio(write_audio(torch.zeros(1, 10), tmp_path / "ok.wav", SR))
    assert back.shape == (1, 10)


# ------------------------------------------------------------------------------ dsp


@pytest.mark.parametrize("source_sr", [8000, 192000])
def test_resample_to_44100_keeps_length_and_frequency(source_sr: int) -> None:
    wav = tone(1000.0, 0.5, source_sr, channels=2)
    out = resample(wav, source_sr, SR)
    assert out.shape == (2, int(wav.shape[-1] * SR / source_sr))
    assert abs(peak_frequency(out, SR) - 1000.0) < 3.0
    middle = out[:, 2000:-2000]  # away from the edges, amplitude is preserved
    assert abs(float(middle.abs().max()) - 0.5) < 0.01


def test_resample_identity_and_ratio_reduction() -> None:
    wav = torch.randn(2, 1000)
    assert resample(wav, SR, SR) is wav
    assert resample(wav, 44100, 48000).shape == (2, 1088)
    with pytest.raises(ValueError):
        resample(wav, 0, SR)


def test_convert_channels_policy() -> None:
    stereo = torch.tensor([[1.0, 0.5], [-1.0, 0.25]])
    assert convert_channels(stereo, 2) is stereo
    assert torch.allclose(convert_channels(stereo, 1), torch.tensor([[0.0, 0.375]]))
    mono = torch.tensor([[0.1, 0.2, 0.3]])
    assert torch.equal(convert_channels(mono, 2), mono.repeat(2, 1))
    three = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(convert_channels(three, 2), three[:2])
    with pytest.raises(AudioIOError, match="2-channel audio to 3 channels"):
        convert_channels(stereo, 3)


def test_downmix_51_to_stereo_values() -> None:
    # WAV/SMPTE order: L R C LFE Ls Rs, one constant per channel
    values = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4, 0.5])
    wav = values[:, None].repeat(1, 8)
    out = convert_channels(wav, 2)
    norm = 1.0 + 2.0 * K
    expected_l = (0.1 + K * 0.3 + K * 0.4) / norm
    expected_r = (0.2 + K * 0.3 + K * 0.5) / norm
    assert out.shape == (2, 8)
    assert torch.allclose(out[:, 0], torch.tensor([expected_l, expected_r]), atol=1e-7)
    full_scale = convert_channels(torch.ones(6, 4), 2)
    assert torch.allclose(full_scale, torch.ones(2, 4)), "full-scale input must map to <= 1"
    lfe_only = torch.zeros(6, 4)
    lfe_only[3] = 1.0
    assert not convert_channels(lfe_only, 2).any(), "LFE is dropped"
    assert torch.allclose(convert_channels(wav, 1), values.mean().expand(1, 8))


def test_load_for_model_converts_rate_and_channels(tmp_path: Path) -> None:
    wav = tone(1000.0, 0.25, 48000, channels=1)
    path = write_audio(wav, tmp_path / "mono48k.wav", 48000, WriteOptions(encoding="float32"))
    out, original_sr = load_for_model(path, SR, 2)
    assert original_sr == 48000
    assert out.shape == (2, int(wav.shape[-1] * SR / 48000)) and out.dtype == torch.float32
    assert torch.equal(out[0], out[1])
    assert torch.allclose(out, convert_audio(wav, 48000, SR, 2))


def test_load_for_model_names_file_when_channels_cannot_be_converted(tmp_path: Path) -> None:
    path = write_audio(torch.zeros(2, 100), tmp_path / "stereo.wav", SR)
    with pytest.raises(AudioIOError, match="stereo.wav"):
        load_for_model(path, SR, 3)


# --------------------------------------------------------------------------------- writing


def test_prepare_for_write_modes() -> None:
    loud = torch.tensor([[2.0, -1.0, 0.5]])
    rescaled = prepare_for_write(loud, "rescale")
    assert torch.allclose(rescaled, loud / 2.02)
    quiet = torch.tensor([[0.5, -0.25]])
    assert torch.equal(prepare_for_write(quiet, "rescale"), quiet)
    assert torch.equal(prepare_for_write(loud, "clamp"), torch.tensor([[0.99, -0.99, 0.5]]))
    assert torch.equal(prepare_for_write(loud, "none"), loud)
    assert loud[0, 0] == 2.0, "input must not be modified"
    with pytest.raises(AudioIOError, match="NaN"):
        prepare_for_write(torch.tensor([[0.0, math.inf]]), "none")
    with pytest.raises(ConfigError):
        prepare_for_write(loud, "tanh")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "ogg"},
        {"encoding": "int8"},
        {"clip_mode": "soft"},
        {"mp3_preset": 1},
        {"mp3_bitrate": 1000},
        {"format": "flac", "encoding": "float32"},
    ],
)
def test_write_options_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        WriteOptions(**kwargs)  # type: ignore[arg-type]


def test_write_creates_parents_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "vocals.wav"
    write_audio(torch.zeros(2, 100), target, SR)
    write_audio(torch.full((2, 50), 0.5), target, SR, WriteOptions(encoding="float32"))
    back, _ = read_audio(target)
    assert back.shape == (2, 50) and torch.all(back == 0.5)
    assert only_files(target.parent) == ["vocals.wav"]


@pytest.mark.parametrize("existing", [True, False])
def test_write_is_atomic_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    target = tmp_path / "drums.wav"
    if existing:
        target.write_bytes(b"previous output")
    seen: list[str] = []

    def failing_write(file: str, *args: object, **kwargs: object) -> None:
        seen.append(file)
        Path(file).write_bytes(b"RIFF half-written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(soundfile, "write", failing_write)
    with pytest.raises(AudioIOError, match="disk full") as err:
        write_audio(torch.zeros(2, 100), target, SR)
    assert_one_line_error(err, target)
    assert seen and Path(seen[0]).name.startswith(".") and seen[0].endswith(".part")
    assert only_files(tmp_path) == (["drums.wav"] if existing else [])
    if existing:
        assert target.read_bytes() == b"previous output"


def test_write_non_finite_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(AudioIOError, match="NaN"):
        write_audio(torch.tensor([[0.0, math.nan]]), tmp_path / "x.wav", SR)
    assert only_files(tmp_path) == []


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    with pytest.raises(AudioIOError, match="cannot write") as err:
        write_audio(torch.zeros(2, 10), blocker / "out.wav", SR)
    assert_one_line_error(err, blocker / "out.wav")


def test_audio_files_are_found_by_extension_in_any_case(tmp_path: Path) -> None:
    from demucs_rr.separate.outputs import collect_tracks

    names = [
        "a.WAV",
        "b.flac",
        "c.Mp3",
        "d.m4a",
        "e.ogg",
        "f.aiff",
        "g.opus",
        "notes.txt",
        ".h.wav",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    tracks, errors = collect_tracks([str(tmp_path)], recursive=False)
    assert sorted(t.path.name for t in tracks) == sorted(names[:7]) and errors == []
    assert {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aiff", ".opus"} <= AUDIO_EXTENSIONS


@pytest.mark.parametrize("bitrate", [32, 64, 96, 128])
def test_mp3_keeps_the_sample_rate_at_low_bit_rates(tmp_path: Path, bitrate: int) -> None:
    """lame lowers the rate of stereo mp3 below 112 kbps by itself (96 kbps: 32 kHz); stems keep
    theirs."""
    path = tmp_path / f"{bitrate}.mp3"
    write_audio(make_tone_mix(0.5), path, SR, WriteOptions(format="mp3", mp3_bitrate=bitrate))
    assert soundfile.info(str(path)).samplerate == SR


def test_mp3_bit_rates_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="100 kbps does not exist"):
        WriteOptions(format="mp3", mp3_bitrate=100)
    with pytest.raises(AudioIOError, match="cannot hold 96000 Hz") as err:
        write_audio(
            make_tone_mix(0.1, 96000), tmp_path / "x.mp3", 96000, WriteOptions(format="mp3")
        )
    assert "\n" not in str(err.value) and not (tmp_path / "x.mp3").exists()
