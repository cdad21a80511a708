"""The training state and how it is built from a :class:`~demucs_rr.train.config.TrainConfig`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from demucs_rr.distributed import Group
from demucs_rr.errors import ConfigError, PackageFormatError
from demucs_rr.models.base import PackagedModel, as_module
from demucs_rr.models.registry import build_model
from demucs_rr.train.augment import AugmentPipeline, build_augment
from demucs_rr.train.config import TrainConfig, model_kwargs
from demucs_rr.train.ema import EMA
from demucs_rr.train.losses import MultiStft, SourceLoss

__all__ = ["TrainState", "amp_dtype", "build_state", "make_model", "make_scheduler"]

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything a step reads or changes.

    Attributes:
        model: the bare model (what is saved and validated).
        net: what the step calls: ``model`` or its ``DistributedDataParallel`` wrapper.
        optimizer: the optimiser over ``model``'s parameters.
        augment: batch augmentation pipeline (kept in training mode).
        criterion: per-source loss.
        dist: this process's place in the job.
        seed: base seed of the data order and augmentation draws.
        scheduler: per-step LR schedule, MSST's plateau schedule (stepped on each validation's
            nSDR, see :func:`make_scheduler`), or None.
        scaler: fp16 gradient scaler, or None (fp32 and bf16 need none).
        ema: EMA of the weights, or None.
        amp_dtype: autocast dtype, or None for full precision.
        clip_grad: max global gradient norm; 0 disables clipping.
        epoch: epochs completed.
        step: optimiser steps completed.
        history: one flat metrics dict per completed epoch.
        best: best validated weights so far: ``{"score", "epoch", "weights", "metrics",
            "state"}`` (``weights`` is ``"model"`` or ``"ema"``), or None.
    """

    model: PackagedModel
    net: nn.Module
    optimizer: torch.optim.Optimizer
    augment: AugmentPipeline
    criterion: SourceLoss
    dist: Group
    seed: int
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: EMA | None = None
    amp_dtype: torch.dtype | None = None
    clip_grad: float = 0.0
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The resumable part of the state, as plain values (see :mod:`.checkpoint`)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "history": list(self.history),
            "best": self.best,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` produced (onto the current devices)."""
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        for part, saved in (
            (self.scheduler, data["scheduler"]),
            (self.scaler, data["scaler"]),
            (self.ema, data["ema"]),
        ):
            if part is not None and saved is not None:
                part.load_state_dict(saved)
        self.epoch, self.step = int(data["epoch"]), int(data["step"])
        self.history = list(data["history"])
        self.best = data["best"]


def make_model(config: TrainConfig) -> PackagedModel:
    """The model of ``config``, initialised from ``config.seed`` (same weights on every rank).

    Raises:
        ConfigError: the kwargs do not fit the model class.
    """
    torch.manual_seed(config.seed)
    try:
        return build_model(config.model.arch, model_kwargs(config))
    except (PackageFormatError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {config.model.arch}: {exc}") from None


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` = auto | fp32 | bf16 | fp16 on ``device`` (None: fp32).

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere.

    Raises:
        ConfigError: fp16 asked for on the CPU.
    """
    if setting == "fp32":
        return None
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("amp=fp16 needs a CUDA device; use amp=fp32 or amp=bf16 on the CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    plateau: tuple[float, int] = (0.95, 2),
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The LR schedule of ``optim.schedule``.

    ``none`` / ``cosine``: a per-step factor, linear warmup then constant or cosine to 0.
    ``plateau``: MSST's ``ReduceLROnPlateau(mode="max", factor, patience)`` (``plateau``),
    stepped with the validation nSDR after each validation, never per step.

    Returns None when there is neither warmup nor schedule (the v2 recipe).
    """
    if schedule == "plateau":
        reduce_by, patience = plateau
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=reduce_by, patience=patience
        )
    if schedule == "none" and warmup_steps == 0:
        return None

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_criterion(config: TrainConfig) -> SourceLoss:
    """The loss of ``config.loss``: waveform term, source weights, optional multi-STFT term."""
    loss = config.loss
    multi_stft = None
    if loss.multi_stft_weight > 0:
        multi_stft = MultiStft(
            weight=loss.multi_stft_weight,
            windows=tuple(loss.multi_stft_windows),
            hop=loss.multi_stft_hop,
            min_n_fft=loss.multi_stft_min_n_fft,
            normalized=loss.multi_stft_normalized,
        )
    return SourceLoss(
        config.dset.sources,
        loss.kind,
        loss.weights,
        quantile=loss.quantile,
        coarse=loss.coarse,
        multi_stft=multi_stft,
    )


def build_state(
    config: TrainConfig, model: PackagedModel, dist: Group, steps_per_epoch: int
) -> TrainState:
    """Optimiser, schedule, AMP, EMA, augmentation and loss around ``model`` (moved to the
    device and wrapped in DDP when distributed)."""
    model = model.to(dist.device)
    opt = config.optim
    trainable = [p for p in model.parameters() if p.requires_grad]  # freeze, LoRA
    optimizer = torch.optim.Adam(
        trainable, lr=opt.lr, betas=(opt.beta1, opt.beta2), weight_decay=opt.weight_decay
    )
    dtype = amp_dtype(config.amp, dist.device)
    rate = config.dset.samplerate
    aug = config.augment
    augment = build_augment(
        shift=round(aug.shift * rate),
        flip_sign=aug.flip_sign,
        flip_channels=aug.flip_channels,
        scale=(aug.scale_min, aug.scale_max) if aug.scale else None,
        remix_group_size=aug.remix_group_size,
        mixup=(list(aug.mixup_probs), aug.mixup_min, aug.mixup_max) if aug.mixup_probs else None,
    ).to(dist.device)
    return TrainState(
        model=model,
        net=dist.wrap(as_module(model)),
        optimizer=optimizer,
        augment=augment,
        criterion=make_criterion(config),
        dist=dist,
        seed=config.seed,
        scheduler=make_scheduler(
            optimizer,
            opt.schedule,
            opt.warmup_steps,
            config.epochs * steps_per_epoch,
            (opt.plateau_factor, opt.plateau_patience),
        ),  # fmt: skip
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        ema=EMA(model, opt.ema_decay) if opt.ema_decay > 0 else None,
        amp_dtype=dtype,
        clip_grad=opt.clip_grad,
    )
