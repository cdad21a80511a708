"""MSST checkpoints through the one loader: files, --model-config, --repo folders, released
names with their sha256 pinned on the first download, models list and convert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.errors import DownloadError, ModelNotFoundError
from demucs_rr.hub import msst_releases
from demucs_rr.hub.fetch import PINS_NAME
from demucs_rr.hub.loader import list_models, load_model
from demucs_rr.hub.msst_releases import MSST_RELEASES, MsstRelease
from demucs_rr.separate.api import Separator
from tests.conftest import SHARED
from tests.hub.test_pretrained import Server

CASE = SHARED / "fixtures" / "msst" / "bs_roformer_vocals"


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """The fixture's vocals checkpoint copied as ``voc.ckpt`` (config kept apart)."""
    if not CASE.is_dir():
        pytest.skip(f"MSST parity fixtures not found at {CASE} (present in CI only)")
    (tmp_path / "models").mkdir()
    shutil.copy(CASE / "model.ckpt", tmp_path / "models" / "voc.ckpt")
    shutil.copy(CASE / "config.yaml", tmp_path / "config.yaml")
    return tmp_path / "models" / "voc.ckpt"


@pytest.fixture
def song(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "song.wav"
    sf.write(path, 0.1 * rng.standard_normal((44100, 2)).astype(np.float32), 44100)
    return path


def _forward(model: torch.nn.Module) -> torch.Tensor:
    x = torch.from_numpy(np.load(CASE / "forward.npz")["x"])
    with torch.inference_mode():
        out: torch.Tensor = model(x)
    return out


def test_model_config_given_beside_or_refused(ckpt: Path, tmp_path: Path) -> None:
    reference = torch.from_numpy(np.load(CASE / "forward.npz")["y"])
    model = load_model(ckpt, config=tmp_path / "config.yaml")
    torch.testing.assert_close(_forward(model), reference, rtol=0, atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="--model-config"):
        load_model(ckpt)
    shutil.copy(tmp_path / "config.yaml", ckpt.with_suffix(".yaml"))
    assert torch.equal(_forward(load_model(ckpt)), _forward(model))
    assert torch.equal(_forward(load_model("voc", repo=ckpt.parent)), _forward(model))
    listed = [row for row in list_models(ckpt.parent) if row["path"].startswith(str(ckpt.parent))]
    assert [(row["name"], row["class"]) for row in listed] == [("voc", "BSRoformer")]
    with pytest.raises(ModelNotFoundError, match="goes with an MSST .ckpt"):
        load_model("htdemucs", config=tmp_path / "config.yaml")


def test_separate_cli_and_api_take_the_pair(ckpt: Path, tmp_path: Path, song: Path) -> None:
    config = tmp_path / "config.yaml"
    argv = ["separate", "-q", str(song), "-n", str(ckpt), "--model-config", str(config)]
    assert main([*argv, "-o", str(tmp_path / "out"), "--filename", "{stem}.{ext}"]) == 0
    written, _ = sf.read(tmp_path / "out" / "vocals.wav", dtype="float32")
    sep = Separator(ckpt, model_config=config)
    _, stems = sep.separate_file(song)
    np.testing.assert_allclose(written, stems["vocals"].numpy().T, atol=2 / 2**15)


def test_models_convert_keeps_the_network(ckpt: Path, tmp_path: Path) -> None:
    dst = tmp_path / "voc.safetensors"
    config = str(tmp_path / "config.yaml")
    assert main(["models", "convert", str(ckpt), str(dst), "--model-config", config]) == 0
    assert torch.equal(_forward(load_model(dst)), _forward(load_model(ckpt, config=config)))


@pytest.fixture
def released(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A released name served by a local HTTP server (checkpoint and config by URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))
    server = Server()
    server.handler.files["/r/voc.ckpt"] = ckpt.read_bytes()
    server.handler.files["/r/voc_config.yaml"] = (tmp_path / "config.yaml").read_bytes()
    release = MsstRelease(
        "tiny_voc", "bs_roformer", f"{server.url}/r/voc.ckpt", f"{server.url}/r/voc_config.yaml",
        "tiny vocals", 1.0, "nothing", None, "noise",
    )  # fmt: skip
    monkeypatch.setitem(MSST_RELEASES, "tiny_voc", release)
    yield release, server
    server.stop()


def test_released_name_pins_its_sha256_and_checks_it(
    released: tuple[MsstRelease, Server], capsys: pytest.CaptureFixture[str]
) -> None:
    release, server = released
    assert main(["models", "list"]) == 0
    assert "sha256 pinned on first download" in capsys.readouterr().out
    first = _forward(load_model("tiny_voc", progress=False))
    pins = json.loads((release.checkpoint_path.parent / PINS_NAME).read_text())
    assert set(pins) == {"voc.ckpt", "voc.yaml"}
    count = len(server.handler.requests)
    assert torch.equal(_forward(load_model("tiny_voc", progress=False)), first)
    assert len(server.handler.requests) == count  # the cache is used, nothing downloaded
    assert main(["models", "list"]) == 0
    assert f"sha256 pinned {pins['voc.ckpt'][:16]}" in capsys.readouterr().out
    data = bytearray(release.checkpoint_path.read_bytes())
    data[-100] ^= 1  # a file changed after its first download
    release.checkpoint_path.write_bytes(bytes(data))
    with pytest.raises(DownloadError) as err:
        load_model("tiny_voc", progress=False)
    assert "\n" not in str(err.value) and "voc.ckpt" in str(err.value)


def test_released_name_files_from_a_repo_folder(
    released: tuple[MsstRelease, Server], ckpt: Path, tmp_path: Path
) -> None:
    release, server = released
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ckpt, repo / "voc.ckpt")
    shutil.copy(tmp_path / "config.yaml", repo / "voc_config.yaml")
    model = load_model("tiny_voc", repo=repo, progress=False)
    assert server.handler.requests == [] and not release.checkpoint_path.exists()
    assert torch.equal(_forward(model), _forward(load_model(ckpt, config=repo / "voc_config.yaml")))
    assert msst_releases.load_msst_release(release, repo).name == "tiny_voc"
