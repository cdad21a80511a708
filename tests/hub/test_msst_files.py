"""MSST checkpoints and configs: safe reading, wrappers, refusals, the config beside the file."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.msst import config_beside, load_msst, read_checkpoint, read_msst_config
from tests.conftest import SHARED
from tests.helpers.checks import assert_matches

MSST = SHARED / "fixtures" / "msst"


@pytest.fixture(scope="module")
def case() -> Path:
    """The BS-RoFormer vocals fixture (config.yaml, model.ckpt, forward.npz)."""
    folder = MSST / "bs_roformer_vocals"
    if not folder.is_dir():
        pytest.skip(f"MSST parity fixtures not found at {MSST} (present in CI only)")
    return folder


def _forward(model: torch.nn.Module, case: Path) -> None:
    data = np.load(case / "forward.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(data["x"]))
    assert_matches(out.numpy(), data["y"], "forward")


def test_checkpoint_and_config_load_and_match_the_reference(case: Path) -> None:
    loaded = load_msst(case / "model.ckpt", case / "config.yaml")
    _forward(loaded.build(), case)


@pytest.mark.parametrize("wrapper", ["state_dict", "state", "model_state_dict"])
def test_wrapped_checkpoints_load(case: Path, tmp_path: Path, wrapper: str) -> None:
    state = torch.load(case / "model.ckpt", weights_only=True)
    torch.save({wrapper: state, "epoch": 3}, tmp_path / "m.ckpt")
    shutil.copy(case / "config.yaml", tmp_path / "m.yaml")  # found beside the checkpoint
    _forward(load_msst(tmp_path / "m.ckpt").build(), case)


class _Payload:
    """Unpickling this would create the file ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_a_checkpoint_with_a_payload_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-the-file"
    with open(tmp_path / "evil.ckpt", "wb") as file:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, file)
    with pytest.raises(PackageFormatError, match="Python objects other than tensors") as err:
        read_checkpoint(tmp_path / "evil.ckpt")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    (tmp_path / "raw.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PackageFormatError):
        read_checkpoint(tmp_path / "raw.ckpt")
    assert not marker.exists()


def test_config_tags_other_than_tuple_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  bands: !!python/tuple [1, 2]\ntraining: {model_type: scnet}\n")
    assert read_msst_config(good)["model"]["bands"] == [1, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(PackageFormatError, match="python/object/apply:os.system is not allowed"):
        read_msst_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(PackageFormatError, match="mapping"):
        read_msst_config(tmp_path / "list.yaml")


def test_unknown_model_type_and_key_are_named(case: Path, tmp_path: Path) -> None:
    text = (case / "config.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text.replace("model_type: bs_roformer", "model_type: htdemo"))
    with pytest.raises(PackageFormatError, match="'htdemo' is not a family"):
        load_msst(case / "model.ckpt", tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(text.replace("  dim: 32\n", "  dim: 32\n  wings: 2\n"))
    with pytest.raises(PackageFormatError, match="model.wings"):
        load_msst(case / "model.ckpt", tmp_path / "b.yaml")


def test_weights_that_do_not_fit_the_config_are_refused_before_allocation(
    case: Path, tmp_path: Path
) -> None:
    text = (case / "config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text.replace("  dim: 32\n", "  dim: 4096\n"))
    with pytest.raises(PackageFormatError, match="shape mismatch"):
        load_msst(case / "model.ckpt", tmp_path / "c.yaml")


def test_a_missing_config_says_where_it_was_looked_for(case: Path, tmp_path: Path) -> None:
    shutil.copy(case / "model.ckpt", tmp_path / "voc.ckpt")
    with pytest.raises(ModelNotFoundError, match="--model-config CONFIG.yaml.*voc.yaml"):
        load_msst(tmp_path / "voc.ckpt")
    (tmp_path / "voc.yml").write_text("x: 1\n")
    assert config_beside(tmp_path / "voc.ckpt") == tmp_path / "voc.yml"
