"""``separate`` on real songs from ../shared/eval-data (read at run time, never copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel

SOURCES = ["drums", "bass", "other", "vocals"]


def songs(eval_data: Path) -> list[Path]:
    return sorted((eval_data / "full-songs" / "librosa-data").glob("*.ogg"))


def _check_fraction_stems(files: list[Path], tmp_path: Path) -> None:
    """Stems of a lossless fraction split keep the input's frames and rate and sum to it."""
    model = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=10 * 44100, crop=101)
    pkg = save_package(model, tmp_path / "frac.safetensors")
    out = tmp_path / "out"
    assert main(["separate", "-q", *map(str, files), "-n", str(pkg), "-o", str(out)]) == 0
    for song in files:
        mix, rate = sf.read(song, dtype="float32", always_2d=True)
        stems = {}
        for stem in SOURCES:
            info = sf.info(out / "frac" / song.stem / f"{stem}.wav")
            assert info.samplerate == rate and info.frames == len(mix) and info.channels == 2
            stems[stem], _ = sf.read(out / "frac" / song.stem / f"{stem}.wav", dtype="float32")
        total = sum(stems.values())
        assert np.abs(total - mix).max() <= 4 / 32767 + 1e-6, song.name


def test_fraction_stems_of_a_real_song_sum_to_mixture(eval_data, tmp_path):
    """Smoke run of the default suite: the shortest song (46 s)."""
    files = [f for f in songs(eval_data) if "Hungarian_Dance" in f.name]
    assert len(files) == 1
    _check_fraction_stems(files, tmp_path)


@pytest.mark.slow
def test_fraction_stems_of_all_real_songs_sum_to_mixture(eval_data, tmp_path):
    files = songs(eval_data)
    assert len(files) == 4
    _check_fraction_stems(files, tmp_path)


def _tiny_demucs_package(tmp_path: Path) -> Path:
    from demucs_rr.models.demucs_v2 import Demucs

    torch.manual_seed(0)
    return save_package(Demucs(SOURCES, channels=4), tmp_path / "tiny.safetensors")


def _check_duration(files: list[Path], out: Path) -> None:
    for song in files:
        info = sf.info(song)
        for stem in SOURCES:
            got = sf.info(out / "tiny" / song.stem / f"{stem}.flac")
            assert (got.samplerate, got.frames, got.channels) == (info.samplerate, info.frames, 2)


@pytest.mark.slow
def test_tiny_demucs_on_a_real_song_batched(eval_data, tmp_path):
    files = [f for f in songs(eval_data) if "Vibe_Ace" in f.name]
    out = tmp_path / "out"
    argv = [
        "separate",
        "-q",
        str(files[0]),
        "-n",
        str(_tiny_demucs_package(tmp_path)),
        "-o",
        str(out),
        "--flac",
        "--segment",
        "10",
        "-b",
        "2",
    ]
    assert main(argv) == 0
    _check_duration(files, out)


@pytest.mark.slow
def test_tiny_demucs_on_all_real_songs(eval_data, tmp_path):
    files = songs(eval_data)
    out = tmp_path / "out"
    argv = [
        "separate",
        "-q",
        *map(str, files),
        "-n",
        str(_tiny_demucs_package(tmp_path)),
        "-o",
        str(out),
        "--flac",
    ]
    assert main(argv) == 0
    _check_duration(files, out)
