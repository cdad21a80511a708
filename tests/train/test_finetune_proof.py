"""What fine-tuning is for, measured: a tiny model pretrained on 4 synthetic stems, fine-tuned on
a small 5-stem set with a new instrument (piano), learns the new stem better than the same
network trained from scratch for the same steps, and keeps the old stems within 1 dB of the
pretrained model on the same tracks; two gloo processes fine-tune like one.

Everything is seeded (data, initialisation, augmentation), so the numbers are those of
docs/training.md#fine-tuning on any x86-64 CPU with one thread (up to float rounding)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.data.tracks import scan_tracks
from demucs_rr.distributed import Group
from demucs_rr.hub.loader import load_model
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.train.checkpoint import load_checkpoint
from demucs_rr.train.config import load_config
from demucs_rr.train.finetune import load_run_config
from demucs_rr.train.loop import fit
from demucs_rr.train.validate import ValidOptions, validate
from tests.helpers.training import FIVE, RATE, finetune_overrides, tiny_overrides

pytestmark = pytest.mark.integration  # about a minute of training on one thread

FOUR = ["drums", "bass", "other", "vocals"]
PRETRAIN_EPOCHS = 40  # the tiny preset's recipe (5 steps per epoch on 8 tracks)
FINETUNE_EPOCHS = 10  # 20 steps on the 4 tracks of the new set
OLD_STEMS_DB = 1.0
"""How much nSDR an old stem may lose against the pretrained model (the issue's bound)."""
NEW_STEM_MARGIN_DB = 0.2
"""How much better the fine-tuned piano must be than the one trained from scratch. Measured
(torch 2.13, x86-64, one thread): 0.43 dB against 0.00 dB, the scratch run still at the
do-nothing level after 20 steps; 0.2 dB leaves room for another CPU's float rounding without
accepting a fine-tune that learned nothing."""


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The 4-stem pretraining set (8 + 2 tracks) and the 5-stem set with piano (4 + 2 tracks,
    another seed: other songs), 6 s at 16 kHz."""
    root = tmp_path_factory.mktemp("proof")
    four = make_synthetic_dataset(
        root / "four", {"train": 8, "valid": 2}, seconds=6.0, samplerate=RATE
    )
    five = make_synthetic_dataset(
        root / "five", {"train": 4, "valid": 2}, seconds=6.0, samplerate=RATE, sources=FIVE, seed=7
    )
    return four, five


@pytest.fixture(scope="module")
def pretrained(sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset trained on the 4-stem set, exported (last weights)."""
    from demucs_rr.cli import main

    folder = tmp_path_factory.mktemp("pretrain")
    overrides = tiny_overrides(sets[0], f"epochs={PRETRAIN_EPOCHS}", "valid.every=1000")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(load_config(overrides), folder)
    finally:
        torch.set_num_threads(threads)
    out = folder / "base.safetensors"
    assert main(["export", str(folder), "--last", "-o", str(out)]) == 0
    return out


def _finetune(base: Path, five: Path, *extra: str) -> list[str]:
    return finetune_overrides(
        base,
        five,
        f"dset.sources=[{','.join(FIVE)}]",
        "init_new_from=other",
        f"epochs={FINETUNE_EPOCHS}",
        "valid.max_seconds=null",
        *extra,
    )


def test_finetuning_beats_scratch_and_keeps_the_old_stems(
    one_thread: None, sets: tuple[Path, Path], pretrained: Path, tmp_path: Path
) -> None:
    five = sets[1]
    config, initial = load_run_config(_finetune(pretrained, five))
    tuned = fit(config, tmp_path / "finetuned", initial=initial)[-1]
    scratch_config = load_config(
        tiny_overrides(
            five,
            f"dset.sources=[{','.join(FIVE)}]",
            f"epochs={FINETUNE_EPOCHS}",
            "valid.max_seconds=null",
        )
    )
    scratch = fit(scratch_config, tmp_path / "scratch")[-1]
    assert tuned["step"] == scratch["step"] == 2 * FINETUNE_EPOCHS

    tracks = scan_tracks(five / "valid", FIVE)
    options = ValidOptions(FOUR, ApplyOptions(segment=None, overlap=0.25, shifts=0), "l1")
    base = validate(load_model(pretrained), tracks, options, Group())
    for stem in FIVE:  # the table of docs/training.md (pytest -s shows it)
        print(
            f"{stem}: base {base.get(f'nsdr/{stem}', float('nan')):.2f}, fine-tuned "
            f"{tuned[f'valid/nsdr/{stem}']:.2f}, scratch {scratch[f'valid/nsdr/{stem}']:.2f} dB"
        )
    for stem in FOUR:
        assert tuned[f"valid/nsdr/{stem}"] > base[f"nsdr/{stem}"] - OLD_STEMS_DB, stem
    assert tuned["valid/nsdr/piano"] > scratch["valid/nsdr/piano"] + NEW_STEM_MARGIN_DB


DRIVER = """
import sys
import torch
torch.set_num_threads(1)
from demucs_rr.train.finetune import load_run_config
from demucs_rr.train.loop import fit
run_dir, *overrides = sys.argv[1:]
config, initial = load_run_config(overrides)
fit(config, run_dir, initial=initial, echo=print)
"""


def test_two_processes_finetune_like_one(
    one_thread: None, sets: tuple[Path, Path], pretrained: Path, tmp_path: Path
) -> None:
    """2 gloo processes and 1 process, same global batch, 2 epochs of a fine-tune that adds
    piano, freezes the encoder's first layer and trains LoRA adapters: the same weights.
    Tolerance as tests/train/test_train_ddp.py (gradients summed in another order; Adam)."""
    overrides = _finetune(
        pretrained, sets[1], "epochs=2", "freeze=[encoder.0.*]", "lora.rank=2", "valid.every=2"
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", str(driver), str(tmp_path / "ddp"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("starting from ") == 1  # only rank 0 reports

    config, initial = load_run_config(overrides)
    fit(config, tmp_path / "single", initial=initial)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.th")
    single = load_checkpoint(tmp_path / "single" / "checkpoint.th")
    assert ddp["step"] == single["step"] == 4
    assert ddp["model"].keys() == single["model"].keys()
    diff = max(float((ddp["model"][k] - single["model"][k]).abs().max()) for k in ddp["model"])
    assert diff < 1e-4
    a, b = ddp["history"][-1], single["history"][-1]
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=3e-3)
