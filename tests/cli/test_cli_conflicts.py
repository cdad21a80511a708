"""Usage mistakes are refused in one line before any work: contradictory options, argparse
errors of every subcommand, non-finite durations and devices that are not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=8000)
    return save_package(model, tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture
def song(tmp_path: Path) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, make_tone_mix(0.3).T.numpy(), 44100, subtype="PCM_16")
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "error" in err, err
    return err


SEPARATE_CONFLICTS = [
    (["--int24", "--mp3"], "--int24 cannot be used with --mp3"),
    (["--float32", "--mp3"], "--float32 cannot be used with --mp3"),
    (["--float32", "--flac"], "flac cannot store float32"),
    (["--two-stems", "vocals", "--stems", "bass"], "--two-stems cannot be used with --stems"),
    (["--mp3-bitrate", "128"], "--mp3-bitrate applies only with --mp3"),
    (["--flac", "--mp3-preset", "5"], "--mp3-preset applies only with --mp3"),
    (["--block-size", "512"], "--block-size applies only with --stream"),
    (["--other-method", "minus"], "--other-method applies only with --two-stems"),
    (["--stems", "bass", "--other-method", "none"], "--other-method applies only"),
    (["--stream", "--shifts", "2"], "--shifts cannot be used with --stream"),
    (["--stream", "--segment", "2"], "--segment cannot be used with --stream"),
    (["--stream", "--overlap", "0.5"], "--overlap cannot be used with --stream"),
    (["--stream", "--no-split"], "--no-split cannot be used with --stream"),
    (["--stream", "-b", "4"], "--batch-size cannot be used with --stream"),
    (["--stream", "--precision", "bf16"], "--precision cannot be used with --stream"),
    (["--no-split", "--segment", "2"], "--segment cannot be used with --no-split"),
    (["--no-split", "--overlap", "0.1"], "--overlap cannot be used with --no-split"),
    (["--seed", "3"], "--seed applies only with --shifts"),
]


@pytest.mark.parametrize(("extra", "message"), SEPARATE_CONFLICTS)
def test_separate_conflicts_refused_before_any_work(
    extra: list[str], message: str, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the model is looked up (a missing one is not reported) or --out made."""
    out = tmp_path / "out"
    argv = ["separate", "-q", str(song), "-n", "no_such_model", "-o", str(out), *extra]
    assert main(argv) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_options_that_belong_together_are_accepted(
    package: Path, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["separate", "-q", str(song), "-n", str(package), "--filename", "{stem}.{ext}"]
    runs = {
        "mp3": ["--mp3", "--mp3-bitrate", "96", "--mp3-preset", "7", "--stems", "bass"],
        "two": ["--two-stems", "vocals", "--other-method", "minus"],
        "shifts": ["--shifts", "2", "--seed", "5", "--overlap", "0.5", "--segment", "0.1"],
        "defaults": [],
    }
    for name, extra in runs.items():
        assert main([*base, "-o", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mp3").iterdir()) == ["bass.mp3"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    assert len(list((tmp_path / "shifts").iterdir())) == len(SOURCES)
    assert len(list((tmp_path / "defaults").iterdir())) == len(SOURCES)


EVALUATE_CONFLICTS = [
    (["--backend", "museval", "--solver", "lu"], "--solver cannot be used with --backend museval"),
    (["--backend", "museval", "--sdr-only"], "--sdr-only cannot be used with --backend museval"),
    (["--is-wav"], "--is-wav applies only with --musdb"),
    (["--no-split", "--segment", "3"], "--segment cannot be used with --no-split"),
    (["--no-split", "--overlap", "0.5"], "--overlap cannot be used with --no-split"),
]


@pytest.mark.parametrize(("extra", "message"), EVALUATE_CONFLICTS)
def test_evaluate_conflicts(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--folder", str(tmp_path / "none"), "-n", "no_such_model", *extra]
    assert main(argv) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["-v"],
        ["separate"],
        ["separate", "a.wav", "--other-method", "sum"],
        ["separate", "a.wav", "--mp3-preset", "9"],
        ["separate", "a.wav", "--nope"],
        ["train", "--nope"],
        ["train", "--resume", "--restart"],
        ["evaluate"],
        ["evaluate", "--folder", "x", "--backend", "nope"],
        ["evaluate", "--musdb", "x", "--folder", "y"],
        ["leaderboard"],
        ["leaderboard", "x", "--csv"],
        ["export"],
        ["export", "x", "--nope"],
        ["serve", "--port", "x"],
        ["serve", "--workers", "0"],
        ["models", "nope"],
        ["models", "convert"],
        ["models", "convert", "a"],
        ["models", "list", "--repo"],
        ["doctor", "extra"],
    ],
)
def test_usage_errors_are_one_line_everywhere(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err, (argv, err)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e30", "0"])
@pytest.mark.parametrize("command", ["separate", "evaluate"])
def test_segment_must_be_finite(
    value: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--segment nan`` or ``inf`` used to reach int() and end in a traceback."""
    data = ["a.wav"] if command == "separate" else ["--folder", "x"]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *data, f"--segment={value}"])
    assert exit_info.value.code == 2
    assert "argument --segment: must be a positive number" in one_error_line(capsys)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "gpu"])
def test_missing_device_is_one_line(
    device: str,
    song: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "out"
    assert main(["separate", "-q", str(song), "-d", device, "-o", str(out)]) == 2
    err = one_error_line(capsys)
    assert f"device {device!r}" in err and ("use cpu" in err or "not one of" in err), err
    assert main(["evaluate", "--folder", str(tmp_path), "--no-plot", "-d", device]) == 2
    assert f"device {device!r}" in one_error_line(capsys)
