"""Libraries across processes: ``torchrun`` shards ``separate`` and ``evaluate`` over 2 gloo
ranks on the CPU like one process, ``--skip-existing`` resumes a batch, existing stems are not
overwritten by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs_rr.cli import main
from demucs_rr.distributed import Group
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.model_labels import RECORD_NAME

SOURCES = ["drums", "bass", "other", "vocals"]
TRACKS = ("a", "b", "sub/c", "sub/d", "e")
"""Five tracks: uneven shares (3 + 2), and a sub-folder for ``-r``."""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=20000, crop=13)
    return save_package(model, tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture
def library(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(TRACKS):
        path = tmp_path / "lib" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal((4000 + 777 * k, 2)), 44100, subtype="PCM_16")
    return tmp_path / "lib"


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m demucs_rr ARGS`` on one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "demucs_rr", *args, "--threads", "1"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def separate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["separate", "-d", "cpu", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.integration
def test_two_ranks_write_what_one_process_writes(
    package: Path,
    library: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    proc = torchrun(
        ["separate", str(library), "-r", "-n", str(package), "-o", "two", "-d", "cpu"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = "5 separated, 0 skipped, 0 of 5 inputs failed on 2 ranks"
    assert proc.stderr.count(summary) == 1, proc.stderr
    assert proc.stderr.count("[rank 0] ") == 3 and proc.stderr.count("[rank 1] ") == 2
    one = tmp_path / "one"
    assert separate([str(library), "-r", "-n", str(package), "-o", str(one), "-q"], capsys)[0] == 0
    ours, theirs = files(tmp_path / "two"), files(one)
    assert RECORD_NAME in theirs  # the model label record (each rank adds it under a lock)
    assert len(theirs) == len(TRACKS) * len(SOURCES) + 1
    assert sorted(ours) == sorted(theirs)
    assert all(ours[name] == theirs[name] for name in theirs), "stems differ"


def test_skip_existing_resumes_and_default_refuses(
    package: Path,
    library: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    out = tmp_path / "out"
    argv = [str(library), "-r", "-n", str(package), "-o", str(out), "--stems", "vocals,bass"]
    assert separate([*argv, "-q"], capsys)[0] == 0
    stems = sorted(p for p in out.rglob("*.wav"))
    assert len(stems) == 2 * len(TRACKS)
    before = {p: p.stat().st_mtime_ns for p in stems}
    # default: every track whose stems exist is refused before it is separated
    code, err = separate(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == len(TRACKS) + 1, err
    vocals = out / "frac" / "a" / "vocals.wav"  # the first stem asked for
    assert (
        f"error: {library / 'a.wav'}: {vocals} exists; pass --overwrite to replace or "
        "--skip-existing to keep" in lines
    )
    assert lines[-1] == f"0 separated, 0 skipped, {len(TRACKS)} of {len(TRACKS)} inputs failed"
    # a killed run: one track lost one of its stems; only that track is separated again
    lost = out / "frac" / "sub" / "c" / "vocals.wav"
    lost.unlink()
    code, err = separate([*argv, "--skip-existing"], capsys)
    assert code == 0 and lost.is_file()
    assert f"{library / 'sub' / 'c.wav'} -> " in err and err.count("skipped, its stems exist") == 4
    assert "1 separated, 4 skipped, 0 of 5 inputs failed" in err
    kept = [p for p in stems if p.parent != lost.parent]
    assert all(p.stat().st_mtime_ns == before[p] for p in kept)
    # without a flag, the refused tracks fail and the batch goes on: exit 1
    for path in lost.parent.iterdir():  # a track without any stem is separated
        path.unlink()
    code, err = separate([*argv, "-q"], capsys)
    assert code == 1 and lost.is_file() and err.count("exists; pass --overwrite") == 4
    assert separate([*argv, "-q", "--overwrite"], capsys)[0] == 0
    assert all(p.stat().st_mtime_ns != before[p] for p in kept)


def test_overwrite_with_skip_existing_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["separate", str(tmp_path), "--overwrite", "--skip-existing"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--skip-existing: not allowed with argument --overwrite" in err


def test_group_of_one_process() -> None:
    group = Group()
    assert not group.distributed and group.is_main
    assert group.gather({"x": 1}) == [{"x": 1}] and group.shard([1, 2, 3]) == [1, 2, 3]
    group.barrier()
    assert Group(rank=1, world_size=2).shard(list("abcde")) == ["b", "d"]


def _stem_folders(root: Path, names: tuple[str, ...]) -> Path:
    """A ``--folder`` dataset: ``root/<name>/<stem>.wav`` of noise, lengths differing."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for stem in SOURCES:
            noise = 0.1 * rng.standard_normal((6000 + 999 * k, 2))
            sf.write(root / name / f"{stem}.wav", noise, 8000, subtype="FLOAT")
    return root


@pytest.mark.integration
def test_two_ranks_evaluate_like_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    data = _stem_folders(tmp_path / "data", ("s1", "s2", "s3"))
    model = FractionModel(SOURCES, [0.4, 0.3, 0.2, 0.1], samplerate=8000, segment_length=8000)
    package = save_package(model, tmp_path / "eval.safetensors")
    args = ["evaluate", "-n", str(package), "--folder", str(data), "--sdr-only", "--no-plot"]
    args += ["-q", "-d", "cpu"]
    proc = torchrun([*args, "-o", "two"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results: two (3 tracks") == 1, proc.stdout
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["tracks"] == one["tracks"] == 3
    assert two["targets"] == one["targets"]
    assert not [p for p in (tmp_path / "two").rglob(".*")], "marker files left behind"
