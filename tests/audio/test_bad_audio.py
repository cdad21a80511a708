"""The bad-audio corpus (``tests/bad_audio.py``) through the real ``separate`` command: one line
per bad file naming it, exit 2 (1 in a batch with good files, whose stems are written), no
traceback, no decoder noise, nothing half-written, no hang; and both readers agree."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
import torch

from demucs_rr.audio.blocks import read_blocks
from demucs_rr.audio.decode import check_wav
from demucs_rr.audio.io import load_for_model, read_audio
from demucs_rr.cli import main
from demucs_rr.errors import AudioIOError
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.model_labels import RECORD_NAME
from demucs_rr.separate.to_files import mixture_stats
from tests.helpers.bad_audio import CORPUS, Case, write_sparse_silence

SOURCES = ["drums", "bass", "other", "vocals"]
MODEL_SR = 44100
STEM_FILES = sorted(f"{s}.wav" for s in SOURCES)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=20000, crop=13)
    return save_package(model, tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for case in CORPUS:
        case.build(folder / case.name)
    return folder


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, hidden ones included."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def split_lines(err: str, name: str) -> tuple[list[str], list[str]]:
    """stderr lines naming the file ``name`` (as a path component), and the others."""
    lines = err.splitlines()
    mine = [line for line in lines if f"{os.sep}{name}" in line]
    return mine, [line for line in lines if line not in mine]


def check_stems(out: Path, case: Case) -> None:
    """The four stems of ``case`` and nothing else, of the expected length."""
    folder = out / "frac" / Path(case.name).stem
    assert sorted(p.name for p in folder.iterdir()) == STEM_FILES, case.name
    frames = {soundfile.info(str(folder / name)).frames for name in STEM_FILES}
    assert len(frames) == 1, frames
    if case.seconds > 0:
        assert abs(frames.pop() - case.seconds * MODEL_SR) <= 1, (case.name, frames)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_corpus_file_through_the_cli(
    case: Case,
    package: Path,
    corpus_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    argv = ["separate", "-q", str(corpus_dir / case.name), "-n", str(package), "-o", str(out)]
    with caplog.at_level(logging.WARNING):
        code = main(argv)
    err = capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in err
    if case.expect == "error":
        mine, others = split_lines(err, case.name)
        assert code == 2 and len(mine) == 1, err
        assert mine[0].startswith("error:") and case.words in mine[0], mine
        assert all("inputs failed" in line for line in others), others  # the batch summary
        assert not warnings, warnings
        assert files_under(out) == []
        return
    assert code == 0 and err == "", err
    if case.expect == "warn":
        assert len(warnings) == 1 and case.name in warnings[0], warnings
        assert case.words in warnings[0] and "\n" not in warnings[0], warnings
    else:
        assert not warnings, warnings
    check_stems(out, case)
    assert files_under(out) == [
        p for p in files_under(out) if not p.name.startswith(".") or p.name == RECORD_NAME
    ]


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name != "dir.wav"], ids=lambda c: c.name)
def test_both_readers_agree(case: Case, corpus_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """load_for_model (in memory) and read_blocks (streamed) give the same error, or as many
    samples and the same single warning."""
    path = corpus_dir / case.name
    results: list[tuple[str, int, list[str]]] = []
    for read in ("memory", "blocks"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            try:
                if read == "memory":
                    wav, _ = load_for_model(path, MODEL_SR, 2)
                else:
                    blocks = read_blocks(path, 2, MODEL_SR)[1]
                    wav = torch.cat(list(blocks), dim=-1)
                result = ("ok", int(wav.shape[-1]))
            except AudioIOError as exc:
                result = (str(exc), 0)
        results.append((*result, [r.getMessage() for r in caplog.records]))
    assert results[0] == results[1]
    assert (results[0][0] == "ok") == (case.expect != "error"), results[0]
    assert len(results[0][2]) == (case.expect == "warn"), results[0]


@pytest.mark.integration
def test_mixed_batch_in_a_subprocess(package: Path, corpus_dir: Path, tmp_path: Path) -> None:
    """All of the corpus in one run: exit 1, exactly one line per bad file at the file
    descriptor level (no libmpg123 notes), the good files' stems written, nothing hidden left."""
    out = tmp_path / "out"
    inputs = [str(corpus_dir / case.name) for case in CORPUS]
    done = subprocess.run(
        [sys.executable, "-m", "demucs_rr", "separate", "-q", *inputs, "-n", str(package)]
        + ["-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    bad = [c for c in CORPUS if c.expect != "ok"]
    failed = [c for c in CORPUS if c.expect == "error"]
    assert done.returncode == 1, done.stderr
    assert lines[-1].endswith(f"{len(failed)} of {len(CORPUS)} inputs failed"), lines
    assert len(lines) == len(bad) + 1, done.stderr
    for case in bad:
        mine, _ = split_lines(done.stderr, case.name)
        prefix = "error:" if case.expect == "error" else "WARNING:"
        assert len(mine) == 1 and mine[0].startswith(prefix), (case.name, lines)
    for case in CORPUS:
        if case.expect != "error":
            check_stems(out, case)
    assert not [p for p in files_under(out) if p.name.startswith(".") and p.name != RECORD_NAME]


def test_decoder_noise_is_captured_and_fd2_restored(
    corpus_dir: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """libmpg123 writes to file descriptor 2: its notes become one warning record, and
    whatever is written to fd 2 afterwards still arrives."""
    with caplog.at_level(logging.WARNING):
        read_audio(corpus_dir / "mp3_damaged.mp3")
        with pytest.raises(AudioIOError):
            read_audio(corpus_dir / "random.mp3")
    assert capfd.readouterr().err == ""
    assert len(caplog.records) == 1 and "mp3_damaged.mp3" in caplog.records[0].getMessage()
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


@pytest.mark.integration
def test_three_hour_silence_length_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 3-hour 8 kHz silent wav (sparse: 173 MB apparent, ~0 on disk): the header check and
    the first streaming pass (whole-file length and statistics) are cheap and warn nothing.

    Separating it for real (four 173 MB stems) is the slow test below."""
    path = write_sparse_silence(tmp_path / "long.wav", 3 * 3600)
    frames = 3 * 3600 * 8000
    start = time.process_time()  # CPU seconds: the same on a busy machine
    assert check_wav(path) == frames
    with caplog.at_level(logging.WARNING):
        stats = mixture_stats(path, 8000, 1)
    assert (stats.length, stats.mean, stats.samplerate) == (frames, 0.0, 8000)
    assert not caplog.records
    assert time.process_time() - start < 30


@pytest.mark.slow
def test_three_hour_silence_separates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole 3-hour file through the CLI with an 8 kHz mono model: exit 0, full-length
    silent stems."""
    model = FractionModel(SOURCES, audio_channels=1, samplerate=8000, segment_length=8000 * 60)
    package = save_package(model, tmp_path / "frac.safetensors")
    path = write_sparse_silence(tmp_path / "long.wav", 3 * 3600)
    out = tmp_path / "out"
    assert main(["separate", "-q", str(path), "-n", str(package), "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    for name in STEM_FILES:
        info = soundfile.info(str(out / "frac" / "long" / name))
        assert (info.frames, info.samplerate) == (3 * 3600 * 8000, 8000)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name != "dir.wav"], ids=lambda c: c.name)
def test_training_reader_checks_like_the_others(case: Case, corpus_dir: Path) -> None:
    """The training reader (random access, at the file's own rate) refuses what the file reader
    refuses, on one line, and reads the same samples otherwise (sample rates are the track
    scan's business)."""
    from demucs_rr.audio import read_audio
    from demucs_rr.data.tracks import read_frames

    path = corpus_dir / case.name
    try:
        whole, _ = read_audio(path)
    except AudioIOError as exc:
        expected: str | None = str(exc)
    else:
        expected = None
    if expected is not None:
        with pytest.raises(AudioIOError) as err:
            read_frames(path)
        assert "\n" not in str(err.value) and case.name in str(err.value)
        return
    part = read_frames(path, start=3, frames=50)
    assert torch.equal(part, whole[:, 3:53])
