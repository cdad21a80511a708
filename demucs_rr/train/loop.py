"""The training loop: one step, one epoch, validation through the separation engine, and fit.

Data flow of a step::

    (B, S, C, T + shift) normalised stems -> augment (Shift, FlipSign, FlipChannels, Scale,
    Remix) -> (B, S, C, T) -> mix = sum over S (B, C, T) -> model -> (B, S, C, T') estimate
    -> weighted per-source L1/MSE against the centre-trimmed stems -> backward -> clip -> Adam
    -> LR schedule -> EMA

Reproducibility: the data order of epoch ``e`` comes from ``(seed, 0, e)``, the augmentation
draws of step ``k`` from ``(seed, 1, k)`` for the whole global batch, repitch draws from
``(seed, epoch, item)``; so a resumed run and a run on N processes see the same samples and
augmentations as an uninterrupted single-process run with the same global batch.

Dimension letters: B batch, S sources, C channels, T time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Sampler

from demucs_rr.data.datasets import StemSegments, split_tracks
from demucs_rr.data.repitch import soundstretch_available
from demucs_rr.data.tracks import Track
from demucs_rr.distributed import Group, join_group, leave_group
from demucs_rr.errors import ConfigError
from demucs_rr.models.base import SeparationModel, center_trim
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.staging import clean_stale
from demucs_rr.train.augment import BatchRows, step_generator
from demucs_rr.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from demucs_rr.train.config import TrainConfig, config_to_dict, config_to_yaml, segment_samples
from demucs_rr.train.finetune import InitialModel, adapt_model, initial_of
from demucs_rr.train.state import TrainState, build_state, make_model
from demucs_rr.train.validate import (
    ValidOptions,
    flatten,
    update_best,
    validate,
    validate_epoch,
)

__all__ = [
    "GlobalBatchSampler",
    "TrainState",
    "ValidOptions",
    "fit",
    "run_epoch",
    "train_step",
    "validate",
]

logger = logging.getLogger(__name__)


class GlobalBatchSampler(Sampler[list[int]]):
    """Per-process slices of global batches drawn from a seeded permutation.

    Epoch ``e`` permutes the items with a generator seeded by ``(seed, 0, e)``, cuts the
    permutation into ``len(dataset) // global_batch`` global batches (an incomplete last batch
    is dropped, as v2 does for Remix) and gives process ``rank`` the rows
    ``[rank * b, (rank + 1) * b)`` of each, ``b = global_batch / world_size``.

    Args:
        size: number of items.
        global_batch: items per optimiser step over all processes.
        rank: this process's rank.
        world_size: number of processes (must divide ``global_batch``).
        seed: base seed.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world_size: int, seed: int) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} not divisible by {world_size}")
        self.size, self.global_batch = size, global_batch
        self.local_batch = global_batch // world_size
        self.rank, self.seed, self.epoch = rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.size, generator=step_generator(self.seed, 0, self.epoch))
        start = self.rank * self.local_batch
        for k in range(len(self)):
            batch = perm[k * self.global_batch : (k + 1) * self.global_batch]
            yield batch[start : start + self.local_batch].tolist()


def make_loader(
    dataset: Dataset[torch.Tensor], sampler: GlobalBatchSampler, workers: int, pin_memory: bool
) -> DataLoader[torch.Tensor]:
    """DataLoader yielding (b, S, C, T) batches in ``sampler``'s order."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def _backward_and_step(state: TrainState, loss: torch.Tensor) -> float:
    """Backward, optional unscale/clip, optimiser and scheduler steps; returns the grad norm."""
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        state.scaler.unscale_(state.optimizer)
    else:
        loss.backward()  # type: ignore[no-untyped-call]
    max_norm = state.clip_grad if state.clip_grad > 0 else math.inf
    grad_norm = float(nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    if state.scheduler is not None and not isinstance(state.scheduler, ReduceLROnPlateau):
        state.scheduler.step()
    return grad_norm


def train_step(state: TrainState, batch: torch.Tensor) -> dict[str, float]:
    """One optimiser step on this process's share of a global batch.

    Args:
        state: the training state (its ``step`` is incremented).
        batch: (b, S, C, T + shift) normalised stems, b = global batch / world size.

    Returns:
        ``{"loss", "<kind>/<source>", "grad_norm", "lr"}`` of this process.
    """
    if batch.dim() != 4:
        raise ValueError(
            f"expected a (batch, sources, channels, time) batch, got {tuple(batch.shape)}"
        )
    dist = state.dist
    stems = batch.to(dist.device, non_blocking=True)
    rows = BatchRows(dist.rank * stems.shape[0], stems.shape[0] * dist.world_size)
    stems = state.augment(stems, step_generator(state.seed, 1, state.step), rows)  # (b,S,C,T)
    mix = stems.sum(dim=1)  # (b, C, T): the model's stems and, when they are a subset, the rest
    stems = stems[:, : len(state.criterion.sources)]
    with torch.autocast(
        dist.device.type,
        dtype=state.amp_dtype or torch.float32,
        enabled=state.amp_dtype is not None,
    ):
        estimate = state.net(mix)  # (b, S, C, T')
    losses = state.criterion(estimate.float(), center_trim(stems, estimate))
    lr = float(state.optimizer.param_groups[0]["lr"])
    grad_norm = _backward_and_step(state, losses["loss"])
    if state.ema is not None:
        state.ema.update(state.model)
    state.step += 1
    metrics = {key: float(value.detach()) for key, value in losses.items()}
    metrics.update(grad_norm=grad_norm, lr=lr)
    return metrics


def run_epoch(
    state: TrainState, loader: DataLoader[torch.Tensor], progress: bool = False, desc: str = "train"
) -> dict[str, float]:
    """Train on every batch of ``loader``; returns the metrics averaged over steps and ranks."""
    from tqdm import tqdm

    state.model.train()
    state.augment.train()
    totals: dict[str, float] = {}
    count = 0
    # disable=None: tqdm shows the bar only on a terminal (no bar noise in log files).
    bar = tqdm(
        loader,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=None if progress and state.dist.is_main else True,
    )
    for batch in bar:
        metrics = train_step(state, batch)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value
        count += 1
        bar.set_postfix(loss=f"{totals['loss'] / count:.4f}")
    means = {key: value / max(count, 1) for key, value in totals.items()}
    return state.dist.all_reduce_mean(means)


# --------------------------------------------------------------------------- fit

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class TrainData:
    """Training items and the track lists."""

    train: StemSegments
    train_tracks: list[Track]
    valid_tracks: list[Track]


def _kind(config: TrainConfig) -> str:
    """Dataset kind of the data layer (synthetic sets are folders)."""
    if config.dset.kind == "musdb":
        return "musdb-hq" if config.dset.is_wav else "musdb"
    return "folder"


def _make_synthetic(config: TrainConfig, dist: Group) -> None:
    """Generate the synthetic dataset on rank 0 when its folder does not exist yet."""
    root = Path(str(config.dset.root)).expanduser()
    if dist.is_main and not (root / config.dset.valid_split).is_dir():
        from demucs_rr.data.synthetic import make_synthetic_dataset

        syn = config.dset.synthetic
        splits = {"train": syn.train_tracks, "valid": syn.valid_tracks, "test": syn.valid_tracks}
        logger.info("generating the synthetic dataset in %s", root)
        make_synthetic_dataset(
            root,
            tracks_per_split=splits,
            seconds=syn.seconds,
            samplerate=config.dset.samplerate,
            seed=syn.seed,
            sources=config.dset.sources,
        )
    dist.barrier()


def prepare_data(config: TrainConfig, model: SeparationModel, dist: Group) -> TrainData:
    """Scan the dataset and cut training items of ``valid_length(segment) + shift`` samples.

    Raises:
        ConfigError: missing folder or stems, mismatched stems (from the data layer), or
            fewer training items than the batch size.
    """
    dset = config.dset
    if dset.kind == "synthetic":
        _make_synthetic(config, dist)
    splits = split_tracks(
        str(dset.root), dset.sources, _kind(config), dset.train_split, dset.valid_split,
        every_stem=True,
    )  # fmt: skip
    repitch = config.data.repitch
    if repitch > 0 and not soundstretch_available():
        logger.warning("soundstretch is not installed: repitch augmentation is off")
        repitch = 0.0
    rate = dset.samplerate
    length = model.valid_length(segment_samples(config)) + round(config.augment.shift * rate)
    train = StemSegments(
        splits.train,
        list(dset.sources),
        length,
        max(1, round(config.data.stride * rate)),
        rate,
        dset.channels,
        normalize=True,
        repitch_proba=repitch,
        max_tempo=config.data.max_tempo,
        seed=config.seed,
        rest=any(set(t.stems) - set(dset.sources) for t in splits.train),
    )
    data = TrainData(train, splits.train, splits.valid)
    check_batches(config, dist, data)
    return data


def check_batches(config: TrainConfig, dist: Group, data: TrainData) -> None:
    """Batch size against processes, Remix groups and the dataset size.

    Raises:
        ConfigError: with the numbers and what to change.
    """
    batch, world = config.batch_size, dist.world_size
    if batch % world:
        raise ConfigError(f"batch_size={batch} is not divisible by the {world} processes")
    group = config.augment.remix_group_size
    if group and (batch // world) % group:
        raise ConfigError(
            f"augment.remix_group_size={group} does not divide the per-process "
            f"batch {batch // world}; change batch_size or remix_group_size"
        )
    items, tracks = len(data.train), len(data.train_tracks)
    if items < batch:
        raise ConfigError(
            f"the training set has {items} items from {tracks} tracks, fewer "
            f"than batch_size={batch}: lower batch_size, segment or data.stride, "
            "or add tracks"
        )
    if tracks < batch:
        logger.warning(
            "only %d training tracks for a batch of %d: batches repeat tracks", tracks, batch
        )


class RunLog:
    """Per-epoch outputs of rank 0: ``metrics.jsonl``, optional TensorBoard, summary line."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        echo: Callable[[str], None],
        history: list[dict[str, Any]],
    ) -> None:
        self.path = run_dir / METRICS_NAME
        self.echo = echo
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "log.tensorboard=true needs the tensorboard package (pip install tensorboard)"
                ) from None
        run_dir.mkdir(parents=True, exist_ok=True)
        # The checkpoint's history is the truth: a resumed run rewrites the epochs it keeps.
        self.path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        if tensorboard:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any], epochs: int) -> None:
        """Append ``record`` to the JSONL file, TensorBoard, and echo its summary."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        self.echo(summary_line(record, epochs))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def summary_line(record: dict[str, Any], epochs: int) -> str:
    """One line: epoch, train loss, validation loss and nSDR, best epoch, time."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train/loss']:.4f}"]
    if "valid/loss" in record:
        parts.append(
            f"valid loss {record['valid/loss']:.4f} nSDR {record['valid/nsdr']:.2f} dB "
            f"(do-nothing {record['valid/baseline_nsdr']:.2f})"
        )
    if "valid_ema/nsdr" in record:
        parts.append(f"ema nSDR {record['valid_ema/nsdr']:.2f} dB")
    if record.get("best_epoch"):
        parts.append(f"best epoch {record['best_epoch']}")
    parts.append(f"{record['time']:.1f} s")
    return " | ".join(parts)


def _valid_options(config: TrainConfig) -> ValidOptions:
    rate, val = config.dset.samplerate, config.valid
    apply = ApplyOptions(
        segment=val.segment,
        overlap=val.overlap,
        split=val.split,
        shifts=0,
        batch_size=val.batch_size,
    )
    max_samples = round(val.max_seconds * rate) if val.max_seconds else None
    kind = "mse" if config.loss.kind == "masked_mse" else config.loss.kind  # no batch to mask
    return ValidOptions(list(config.dset.sources), apply, kind, max_samples)


def _end_epoch(
    state: TrainState, config: TrainConfig, data: TrainData, train: dict[str, float], started: float
) -> dict[str, Any]:
    """Validate when due, track the best state; returns the epoch's flat record."""
    groups: dict[str, dict[str, float]] = {"train": train}
    if state.epoch % config.valid.every == 0 or state.epoch == config.epochs:
        groups.update(validate_epoch(state, data.valid_tracks, _valid_options(config)))
        candidates = {"model": groups["valid"]}
        if "valid_ema" in groups:
            candidates["ema"] = groups["valid_ema"]
        update_best(state, candidates, config.valid.best_on)
        if isinstance(state.scheduler, ReduceLROnPlateau):
            state.scheduler.step(groups["valid"]["nsdr"])
    record = {"epoch": state.epoch, "step": state.step, **flatten(groups)}
    record["lr"] = state.optimizer.param_groups[0]["lr"]
    record["best_epoch"] = state.best["epoch"] if state.best else 0
    record["time"] = time.perf_counter() - started
    return record


def _checkpoint_payload(state: TrainState, config: TrainConfig, data: TrainData) -> dict[str, Any]:
    return {
        **state.state_dict(),
        "config": config_to_dict(config),
        "rng": capture_rng(),
        "train_tracks": [t.name for t in data.train_tracks],
        "valid_tracks": [t.name for t in data.valid_tracks],
    }


def _start(state: TrainState, run_dir: Path, resume: bool, restart: bool) -> None:
    """Restore the checkpoint for ``resume``; refuse to overwrite one unless ``restart``."""
    path = run_dir / CHECKPOINT_NAME
    if resume and restart:
        raise ConfigError("--resume and --restart exclude each other")
    if resume and path.is_file():
        saved = load_checkpoint(path)
        state.load_state_dict(saved)
        restore_rng(saved["rng"])
        logger.info("resumed %s after epoch %d", run_dir, state.epoch)
    elif resume:
        raise ConfigError(f"nothing to resume: {path} does not exist")
    elif path.is_file() and not restart:
        raise ConfigError(
            f"{run_dir} already holds a training checkpoint: pass --resume to "
            "continue it, or --restart to start again from scratch"
        )


def _train_epochs(
    state: TrainState,
    config: TrainConfig,
    data: TrainData,
    loader: DataLoader[torch.Tensor],
    run_dir: Path,
    log: RunLog | None,
    last: int,
) -> None:
    """Epochs ``state.epoch + 1 .. last``, each ending with validation and a checkpoint."""
    sampler = loader.batch_sampler
    assert isinstance(sampler, GlobalBatchSampler)
    while state.epoch < last:
        started = time.perf_counter()
        data.train.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch)
        train = run_epoch(
            state, loader, config.log.progress, f"epoch {state.epoch + 1}/{config.epochs}"
        )
        state.epoch += 1
        record = _end_epoch(state, config, data, train, started)
        state.history.append(record)
        if log is not None:
            save_checkpoint(run_dir / CHECKPOINT_NAME, _checkpoint_payload(state, config, data))
            log.write(record, config.epochs)
        state.dist.barrier()


def fit(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    restart: bool = False,
    stop_after: int | None = None,
    echo: Callable[[str], None] | None = None,
    initial: InitialModel | None = None,
) -> list[dict[str, Any]]:
    """Train ``config`` in ``run_dir`` (one process, or one of the processes of ``torchrun``).

    Writes ``config.yaml``, ``metrics.jsonl`` and, after every epoch, ``checkpoint.th``
    (atomically, rank 0). Every error about the configuration or the data is raised before
    the first step.

    Args:
        config: resolved configuration.
        run_dir: run folder (created).
        resume: continue from ``run_dir/checkpoint.th`` (which must exist).
        restart: start from scratch even if ``run_dir`` holds a checkpoint (overwritten at the
            end of the first epoch).
        stop_after: stop after this many epochs in this call (as if interrupted).
        echo: receives the one-line summary of each epoch (default: the logger).
        initial: the initial model of a fine-tuning run (``config.init``), when the caller
            has loaded it already (:func:`~demucs_rr.train.finetune.load_run_config`); else it
            is loaded here. Ignored when resuming: the weights come from the checkpoint.

    Returns:
        The metrics history, one flat dict per epoch (the resumed ones included).
    """
    run_dir = Path(run_dir)
    dist = Group.from_env(config.device, allow_mps=False)
    join_group(dist.rank, dist.world_size, dist.device)
    log: RunLog | None = None
    try:
        model = make_model(config)
        say = (echo or logger.info) if dist.is_main else (lambda _: None)
        adapt_model(config, model, None if resume else initial_of(config, initial), say)
        data = prepare_data(config, model, dist)
        sampler = GlobalBatchSampler(
            len(data.train), config.batch_size, dist.rank, dist.world_size, config.seed
        )
        loader = make_loader(data.train, sampler, config.data.workers, dist.device.type == "cuda")
        state = build_state(config, model, dist, len(sampler))
        _start(state, run_dir, resume, restart)
        if dist.is_main:
            clean_stale(run_dir)  # left by a run killed while checkpointing
            log = RunLog(run_dir, config.log.tensorboard, echo or logger.info, state.history)
            (run_dir / CONFIG_NAME).write_text(config_to_yaml(config), encoding="utf-8")
        last = config.epochs if stop_after is None else min(config.epochs, state.epoch + stop_after)
        _train_epochs(state, config, data, loader, run_dir, log, last)
        return list(state.history)
    finally:
        if log is not None:
            log.close()
        if dist.distributed:
            leave_group()
