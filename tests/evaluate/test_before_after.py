"""``evaluate --before DIR``: a model and its fine-tuned version (one more stem) on the same
tracks give a before/after table per stem."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from demucs_rr.cli import main
from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.before_after import before_after_table
from demucs_rr.evaluate.results import result_files
from demucs_rr.evaluate.trackjson import read_track_json
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel

FOUR = ["drums", "bass", "other", "vocals"]
RATE = 8000


def _evaluate(model: Path, root: Path, out: Path, *extra: str) -> int:
    argv = ["evaluate", "-n", str(model), "--folder", str(root), "--sdr-only", "--no-plot"]
    return main([*argv, "-o", str(out), *extra])


def _row(table: str, stem: str) -> list[str]:
    line = next(r for r in table.splitlines() if r.startswith(f"| {stem} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_before_after_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_synthetic_dataset(
        tmp_path / "songs", {"test": 2}, seconds=2.0, samplerate=RATE, sources=[*FOUR, "piano"]
    )
    base = save_package(
        FractionModel(FOUR, [0.25] * 4, samplerate=RATE), tmp_path / "b.safetensors"
    )
    tuned = save_package(
        FractionModel([*FOUR, "piano"], [0.1, 0.2, 0.3, 0.2, 0.2], samplerate=RATE),
        tmp_path / "f.safetensors",
    )
    assert _evaluate(base, root, tmp_path / "before") == 0
    capsys.readouterr()
    assert _evaluate(tuned, root, tmp_path / "after", "--before", str(tmp_path / "before")) == 0
    table = capsys.readouterr().out.split("before: ", 1)[1]
    assert "2 tracks in common" in table
    for stem in [*FOUR, "piano"]:
        cells = _row(table, stem)
        for side, folder in ((0, "before"), (1, "after")):
            scores = [read_track_json(p) for p in result_files(tmp_path / folder)]
            if stem not in scores[0].targets:
                assert cells[side] == cells[side + 3] == cells[2] == cells[5] == "—"
                continue
            sdr = statistics.median(s.medians()[stem]["SDR"] for s in scores)
            nsdr = statistics.fmean(s.nsdr[stem] for s in scores)
            assert float(cells[side]) == pytest.approx(sdr, abs=0.005)
            assert float(cells[side + 3]) == pytest.approx(nsdr, abs=0.005)
        if stem != "piano":
            assert float(cells[2]) == pytest.approx(float(cells[1]) - float(cells[0]), abs=0.011)
    assert not math.isnan(float(_row(table, "All (stems of both)")[2]))


def test_before_after_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = save_package(
        FractionModel(FOUR, [0.25] * 4, samplerate=RATE), tmp_path / "b.safetensors"
    )
    one = make_synthetic_dataset(tmp_path / "one", {"test": 1}, seconds=1.0, samplerate=RATE)
    two = make_synthetic_dataset(tmp_path / "two", {"test": 1}, seconds=1.0, samplerate=RATE)
    assert _evaluate(base, one, tmp_path / "a") == 0
    assert _evaluate(base, two, tmp_path / "b") == 0
    with pytest.raises(ConfigError, match="score different datasets"):
        before_after_table(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConfigError, match="no evaluation results in"):
        before_after_table(tmp_path / "one", tmp_path / "b")
    capsys.readouterr()
    assert _evaluate(base, one, tmp_path / "c", "--before", str(tmp_path / "none")) == 2
    assert "--before" in capsys.readouterr().err and not (tmp_path / "c").exists()
