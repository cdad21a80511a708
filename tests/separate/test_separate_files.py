"""Streaming file separation equals the in-memory path of the same engine.

Reference: decode the whole file, ``Separator.separate_tensor``, compose, resample and write with
``write_track`` (the pre-streaming ``separate``). Streamed float32 stems agree within 1e-6 of the
peak, int16 stems within one code, on lengths around chunk and block boundaries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import WriteOptions, load_for_model, resample
from demucs_rr.errors import AudioIOError
from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.api import Separator
from demucs_rr.separate.outputs import compose_stems, write_track
from demucs_rr.separate.to_files import FileJob, stream_file

SOURCES = ["drums", "bass", "other", "vocals"]
BLOCK = 1000  # decoded block; the model's segment is 400 samples


def _model(bag: bool = False) -> FractionModel | BagOfModels:
    a = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=400, crop=17)
    if not bag:
        return a.eval()
    b = FractionModel(SOURCES, [0.4, 0.3, 0.2, 0.1], segment_length=300, crop=5)
    return BagOfModels([a, b], weights=[[1, 2, 1, 1], [1, 1, 3, 1]]).eval()


def _song(path: Path, length: int, rate: int = 44100, gain: float = 0.5) -> Path:
    noise = np.random.default_rng(length).standard_normal((length, 2)) * gain
    soundfile.write(str(path), (noise + 0.01).astype(np.float32), rate, subtype="FLOAT")
    return path


def _reference(sep: Separator, src: Path, job: FileJob) -> None:
    """The in-memory pipeline, writing ``job.targets``."""
    mix, input_sr = load_for_model(src, sep.samplerate, sep.audio_channels)
    outputs = compose_stems(sep.separate_tensor(mix), mix, list(job.targets), job.other_method)
    rate = sep.samplerate
    if job.keep_sample_rate and input_sr != rate:
        outputs = {k: resample(v, rate, input_sr) for k, v in outputs.items()}
        rate = input_sr
    write_track({job.targets[k]: v for k, v in outputs.items()}, rate, job.write)


def _both(tmp: Path, src: Path, sep: Separator, job: FileJob) -> list[tuple[np.ndarray, ...]]:
    """Run both paths into ``tmp/ref`` and ``tmp/new``; pairs of decoded (T, C) stems."""
    ref = FileJob({k: tmp / "ref" / p.name for k, p in job.targets.items()}, *_rest(job))
    new = FileJob({k: tmp / "new" / p.name for k, p in job.targets.items()}, *_rest(job))
    (tmp / "ref").mkdir()
    _reference(sep, src, ref)
    stream_file(sep.model, sep.options, sep.device, src, new, block=BLOCK)
    pairs = []
    for name in job.targets:
        a, rate_a = soundfile.read(str(ref.targets[name]), dtype="float64", always_2d=True)
        b, rate_b = soundfile.read(str(new.targets[name]), dtype="float64", always_2d=True)
        assert rate_a == rate_b and a.shape == b.shape, (name, a.shape, b.shape)
        pairs.append((a, b))
    return pairs


def _rest(job: FileJob) -> tuple[WriteOptions, str, bool]:
    return job.write, job.other_method, job.keep_sample_rate


def _targets(names: list[str], ext: str = "wav") -> dict[str, Path]:
    return {name: Path(f"{name}.{ext}") for name in names}


@pytest.mark.parametrize("length", [1, 399, 400, 401, 999, 1000, 1001, 3001])
def test_float32_streamed_equals_in_memory(tmp_path: Path, length: int) -> None:
    sep = Separator(_model(), device="cpu", shifts=1, batch_size=2)
    job = FileJob(_targets(SOURCES), WriteOptions(encoding="float32", clip_mode="none"))
    for a, b in _both(tmp_path, _song(tmp_path / "in.wav", length), sep, job):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1e-3, np.abs(a).max()))


def test_no_split_streams_the_output_of_one_pass(tmp_path: Path) -> None:
    sep = Separator(_model(), device="cpu", split=False, shifts=1, progress=True)
    job = FileJob(_targets(SOURCES), WriteOptions(encoding="float32", clip_mode="none"))
    for a, b in _both(tmp_path, _song(tmp_path / "in.wav", 2500), sep, job):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())


@pytest.mark.parametrize("length", [777, 2001, 4567])
def test_int16_bag_two_stems_minus_and_rescale(tmp_path: Path, length: int) -> None:
    sep = Separator(_model(bag=True), device="cpu", overlap=0.5)
    job = FileJob(_targets(["vocals", "no_vocals"]), WriteOptions(), "minus")
    src = _song(tmp_path / "in.wav", length, gain=2.0)  # loud: rescale divides by the peak
    for a, b in _both(tmp_path, src, sep, job):
        assert np.abs(a * 32768 - b * 32768).max() <= 1


@pytest.mark.parametrize("clip", ["clamp", "none"])
def test_resampled_input_kept_rate_and_flac(tmp_path: Path, clip: str) -> None:
    sep = Separator(_model(), device="cpu")
    job = FileJob(_targets(SOURCES, "flac"), WriteOptions("flac", "int16", clip), "add", True)
    src = _song(tmp_path / "in.wav", 2345, rate=22050)
    for a, b in _both(tmp_path, src, sep, job):
        assert a.shape[0] == 2345
        assert np.abs(a * 32768 - b * 32768).max() <= 1


def test_mp3_streamed_equals_one_shot_encoding(tmp_path: Path) -> None:
    sep = Separator(_model(), device="cpu")
    job = FileJob(_targets(["vocals"], "mp3"), WriteOptions("mp3"))
    src = _song(tmp_path / "in.wav", 44100)
    _both(tmp_path, src, sep, job)
    assert (tmp_path / "ref" / "vocals.mp3").read_bytes() == (
        tmp_path / "new" / "vocals.mp3"
    ).read_bytes()


@pytest.mark.integration
def test_separator_streams_other_formats_through_ffmpeg(tmp_path: Path) -> None:
    src = _song(tmp_path / "in.wav", 5000)
    m4a = tmp_path / "in.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-c:a", "aac", str(m4a)], check=True)
    sep = Separator(_model(), device="cpu")
    out = sep.separate_file_to(m4a, {"vocals": tmp_path / "o" / "vocals.wav"})
    data, rate = soundfile.read(str(out[0]))
    mix, _ = load_for_model(m4a, 44100, 2)
    assert rate == 44100 and data.shape == (mix.shape[-1], 2)


def test_undecodable_input_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(100))
    sep = Separator(_model(), device="cpu")
    with pytest.raises(AudioIOError, match="bad.wav"):
        sep.separate_file_to(bad, {"vocals": tmp_path / "o" / "vocals.wav"})
    assert not (tmp_path / "o").exists()


def test_sliding_memory_does_not_hold_the_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's buffers stay a block plus a few chunks long while a file streams through,
    and finished samples come out before the end of the track."""
    from demucs_rr.audio.blocks import BLOCK as FILE_BLOCK
    from demucs_rr.separate import passes as sliding

    seen: list[tuple[int, int]] = []
    real = sliding.SlidingApplier.push

    def spy(self: sliding.SlidingApplier, block: torch.Tensor) -> torch.Tensor:
        out = real(self, block)
        seen.append((self._buf.shape[-1], out.shape[-1]))
        return out

    monkeypatch.setattr(sliding.SlidingApplier, "push", spy)
    sep = Separator(_model(), device="cpu", batch_size=3)
    src = _song(tmp_path / "in.wav", 10 * FILE_BLOCK + 123)
    sep.separate_file_to(src, {"vocals": tmp_path / "vocals.wav"})
    assert len(seen) == 11
    assert max(buffered for buffered, _ in seen) < FILE_BLOCK + 8 * 400
    assert min(emitted for _, emitted in seen[1:-1]) >= FILE_BLOCK - 4 * 400


def test_streamed_and_in_memory_statistics_are_the_same(tmp_path: Path) -> None:
    """One statistics rule (float64, merged per block) for files and tensors."""
    from demucs_rr.separate.engine import normalize
    from demucs_rr.separate.to_files import mixture_stats

    rng = np.random.default_rng(3)
    wav = (0.2 * rng.standard_normal((300_001, 2)) + 0.01).astype(np.float32)
    path = tmp_path / "m.wav"
    soundfile.write(path, wav, 44100, subtype="FLOAT")
    stats = mixture_stats(path, 44100, 2)
    _, mean, std = normalize(torch.from_numpy(wav.T.copy()))
    assert (stats.length, stats.mean, stats.std) == (300_001, mean, std)
    mono = wav.astype(np.float64).mean(1)
    assert mean == pytest.approx(mono.mean(), rel=1e-12)
    assert std == pytest.approx(mono.std(ddof=1) + 1e-8, rel=1e-12)
