"""The ``train`` and ``export`` commands (registered as subcommands by :mod:`demucs_rr.cli`).

Examples::

    demucs-rr train --run-dir runs/tiny model=tiny dset=synthetic dset.root=data/synth
    demucs-rr train --run-dir runs/tiny --resume epochs=60     # continue, here to epoch 60
    demucs-rr export runs/tiny                                 # -> runs/tiny/tiny.safetensors
    demucs-rr separate -n runs/tiny/tiny.safetensors song.mp3
    demucs-rr train --run-dir runs/demucs dset.root=/data/musdb18hq      # the v2 recipe
    torchrun --nproc_per_node 8 -m demucs_rr train --run-dir runs/x dset.root=/data/musdb18hq
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demucs_rr.errors import ConfigError
from demucs_rr.hub.training_info import VALID_LOSS, VALID_NSDR, TrainingInfo

if TYPE_CHECKING:  # the config module imports OmegaConf: not for every command's --help
    from demucs_rr.train.config import TrainConfig

__all__ = ["add_export_arguments", "add_train_arguments", "run_export", "run_train"]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demucs-rr train``."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides: model=NAME and dset=NAME pick presets "
        "(conf/model, conf/dset), a.b=value sets a key of conf/config.yaml",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder (config, checkpoint, metrics); default: runs/<the overrides>",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (required) from its checkpoint, with "
        "its saved config (overrides still apply, e.g. epochs=300)",
    )
    mode.add_argument(
        "--restart",
        action="store_true",
        help="start from scratch even if --run-dir holds a checkpoint",
    )
    parser.add_argument(
        "--conf-dir",
        type=Path,
        default=None,
        help="config folder (default: $DEMUCS_RR_CONF or the checkout's conf/)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML) and exit without training",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def default_run_dir(overrides: list[str]) -> Path:
    """``runs/<overrides joined by commas>`` (``runs/default`` without overrides)."""
    name = ",".join(overrides) or "default"
    return Path("runs") / re.sub(r"[^\w.,=+-]", "_", name)[:120]


def _runs_hint() -> str:
    """``; runs here: a, b`` listing the run folders below ``runs/`` (empty when none)."""
    from demucs_rr.train.loop import CONFIG_NAME

    found = sorted(str(p.parent) for p in Path("runs").glob(f"*/{CONFIG_NAME}"))[:5]
    return f"; runs here: {', '.join(found)}" if found else ""


def run_train(args: argparse.Namespace) -> int:
    """Resolve the config and train; returns the exit code."""
    from demucs_rr.distributed import torchrun_ranks
    from demucs_rr.train.config import config_to_yaml, load_config
    from demucs_rr.train.finetune import load_run_config
    from demucs_rr.train.loop import CONFIG_NAME, fit

    if args.resume and args.run_dir is None:
        raise ConfigError(
            "--resume needs --run-dir RUN_DIR, the folder of the run to continue" + _runs_hint()
        )
    run_dir = args.run_dir or default_run_dir(args.overrides)
    initial = None
    if args.resume:
        saved = run_dir / CONFIG_NAME
        if not saved.is_file():
            raise ConfigError(f"nothing to resume: {saved} does not exist{_runs_hint()}")
        config = load_config(args.overrides, base=saved)
    else:
        config, initial = load_run_config(args.overrides, conf_dir=args.conf_dir)
    if args.quiet:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, progress=False))
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if torchrun_ranks()[0] == 0:
        print(
            f"run folder: {run_dir} (continue it with `demucs-rr train --run-dir {run_dir} "
            "--resume`)",
            flush=True,
        )
    history = fit(
        config,
        run_dir,
        resume=args.resume,
        restart=args.restart,
        echo=lambda line: print(line, flush=True),
        initial=initial,
    )
    best = history[-1].get("best_epoch", 0) if history else 0
    if best:
        record = next(r for r in history if r["epoch"] == best)
        print(
            f"best epoch {best}: valid nSDR {record['valid/nsdr']:.2f} dB; package it with "
            f"`demucs-rr export {run_dir}`"
        )
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demucs-rr export``."""
    parser.add_argument("run_dir", type=Path, help="run folder written by `demucs-rr train`")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="package file (default: RUN_DIR/<name>.safetensors)",
    )
    parser.add_argument("--name", default=None, help="model name (default: the run folder name)")
    parser.add_argument(
        "--last",
        action="store_true",
        help="export the last weights instead of the best validated ones",
    )
    parser.add_argument("--half", action="store_true", help="store float16 weights")


def _training_info(
    saved: dict[str, Any], best: dict[str, Any] | None, config: TrainConfig
) -> TrainingInfo:
    """The package's training block; validation metrics only when ``best`` weights are kept."""
    from demucs_rr.train.finetune import lineage

    info = TrainingInfo(
        epochs=int(saved["epoch"]),
        config=dict(saved["config"]),
        train_tracks=list(saved["train_tracks"]),
        valid_tracks=list(saved["valid_tracks"]),
        lineage=lineage(config, int(saved["step"])),
    )
    sources = config.dset.sources
    if best is None:
        return info
    found = best["metrics"]
    metrics = {VALID_LOSS: float(found["loss"]), VALID_NSDR: float(found["nsdr"])}
    metrics.update({f"{VALID_NSDR}_{s}": float(found[f"nsdr/{s}"]) for s in sources})
    return dataclasses.replace(
        info, best_epoch=int(best["epoch"]), weights=str(best["weights"]), metrics=metrics
    )


def run_export(args: argparse.Namespace) -> int:
    """Write the release package of a run; returns the exit code."""
    from demucs_rr.hub.package import save_package
    from demucs_rr.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from demucs_rr.train.config import load_config
    from demucs_rr.train.finetune import packaged_model

    run_dir: Path = args.run_dir
    checkpoint = run_dir / CHECKPOINT_NAME
    saved = load_checkpoint(checkpoint)
    config = load_config(base=saved["config"])
    best = None if args.last else saved.get("best")
    if best is None:
        model = packaged_model(config, saved["model"], f"{checkpoint} (last weights)")
        which = "last weights"
    else:
        model = packaged_model(config, best["state"], f"{checkpoint} (best weights)")
        which = f"best weights: epoch {best['epoch']}, {best['weights']}"
    if config.lora.rank:
        which += f"; LoRA rank {config.lora.rank} adapters merged"
    name = args.name or run_dir.resolve().name
    out = args.out or run_dir / f"{name}.safetensors"
    training = _training_info(saved, best, config)
    save_package(model.eval(), out, name=name, training=training, half=args.half)
    print(f"wrote {out} ({which}); use it with `demucs-rr separate -n {out} SONG`")
    return 0
