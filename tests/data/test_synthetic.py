"""The procedural 4-stem dataset: determinism, exact mixtures, distinct stems, CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile

from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.errors import ConfigError
from demucs_rr.sources import MUSDB_SOURCES as STEMS

RATE = 22050
SPLITS = {"train": 2, "valid": 1}
TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_synthetic_dataset.py"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), SPLITS, seconds=3.0, samplerate=RATE, seed=0
    )


def test_layout_and_determinism(synth: Path, tmp_path: Path) -> None:
    names = {"mixture", *STEMS}
    tracks = sorted(p for p in synth.glob("*/*") if p.is_dir())
    assert [p.relative_to(synth).as_posix() for p in tracks] == [
        "train/train-000",
        "train/train-001",
        "valid/valid-000",
    ]
    for track in tracks:
        assert {p.stem for p in track.glob("*.wav")} == names
    again = make_synthetic_dataset(tmp_path / "same", SPLITS, seconds=3.0, samplerate=RATE, seed=0)
    assert _files(again) == _files(synth)
    other = make_synthetic_dataset(tmp_path / "other", SPLITS, seconds=3.0, samplerate=RATE, seed=1)
    first, second = _files(other), _files(synth)
    assert first.keys() == second.keys()
    assert all(first[key] != second[key] for key in first)


def _read(track: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ("mixture", *STEMS):
        data, rate = soundfile.read(track / f"{name}.wav", dtype="float32")
        assert rate == RATE and data.shape == (3 * RATE, 2)
        out[name] = data
    return out


def test_mixture_is_exact_sum_and_peak(synth: Path) -> None:
    for track in sorted(synth.glob("*/*-*")):
        wavs = _read(track)
        total = sum(wavs[name] for name in STEMS)
        np.testing.assert_array_equal(total, wavs["mixture"])
        assert max(np.abs(w).max() for w in wavs.values()) <= 0.9 + 1e-4
        assert np.abs(wavs["mixture"]).max() > 0.85  # scaled to the peak, not quieter


def _band_fraction(x: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(x.mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(x.shape[0], 1 / RATE)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_stems_are_audible_and_spectrally_distinct(synth: Path) -> None:
    for track in sorted(synth.glob("*/*-*")):
        wavs = _read(track)
        for name in STEMS:
            assert np.sqrt((wavs[name] ** 2).mean()) > 0.01, (track.name, name)
        assert _band_fraction(wavs["bass"], 0, 150) > 0.9
        assert _band_fraction(wavs["other"], 0, 180) < 0.01
        assert _band_fraction(wavs["vocals"], 0, 145) < 0.01
        assert _band_fraction(wavs["drums"], 2000, RATE / 2) > 0.05  # hi-hats and snare
        for name in ("bass", "other", "vocals"):
            assert _band_fraction(wavs[name], 2000, RATE / 2) < 0.2
        # vocals pause between phrases, the chords do not
        quiet = {name: np.mean(np.abs(wavs[name]).max(axis=1) < 1e-3) for name in STEMS}
        assert quiet["vocals"] > 0.05 and quiet["other"] < 0.02


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive"):
        make_synthetic_dataset(tmp_path, {"train": 1}, seconds=0)
    with pytest.raises(ConfigError, match=">= 0"):
        make_synthetic_dataset(tmp_path, {"train": -1})


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main(
        [
            str(tmp_path),
            "--train",
            "1",
            "--valid",
            "1",
            "--test",
            "0",
            "--seconds",
            "0.5",
            "--samplerate",
            "8000",
            "--seed",
            "3",
        ]
    )
    assert code == 0 and "wrote 2 tracks" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "valid"]
    info = soundfile.info(tmp_path / "valid" / "valid-000" / "vocals.wav")
    assert (info.samplerate, info.frames, info.channels) == (8000, 4000, 2)
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path), "--seconds", "-1"])
    assert exit_info.value.code == 2
