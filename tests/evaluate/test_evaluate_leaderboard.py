"""Scoring other tools' stems (``evaluate --estimates``), both SDR definitions labelled,
training-data overlap kept out of rankings, leaderboard outputs, and ``--compare``.

Stems are noise at 8 kHz, so every expected score is computed independently here from the
samples written."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.data.trackset import open_tracks
from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.cli import (
    add_evaluate_arguments,
    add_leaderboard_arguments,
    run_evaluate,
    run_leaderboard,
)
from demucs_rr.evaluate.conventions import GLOBAL_EPS
from demucs_rr.evaluate.metrics import TrackScores, framewise_sdr, nsdr
from demucs_rr.evaluate.run import EvalOptions, run_evaluation
from demucs_rr.evaluate.stats import wilcoxon
from demucs_rr.evaluate.trackjson import read_track_json
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.sources import MUSDB_SOURCES

RATE = 8000
STEMS = list(MUSDB_SOURCES)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _references(root: Path, names: tuple[str, ...], seconds: float = 3.0) -> Path:
    """MUSDB18-HQ layout ``root/test/<track>/<stem>.wav`` (16-bit noise)."""
    rng = np.random.default_rng(0)
    for name in names:
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for stem in STEMS:
            wave = 0.1 * rng.standard_normal((int(seconds * RATE), 2))
            sf.write(folder / f"{stem}.wav", wave, RATE, subtype="PCM_16")
    (root / "train").mkdir()
    return root


def _read(path: Path) -> torch.Tensor:
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy())


def _estimates(refs: Path, out: Path, leak: float, skip: tuple[str, ...] = ()) -> Path:
    """``out/<track>/<stem>.flac``: reference + ``leak`` * next stem (24-bit FLAC)."""
    for track in sorted(p for p in (refs / "test").iterdir() if p.is_dir()):
        stems = [_read(track / f"{s}.wav") for s in STEMS]
        (out / track.name).mkdir(parents=True)
        for j, stem in enumerate(STEMS):
            if (track.name, stem) in {tuple(x.split("/")) for x in skip}:
                continue
            est = stems[j] + leak * stems[(j + 1) % 4]
            sf.write(out / track.name / f"{stem}.flac", est.T.numpy(), RATE, subtype="PCM_24")
    return out


def _evaluate(*argv: str) -> int:
    """``evaluate ARGV`` in this process (one job: worker processes take seconds to start)."""
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args([*argv, "--no-plot", "-q", "-d", "cpu", "-j", "1"]))


def _leaderboard(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    return run_leaderboard(parser.parse_args(list(argv)))


def test_estimate_files_score_like_the_samples(tmp_path: Path, capsys) -> None:
    """Another tool's FLAC stems: every frame SDR and the global SDR equal the values computed
    from the written samples; the JSON keeps both global SDR energies."""
    refs = _references(tmp_path / "hq", ("a", "b"))
    est = _estimates(refs, tmp_path / "tool", leak=0.3)
    out = tmp_path / "out"
    assert _evaluate("--estimates", str(est), "--musdb", str(refs), "--is-wav", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert "SDR museval (median)" in printed and "SDR global eps=1e-07 (mean)" in printed
    scores = read_track_json(out / "test" / "a.json")
    r = torch.stack([_read(refs / "test" / "a" / f"{s}.wav") for s in STEMS])
    e = torch.stack([_read(est / "a" / f"{s}.flac") for s in STEMS])
    np.testing.assert_allclose(scores.frames["SDR"], framewise_sdr(r, e, RATE, RATE), atol=1e-5)
    for i, stem in enumerate(STEMS):
        assert scores.global_sdr("mdx")[stem] == pytest.approx(float(nsdr(r, e)[i]), abs=1e-9)
        msst = float(nsdr(r, e, GLOBAL_EPS["msst"])[i])
        assert scores.global_sdr("msst")[stem] == pytest.approx(msst, abs=1e-9)
    assert np.isfinite(scores.frames["SIR"]).all()  # full metrics by default
    record = scores.extra
    assert record["settings"] == {
        "model": "tool",
        "estimates": str(est.resolve()),
        "stems": STEMS,
        "sdr_only": False,
    }
    assert set(record["estimate_files"]) == set(STEMS) and record["training_data"] == "unknown"


def test_missing_stems_tracks_and_lengths_are_one_line_each(tmp_path: Path, capsys) -> None:
    refs = _references(tmp_path / "hq", ("a", "b", "c"))
    est = _estimates(refs, tmp_path / "tool", leak=0.3, skip=("b/vocals",))
    (est / "c" / "drums.flac").unlink()
    (est / "c" / "bass.flac").unlink()
    (est / "zzz").mkdir()  # matches no reference track
    short = _read(est / "a" / "bass.flac")[:, : RATE * 2]
    sf.write(est / "a" / "bass.flac", short.T.numpy(), RATE, subtype="PCM_24")
    args = ["--estimates", str(est), "--musdb", str(refs), "--is-wav", "--sdr-only"]
    assert _evaluate(*args, "-o", str(tmp_path / "out")) == 1  # some tracks failed
    err = capsys.readouterr().err.splitlines()
    assert f"ignored {est / 'zzz'}: no reference track of that name" in err
    assert f"failed: b: missing estimate stem(s) vocals in {est / 'b'}" in err[-2]
    assert err[-1].startswith(f"failed: c: missing estimate stem(s) drums, bass in {est / 'c'}")
    assert (
        "a: bass has 16000 samples at 8000 Hz, the reference 24000: zero-padded to its length"
        in err
    )
    assert not any("Traceback" in line for line in err)
    assert [p.name for p in (tmp_path / "out" / "test").iterdir()] == ["a.json"]


def test_changed_estimate_files_are_scored_again(tmp_path: Path, capsys) -> None:
    refs = _references(tmp_path / "hq", ("a", "b"))
    est = _estimates(refs, tmp_path / "tool", leak=0.3)
    args = ["--estimates", str(est), "--musdb", str(refs), "--is-wav", "--sdr-only"]
    out = ["-o", str(tmp_path / "out")]
    assert _evaluate(*args, *out) == 0
    before = read_track_json(tmp_path / "out" / "test" / "a.json").global_sdr()
    better = _read(refs / "test" / "a" / "drums.wav")
    sf.write(est / "a" / "drums.flac", better.T.numpy(), RATE, subtype="PCM_24")
    capsys.readouterr()
    assert _evaluate(*args, *out) == 0
    assert "reusing 1 earlier results" in capsys.readouterr().err  # b only
    after = read_track_json(tmp_path / "out" / "test" / "a.json").global_sdr()
    assert after["drums"] > before["drums"] + 20 and after["bass"] == before["bass"]


def test_estimates_refuse_engine_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--shifts cannot be used with --estimates"):
        _evaluate("--estimates", "x", "--folder", "y", "--shifts", "2")
    with pytest.raises(ConfigError, match="--stems applies only with --estimates"):
        _evaluate("--folder", "y", "--stems", "vocals")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_training_overlap_is_marked_and_not_ranked(tmp_path: Path, capsys) -> None:
    """Stems labelled mdx_extra_q (trained with the MUSDB18 test set) score best but are left
    out of the ranking, unless asked; a package's own training tracks are marked too."""
    refs = _references(tmp_path / "hq", ("a", "b"))
    cheat = _estimates(refs, tmp_path / "mdx_extra_q", leak=0.05)
    fair = _estimates(refs, tmp_path / "fair", leak=0.3)
    base = ["--musdb", str(refs), "--is-wav", "--sdr-only"]
    assert _evaluate("--estimates", str(cheat), *base, "-o", str(tmp_path / "r1")) == 0
    assert "mdx_extra_q was trained with the MUSDB18 test tracks" in capsys.readouterr().err
    assert _evaluate("--estimates", str(fair), *base, "-o", str(tmp_path / "r2")) == 0
    model = FractionModel(STEMS, [0.25] * 4, samplerate=RATE, segment_length=RATE)
    package = save_package(model, tmp_path / "own.safetensors", training={"train_tracks": ["b"]})
    assert _evaluate("-n", str(package), *base, "-o", str(tmp_path / "r3")) == 0
    board = tmp_path / "board.csv"
    dirs = [str(tmp_path / f"r{k}") for k in (1, 2, 3)]
    assert _leaderboard(*dirs, "--no-reference", "--csv", str(board)) == 0
    printed = capsys.readouterr().out
    rows = {r["model"]: r for r in _csv(board)}
    assert rows["mdx_extra_q †"]["rank"] == "excl." and rows["own †"]["rank"] == "excl."
    assert rows["fair"]["rank"] == "1"
    assert rows["mdx_extra_q †"]["training data"] == "MUSDB18-HQ train + test + extra songs"
    assert "† own (musdb-hq-test): 1/2 tracks: the package lists 1 evaluated" in printed
    assert _leaderboard(*dirs, "--no-reference", "--rank-contaminated", "--csv", str(board)) == 0
    ranks = {r["model"]: r["rank"] for r in _csv(board)}
    assert ranks["mdx_extra_q †"] == "1" and ranks["fair"] == "2"


def test_leaderboard_files_and_columns(tmp_path: Path) -> None:
    refs = _references(tmp_path / "hq", ("a", "b", "c"))
    model = FractionModel(STEMS, [0.4, 0.3, 0.2, 0.1], samplerate=RATE, segment_length=RATE)
    package = save_package(model, tmp_path / "frac.safetensors")
    base = ["--musdb", str(refs), "--is-wav", "--sdr-only"]
    assert _evaluate("-n", str(package), *base, "-o", str(tmp_path / "r1")) == 0
    est = _estimates(refs, tmp_path / "tool", leak=0.3)
    assert _evaluate("--estimates", str(est), *base, "-o", str(tmp_path / "r2")) == 0
    files = {k: tmp_path / f"board.{k}" for k in ("md", "csv", "json")}
    argv = [str(tmp_path / "r1"), str(tmp_path / "r2"), "--tracks-agg", "mean"]
    argv += ["--markdown", str(files["md"]), "--csv", str(files["csv"])]
    assert _leaderboard(*argv, "--json", str(files["json"]), "--global-sdr", "msst") == 0
    header = files["csv"].read_text().splitlines()[0].split(",")
    assert header[:5] == [
        "rank",
        "model",
        "dataset",
        "All SDR museval (mean)",
        "drums SDR museval (mean)",
    ]
    assert (
        "All SDR global eps=1e-08 (mean)" in header
        and "vocals SDR global eps=1e-08 (mean)" in header
    )
    rows = {r["model"]: r for r in _csv(files["csv"])}
    assert rows["frac"]["params (M)"] == "0.0" and rows["frac"]["speed (x real time)"].endswith(
        "(cpu)"
    )
    assert rows["tool"]["speed (x real time)"] == "" and rows["tool"]["rank"] == "1"
    assert rows["Demucs v2 (official) [published]"]["All SDR museval (mean)"] == "6.28"
    data = json.loads(files["json"].read_text())
    tool = next(r for r in data["rows"] if r["name"] == "tool")
    scores = [read_track_json(p) for p in sorted((tmp_path / "r2" / "test").glob("*.json"))]
    want = np.mean([s.medians()["drums"]["SDR"] for s in scores])  # mean over tracks
    assert tool["museval"]["drums"] == pytest.approx(want, abs=1e-12)
    assert "then mean over tracks" in files["md"].read_text()


def test_stem_box_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    refs = _references(tmp_path / "hq", ("a",))
    est = _estimates(refs, tmp_path / "tool", leak=0.3)
    base = ["--musdb", str(refs), "--is-wav", "--sdr-only"]
    assert _evaluate("--estimates", str(est), *base, "-o", str(tmp_path / "r")) == 0
    plot = tmp_path / "stems.png"
    assert _leaderboard(str(tmp_path / "r"), "--plot", str(plot)) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_pairs_tracks_and_tests(tmp_path: Path, capsys) -> None:
    refs = _references(tmp_path / "hq", tuple("abcdef"))
    base = ["--musdb", str(refs), "--is-wav", "--sdr-only"]
    for name, leak in (("good", 0.2), ("bad", 0.4)):
        est = _estimates(refs, tmp_path / name, leak=leak)
        assert _evaluate("--estimates", str(est), *base, "-o", str(tmp_path / name / "r")) == 0
    out = tmp_path / "cmp.json"
    dirs = [str(tmp_path / "good" / "r"), str(tmp_path / "bad" / "r")]
    capsys.readouterr()
    assert _leaderboard("--compare", *dirs, "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("good (A) vs bad (B) on musdb-hq-test: 6 tracks in common")
    data = json.loads(out.read_text())
    side = data["scores"]["global"]
    diffs = [a - b for a, b in zip(side["a"]["All"], side["b"]["All"], strict=True)]
    assert all(d > 5 for d in diffs)  # 0.2 leakage beats 0.4 on every track
    test = wilcoxon(diffs)
    assert test.pvalue == pytest.approx(2 / 64)  # all six positive: the smallest exact p
    assert "| global | All | 6 |" in printed and "| 6 | 0 | 21.0 | 0.0312 | exact |" in printed
    with pytest.raises(ConfigError, match="--compare takes two result folders"):
        _leaderboard("--compare", dirs[0])


def test_global_sdr_conventions_differ_only_for_silent_stems() -> None:
    """eps 1e-7 (MDX) vs 1e-8 (MSST): equal for real stems, 10 dB apart for a silent one."""
    scores = TrackScores(
        "t",
        ["loud", "silent"],
        {m: np.zeros((2, 1)) for m in ("SDR", "SIR", "ISR", "SAR")},
        {"loud": math.nan, "silent": math.nan},
        energies={"loud": (1e3, 10.0), "silent": (0.0, 1e-3)},
    )
    mdx, msst = scores.global_sdr("mdx"), scores.global_sdr("msst")
    assert mdx["loud"] == pytest.approx(20.0, abs=1e-7) and msst["loud"] == pytest.approx(
        20.0, abs=1e-7
    )
    assert mdx["silent"] - msst["silent"] == pytest.approx(10.0, abs=1e-3)
    assert mdx["silent"] == pytest.approx(10 * math.log10(1e-7 / (1e-3 + 1e-7)))


@pytest.mark.integration
def test_estimates_in_worker_processes(tmp_path: Path) -> None:
    """Two worker processes (the default with estimate files) score what one process does."""
    refs = _references(tmp_path / "hq", ("a", "b", "c"))
    est = _estimates(refs, tmp_path / "tool", leak=0.3)
    tracks = open_tracks("musdb-hq", refs, "test")
    serial = run_evaluation(
        tracks, EvalOptions(None, tmp_path / "s", estimates=est, sdr_only=True, jobs=1)
    )
    pool = run_evaluation(
        tracks, EvalOptions(None, tmp_path / "p", estimates=est, sdr_only=True, jobs=2)
    )
    for a, b in zip(serial.scores, pool.scores, strict=True):
        np.testing.assert_array_equal(a.frames["SDR"], b.frames["SDR"])
        assert a.energies == b.energies


def test_estimates_at_another_rate_and_channel_count(tmp_path: Path) -> None:
    """Stems written at 16 kHz (references: 8 kHz), one of them mono: scored exactly as the
    samples the decoder's conversion gives (resampled to 8 kHz, mono spread to both channels)."""
    from demucs_rr.audio import convert_audio

    refs = _references(tmp_path / "hq", ("a",))
    est = tmp_path / "tool" / "a"
    est.mkdir(parents=True)
    ref, want = [], []
    for j, stem in enumerate(STEMS):
        wav = _read(refs / "test" / "a" / f"{stem}.wav")
        up = convert_audio(wav + 0.3 * wav.roll(j + 1, dims=-1), RATE, 2 * RATE, 1 + (j < 3))
        sf.write(est / f"{stem}.wav", up.T.numpy(), 2 * RATE, subtype="FLOAT")  # lossless
        ref.append(wav)
        want.append(convert_audio(up, 2 * RATE, RATE, 2)[:, : wav.shape[-1]])
    options = EvalOptions(None, tmp_path / "out", estimates=tmp_path / "tool", sdr_only=True)
    scores = run_evaluation(open_tracks("musdb-hq", refs, "test"), options).scores[0]
    r, e = torch.stack(ref), torch.stack(want)
    assert e.shape == r.shape  # 2x up then down: the same length
    np.testing.assert_allclose(scores.frames["SDR"], framewise_sdr(r, e, RATE, RATE), atol=1e-5)
    for i, stem in enumerate(STEMS):
        assert scores.global_sdr()[stem] == pytest.approx(float(nsdr(r, e)[i]), abs=1e-9)


def test_rows_on_fewer_tracks_are_not_ranked(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool scored on 2 of the 3 tracks scores best but is not comparable: marked, unranked."""
    monkeypatch.chdir(tmp_path)
    refs = _references(tmp_path / "hq", ("a", "b", "c"))
    base = ["--musdb", str(refs), "--is-wav", "--sdr-only"]
    good = _estimates(refs, tmp_path / "partial", leak=0.05)
    assert _evaluate("--estimates", str(good), *base, "--tracks", "a", "b", "-o", "r1") == 0
    fair = _estimates(refs, tmp_path / "fair", leak=0.3)
    assert _evaluate("--estimates", str(fair), *base, "-o", "r2") == 0
    board = tmp_path / "board.csv"
    capsys.readouterr()
    assert _leaderboard("r1", "r2", "--no-reference", "--csv", str(board)) == 0
    assert "‡ partial (musdb-hq-test): scored on 2 of 3 tracks" in capsys.readouterr().out
    ranks = {r["model"]: r["rank"] for r in _csv(board)}
    assert ranks == {"partial ‡": "incompl.", "fair": "1"}
    assert _leaderboard("r1", "r2", "--no-reference", "--rank-incomplete", "--csv", str(board)) == 0
    assert {r["model"]: r["rank"] for r in _csv(board)} == {"partial ‡": "1", "fair": "2"}
