"""Real `separate` processes: a SIGKILLed run's staged files are cleaned by the next run, and
two runs writing the same track into the same --out leave one complete, consistent stem set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.model_labels import RECORD_NAME

SOURCES = ["drums", "bass", "other", "vocals"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# `separate` whose stem commit waits until both runs reach theirs, then renames at a given pace:
# run a at 0, 100, 200, 300 ms and run b at 150, 160, 170, 180 ms would leave a's last two stems
# over b's without the folder lock
RACING = """
import os, sys, time
from pathlib import Path
from demucs_rr.staging import OutputGroup
barrier, me, first, step = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
real_commit, real_replace = OutputGroup.commit, os.replace
def commit(self):
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.002)
    time.sleep(first)
    real_commit(self)
def replace(src, dst):
    real_replace(src, dst)
    time.sleep(step)
OutputGroup.commit, os.replace = commit, replace
from demucs_rr.cli import main
sys.exit(main(sys.argv[5:]))
"""


def _song(path: Path, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    mix = (0.1 * rng.standard_normal((int(seconds * 44100), 2))).astype(np.float32)
    sf.write(path, mix, 44100, subtype="FLOAT")
    return mix


def _hidden(folder: Path) -> list[Path]:
    """Staged stems: hidden files, but the folder lock and the model label record (and its
    staged copy), which come and go while the run writes."""
    return [
        p
        for p in folder.rglob("*")
        if p.name.startswith(".") and not p.name.startswith(".demucs_rr")
    ]


@pytest.mark.integration
def test_sigkill_while_writing_then_next_run_cleans_up(tmp_path: Path) -> None:
    package = save_package(FractionModel(SOURCES, crop=3), tmp_path / "frac.safetensors")
    song = tmp_path / "song.wav"
    mix = _song(song, 60)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "demucs_rr", "separate", "-q", str(song), "-n", str(package)]
    argv += ["-o", str(out), "--threads", "1"]
    slow = [*argv, "--segment", "0.005"]  # many chunks: the stems are written for a while
    proc = subprocess.Popen(slow, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 60
    while not _hidden(out):
        assert proc.poll() is None, "the run ended before writing stems"
        assert time.monotonic() < deadline, "no staged stem appeared"
        time.sleep(0.02)
    time.sleep(0.05)  # 12000 chunks of a 60 s song: far from done
    assert proc.poll() is None, "the run ended before it could be killed while writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = _hidden(out)
    assert left and all(f"-{proc.pid}-" in p.name for p in left), left  # named after the pid

    rerun = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert _hidden(out) == []
    stems = sorted(p.name for p in (out / "frac" / "song").iterdir())
    assert stems == sorted(f"{name}.wav" for name in SOURCES)
    drums, rate = sf.read(out / "frac" / "song" / "drums.wav")
    assert rate == 44100 and drums.shape == mix.shape


@pytest.mark.integration
@pytest.mark.slow  # two parallel torch start-ups: 5-12 s on 2 cores
def test_two_runs_into_the_same_out_leave_one_consistent_set(tmp_path: Path) -> None:
    fractions = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.4, 0.3, 0.2, 0.1]}
    packages = {}
    for run, gains in fractions.items():  # two different models with the same name
        (tmp_path / run).mkdir()
        packages[run] = save_package(
            FractionModel(SOURCES, gains), tmp_path / run / "m.safetensors"
        )
    song = tmp_path / "song.wav"
    mix = _song(song, 2)
    out = tmp_path / "out"
    common = ["separate", "-q", str(song), "-o", str(out), "--overwrite", "--float32"]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    pace = {"a": ("0", "0.1"), "b": ("0.15", "0.01")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RACING, str(barrier), run, *pace[run], *common]
            + ["-n", str(packages[run])],
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for run in ("a", "b")
    ]
    for proc in runs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    folder = out / "m" / "song"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        [RECORD_NAME, *(f"{name}.wav" for name in SOURCES)]
    )
    origin = set()
    for i, name in enumerate(SOURCES):
        stem, _ = sf.read(folder / f"{name}.wav", dtype="float32")  # complete and readable
        assert stem.shape == mix.shape
        found = [
            r for r, gains in fractions.items() if np.allclose(stem, gains[i] * mix, atol=1e-3)
        ]
        assert len(found) == 1, name
        origin.add(found[0])
    assert len(origin) == 1, "the stems come from both runs"
