"""Two different models whose files share a name never write under one ``{model}`` label."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.model_labels import RECORD_NAME
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    song = tmp_path / "song.wav"
    sf.write(song, make_tone_mix(0.3).T.numpy(), 44100, subtype="PCM_16")
    a = save_package(
        FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4]), tmp_path / "a" / "package.safetensors"
    )
    b = save_package(
        FractionModel(SOURCES, [0.4, 0.3, 0.2, 0.1]), tmp_path / "b" / "package.safetensors"
    )
    return song, a, b


def test_same_file_name_other_model_is_refused_before_separating(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song, a, b = setup
    out = tmp_path / "sep"
    assert main(["separate", "-q", str(song), "-n", str(a), "-o", str(out)]) == 0
    first = (out / "package" / "song" / "vocals.wav").read_bytes()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert main(["separate", "-q", str(song), "-n", str(b), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another model named 'package'" in err, err
        assert str(a.resolve()) in err and str(b.resolve()) in err
    assert (out / "package" / "song" / "vocals.wav").read_bytes() == first  # untouched
    # the same model again is fine; another label for the other model is fine
    assert main(["separate", "-q", str(song), "-n", str(a), "-o", str(out), "--overwrite"]) == 0
    template = "{model}-2/{track}/{stem}.{ext}"
    assert (
        main(["separate", "-q", str(song), "-n", str(b), "-o", str(out), "--filename", template])
        == 0
    )
    assert (out / RECORD_NAME).is_file()


def test_templates_without_model_are_not_checked(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    song, a, b = setup
    out = tmp_path / "sep"
    template = "{track}/{stem}.{ext}"
    assert (
        main(["separate", "-q", str(song), "-n", str(a), "-o", str(out), "--filename", template])
        == 0
    )
    argv = ["separate", "-q", str(song), "-n", str(b), "-o", str(out), "--filename", template]
    assert main([*argv, "--overwrite"]) == 0  # the stem files say which model: the user's choice
    assert not (out / RECORD_NAME).exists()
