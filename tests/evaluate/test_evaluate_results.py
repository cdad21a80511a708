"""Evaluation results never mix silently: per-dataset folders, recorded dataset and settings,
announced reuse, refused mismatches, distinct leaderboard rows, and one MUSDB18 listing per run."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.data import musdb as data_musdb
from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.cli import (
    add_evaluate_arguments,
    add_leaderboard_arguments,
    run_evaluate,
    run_leaderboard,
)
from demucs_rr.evaluate.groups import load_results
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.sources import MUSDB_SOURCES

RATE = 8000
EXCERPT = "Music Delta - 80s Rock"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_tracks(
    folder: Path, names: tuple[str, ...], stems: tuple[str, ...], mixture: bool = False
) -> Path:
    """Two-second noise tracks at 8 kHz: one wav per stem (and the mixture when asked)."""
    rng = np.random.default_rng(len(names))
    for name in names:
        waves = {s: 0.1 * rng.standard_normal((RATE * 2, 2)) for s in stems}
        if mixture:
            waves["mixture"] = sum(waves.values())
        for stem, wave in waves.items():
            (folder / name).mkdir(parents=True, exist_ok=True)
            sf.write(folder / name / f"{stem}.wav", wave, RATE, subtype="FLOAT")
    return folder


def _package(tmp_path: Path, name: str = "fraction", rate: int = RATE) -> str:
    model = FractionModel(
        list(MUSDB_SOURCES), [0.4, 0.3, 0.2, 0.1], samplerate=rate, segment_length=rate
    )
    return str(save_package(model, tmp_path / f"{name}.safetensors"))


def _evaluate(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args([*argv, "--sdr-only", "--no-plot", "-q", "-d", "cpu"]))


def _leaderboard(*argv: str) -> list[dict[str, str]]:
    """The CSV rows of ``leaderboard ARGV --no-reference``, by column name."""
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    csv_path = Path(argv[0]).parent / "board.csv"
    assert (
        run_leaderboard(parser.parse_args([*argv, "--no-reference", "--csv", str(csv_path)])) == 0
    )
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_second_run_reuses_and_announces(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _write_tracks(tmp_path / "data", ("a", "b"), ("drums", "bass"))
    model, out = _package(tmp_path), tmp_path / "out"
    assert _evaluate("-n", model, "--folder", str(data), "-o", str(out)) == 0
    assert "reusing" not in capsys.readouterr().err
    record = json.loads((out / "test" / "a.json").read_text())["demucs_rr"]
    assert record["dataset"] == {"kind": "folder", "root": str(data.resolve()), "subset": "test"}
    settings = record["settings"]
    assert (settings["model"], settings["shifts"], settings["overlap"]) == ("fraction", 0, 0.25)
    assert settings["segment"] == RATE and settings["sdr_only"] is True
    assert len(settings["model_signature"]) == 16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == record["dataset"] and summary["tracks"] == 2
    assert "Dataset: folder test" in (out / "summary.md").read_text()
    assert _evaluate("-n", model, "--folder", str(data), "-o", str(out), "-b", "4") == 0
    assert f"reusing 2 earlier results from {out}" in capsys.readouterr().err


def test_mismatching_settings_are_refused(tmp_path: Path) -> None:
    data = _write_tracks(tmp_path / "data", ("a",), ("drums", "bass"))
    other = _write_tracks(tmp_path / "other", ("a",), ("drums", "bass"))
    model, out = _package(tmp_path), str(tmp_path / "out")
    assert _evaluate("-n", model, "--folder", str(data), "-o", out) == 0
    with pytest.raises(
        ConfigError,
        match=r"shifts 0 there, 1 now\); pass another --out, or "
        r"delete .* to recompute",
    ):
        _evaluate("-n", model, "--folder", str(data), "-o", out, "--shifts", "1")
    with pytest.raises(ConfigError, match=r"dataset root '.*data' there, '.*other' now"):
        _evaluate("-n", model, "--folder", str(other), "-o", out)
    (tmp_path / "v2").mkdir()
    retrained = save_package(
        FractionModel(
            list(MUSDB_SOURCES), [0.1, 0.2, 0.3, 0.4], samplerate=RATE, segment_length=RATE
        ),
        tmp_path / "v2" / "fraction.safetensors",
    )
    with pytest.raises(ConfigError, match="model_signature '[0-9a-f]{16}' there"):
        _evaluate("-n", str(retrained), "--folder", str(data), "-o", out)
    museval_json = Path(out) / "test" / "b.json"
    museval_json.write_text(json.dumps({"targets": []}))
    with pytest.raises(ConfigError, match="b.json: no dataset and settings recorded"):
        _evaluate("-n", model, "--folder", str(data), "-o", out)


def test_folder_and_musdb_results_go_to_separate_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _write_tracks(tmp_path / "songs", ("one",), ("drums", "bass"))
    hq = _write_tracks(tmp_path / "hq" / "test", ("t1", "t2"), MUSDB_SOURCES, mixture=True)
    (tmp_path / "hq" / "train").mkdir()
    model = _package(tmp_path)
    assert _evaluate("-n", model, "--folder", str(folder)) == 0
    assert _evaluate("-n", model, "--musdb", str(hq.parent), "--is-wav") == 0
    base = Path("evaluation") / "fraction"
    assert sorted(p.relative_to(base).as_posix() for p in base.glob("*/*/*.json")) == [
        "folder-songs-test/test/one.json",
        "musdb-hq-test/test/t1.json",
        "musdb-hq-test/test/t2.json",
    ]
    assert "reusing" not in capsys.readouterr().err
    rows = _leaderboard("evaluation")
    assert [(r["model"], r["dataset"], r["tracks"]) for r in rows] == [
        ("fraction", "folder-songs-test", "1"),
        ("fraction", "musdb-hq-test", "2"),
    ]
    assert [r["rank"] for r in rows] == ["1", "1"]  # ranked within each dataset


def test_leaderboard_rows_are_told_apart(tmp_path: Path) -> None:
    data = _write_tracks(tmp_path / "data", ("a",), ("drums", "bass"))
    model = _package(tmp_path)
    outs = [tmp_path / "runs" / name for name in ("base", "shifted", "long")]
    outs += [tmp_path / "x" / "same", tmp_path / "y" / "same"]
    for out, extra in zip(outs, ([], ["--shifts", "1"], ["--segment", "2"], [], []), strict=True):
        assert _evaluate("-n", model, "--folder", str(data), "-o", str(out), *extra) == 0
    names = [r["model"] for r in _leaderboard(*map(str, outs))]
    assert len(set(names)) == 5
    assert {"fraction (base)", "fraction (shifted)", "fraction (long)"} <= set(names)
    assert f"fraction ({outs[3]})" in names and f"fraction ({outs[4]})" in names


def test_leaderboard_refuses_a_folder_that_mixes_results(tmp_path: Path) -> None:
    data = _write_tracks(tmp_path / "data", ("a", "b"), ("drums", "bass"))
    model = _package(tmp_path)
    for out, extra in ((tmp_path / "plain", []), (tmp_path / "shifted", ["--shifts", "1"])):
        assert _evaluate("-n", model, "--folder", str(data), "-o", str(out), *extra) == 0
    shutil.copy(tmp_path / "shifted" / "test" / "b.json", tmp_path / "plain" / "test" / "b.json")
    with pytest.raises(ConfigError, match=r"mixes results made differently \(b.json: shifts"):
        load_results(tmp_path / "plain")


@pytest.mark.integration
def test_musdb_evaluation_lists_the_database_once(
    eval_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Three compressed tracks: one listing and one decode per track, never a database per
    track; a second run decodes nothing and reuses every result."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed: compressed MUSDB18 cannot be decoded")
    musdb = pytest.importorskip("musdb")
    root = tmp_path / "musdb"
    (root / "test").mkdir(parents=True)
    for name in ("A", "B", "C"):
        (root / "test" / f"{name}.stem.mp4").symlink_to(
            eval_data / "musdb18-stems" / "train" / f"{EXCERPT}.stem.mp4"
        )
    counts = {"db": 0, "listing": 0, "ffmpeg": 0}

    class CountingDB(musdb.DB):
        def __init__(self, *args: object, **kwargs: object) -> None:
            counts["db"] += 1
            super().__init__(*args, **kwargs)

    real_decode, real_run = data_musdb.decode_stems, subprocess.run

    def decode(*args: object, **kwargs: object) -> Path:
        counts["listing"] += 1
        return real_decode(*args, **kwargs)

    def run(command: list[str], *args: object, **kwargs: object) -> object:
        counts["ffmpeg"] += command[0] == "ffmpeg"
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(musdb, "DB", CountingDB)
    monkeypatch.setattr(data_musdb, "decode_stems", decode)
    monkeypatch.setattr(data_musdb.subprocess, "run", run)
    model, out = _package(tmp_path, rate=44100), tmp_path / "out"
    assert _evaluate("-n", model, "--musdb", str(root), "-o", str(out)) == 0
    assert counts["db"] <= 1 and counts["listing"] == 1 and counts["ffmpeg"] == 3
    assert sorted(p.name for p in (out / "test").iterdir()) == ["A.json", "B.json", "C.json"]
    assert _evaluate("-n", model, "--musdb", str(root), "-o", str(out)) == 0
    assert counts["db"] <= 1 and counts["listing"] == 2 and counts["ffmpeg"] == 3
    assert f"reusing 3 earlier results from {out}" in capsys.readouterr().err
