"""Training reliability: SIGKILL at any moment (also while a checkpoint is being written) leaves
the last complete checkpoint loadable, the next run removes the stale temporary file, and the
resumed run is bit-exact with an uninterrupted one; a causal gLN Conv-TasNet is refused at
config time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from demucs_rr.errors import ConfigError
from demucs_rr.staging import clean_stale, staged_name
from demucs_rr.train.checkpoint import load_checkpoint
from demucs_rr.train.config import load_config
from demucs_rr.train.loop import fit
from tests.helpers.training import tiny_overrides

EPOCHS = 3

DRIVER = """
import os, sys, time
import torch
torch.set_num_threads(1)
from demucs_rr.train.config import load_config
from demucs_rr.train.loop import fit
run, hang_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
real_save, count = torch.save, 0
def save(obj, handle, *args, **kwargs):
    global count
    count += 1
    if count == hang_at:  # stop in the middle of writing the checkpoint's temporary file
        handle.write(b"PK partial checkpoint")
        handle.flush()
        open(os.path.join(run, "writing"), "w").close()
        time.sleep(600)
    real_save(obj, handle, *args, **kwargs)
torch.save = save
fit(load_config(sys.argv[4:]), run, resume=resume)
"""


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overrides(root: Path) -> list[str]:
    return tiny_overrides(root, f"epochs={EPOCHS}", "optim.ema_decay=0.9")


def _start(run: Path, overrides: list[str], hang_at: int, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", DRIVER, str(run), str(hang_at), "1" if resume else "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*command, *overrides], env=env, stderr=subprocess.PIPE)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.stderr is not None
    process.stderr.close()


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the training subprocess ended early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _temporaries(run: Path) -> list[Path]:
    return sorted(run.glob(".checkpoint.th.*.part"))


@pytest.mark.integration
def test_sigkill_during_training_and_checkpointing(small_synth: Path, tmp_path: Path) -> None:
    overrides = _overrides(small_synth)
    config = load_config(overrides)
    straight = fit(config, tmp_path / "straight")
    run = tmp_path / "killed"
    # 1. killed while writing the second checkpoint: the first one stays complete
    process = _start(run, overrides, hang_at=2, resume=False)
    _wait_for(run / "writing", process)
    _kill(process)
    assert len(_temporaries(run)) == 1
    assert load_checkpoint(run / "checkpoint.th")["epoch"] == 1
    # 2. resumed, then killed at a random moment (start-up, a step, or a checkpoint write)
    process = _start(run, overrides, hang_at=0, resume=True)
    time.sleep(random.Random(os.getpid()).uniform(0.5, 4.0))
    _kill(process)
    assert load_checkpoint(run / "checkpoint.th")["epoch"] in (1, 2, EPOCHS)
    # 3. the next run removes what the kills left and ends bit-exact with the straight run
    resumed = fit(config, run, resume=True)
    assert _temporaries(run) == []
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.th")
    b = load_checkpoint(run / "checkpoint.th")
    assert b["epoch"] == EPOCHS
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["state"][k], b["ema"]["state"][k]) for k in a["ema"]["state"])
    assert [r["train/loss"] for r in straight] == [r["train/loss"] for r in resumed]


@pytest.mark.integration
def test_stale_checkpoint_files_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    live = staged_name(tmp_path / "checkpoint.th", "0123abcd")  # this process's
    live.write_bytes(b"being written")
    stale = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    stale.write_bytes(b"partial")
    clean_stale(tmp_path)
    assert not stale.exists() and live.exists()


def test_causal_gln_tasnet_is_refused_at_config_time() -> None:
    base = ["model=tasnet", "dset=synthetic", "model.kwargs.causal=true"]
    with pytest.raises(ConfigError, match="frame-local norm") as info:
        load_config(base)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="frame-local norm"):
        load_config([*base, "model.kwargs.norm_type=gLN"])
    assert load_config([*base, "model.kwargs.norm_type=cLN"]).model.kwargs["norm_type"] == "cLN"
