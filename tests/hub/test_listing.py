"""A training run's folder as ``--repo``: its config is no bag, its checkpoint is no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.cli import main
from demucs_rr.errors import PackageFormatError
from demucs_rr.hub.loader import list_models, load_model
from demucs_rr.train.checkpoint import save_checkpoint


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("epochs: 2\nmodel:\n  name: tiny\ndset:\n  name: synthetic\n")
    save_checkpoint(run / "checkpoint.th", {"epoch": 1, "model": {"w": torch.ones(2)}})
    return run


def test_models_list_of_a_run_folder(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row for row in list_models(run_dir) if row["path"].startswith(str(run_dir))]
    assert [(row["name"], row["class"]) for row in rows] == [("checkpoint", "checkpoint")]
    assert f"demucs-rr export {run_dir}" in rows[0]["description"]
    assert main(["models", "list", "--repo", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "config" not in captured.out


def test_separating_with_a_checkpoint_points_to_export(run_dir: Path) -> None:
    with pytest.raises(PackageFormatError, match="training checkpoint") as err:
        load_model(run_dir / "checkpoint.th")
    assert f"demucs-rr export {run_dir}" in str(err.value) and "\n" not in str(err.value)
