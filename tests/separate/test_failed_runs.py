"""A run that writes no stem leaves no folder behind: the output root and the folders of a track
appear with its stems, and go again when they fail."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.precision import cpu_has_bf16
from tests.helpers.audio import make_tone_mix
from tests.helpers.models import tiny_htdemucs

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "frac": save_package(FractionModel(SOURCES), folder / "frac.safetensors"),
        "ht": save_package(tiny_htdemucs(), folder / "ht.safetensors"),
    }


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    song = folder / "song.wav"
    sf.write(song, make_tone_mix(0.5).T.numpy(), 44100, subtype="PCM_16")
    text = folder / "notes.mp3"
    text.write_text("not audio\n" * 20)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    return {"song": song, "text": text, "empty": empty}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CASES = {
    "unknown model": ("song", ["-n", "no_such_model"]),
    "text file named .mp3": ("text", ["-n", "{frac}"]),
    "0-byte wav": ("empty", ["-n", "{frac}"]),
    "cuda without a GPU": ("song", ["-n", "{frac}", "-d", "cuda"]),
    "fp16 on the CPU": ("song", ["-n", "{frac}", "-d", "cpu", "--precision", "fp16"]),
    "unknown stem": ("song", ["-n", "{frac}", "--two-stems", "piano"]),
    "segment above the maximum": ("song", ["-n", "{ht}", "--segment", "2"]),
    "download offline": ("song", ["-n", "demucs"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failed_run_leaves_no_folder(
    case: str,
    models: dict[str, Path],
    inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEMUCS_RR_REMOTE", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("no_proxy", "*")
    which, options = CASES[case]
    options = [o.format(**{k: str(v) for k, v in models.items()}) for o in options]
    out = tmp_path / "separated"
    code = main(["separate", "-q", str(inputs[which]), "-o", str(out), *options])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), sorted(out.rglob("*"))


def test_a_track_that_fails_leaves_no_folder_while_the_batch_goes_on(
    models: dict[str, Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "separated"
    assert main(["separate", "-q", str(inputs["text"]), str(inputs["song"]), "-n",
                 str(models["frac"]), "-o", str(out)]) == 1  # fmt: skip
    assert sorted(p.name for p in (out / "frac").iterdir()) == ["song"]


def test_bf16_is_refused_without_folders_where_the_cpu_lacks_it(
    models: dict[str, Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    if cpu_has_bf16():
        pytest.skip("this CPU computes bf16")
    out = tmp_path / "separated"
    argv = ["separate", "-q", str(inputs["song"]), "-n", str(models["frac"]), "-o", str(out)]
    assert main([*argv, "--precision", "bf16"]) == 2
    assert not out.exists()
