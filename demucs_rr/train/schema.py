"""The training configuration's schema: the frozen dataclasses a resolved config becomes.

:mod:`demucs_rr.train.config` merges ``conf/`` YAML and ``key=value`` overrides into these
(OmegaConf structured configs: an unknown key or a value of the wrong type is refused there).
``Optional[...]`` rather than ``X | None``: OmegaConf needs it on Python 3.10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from demucs_rr.sources import MUSDB_SOURCES

__all__ = [
    "AugmentConfig",
    "BaseRecord",
    "DataConfig",
    "DsetConfig",
    "LogConfig",
    "LoraConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SyntheticConfig",
    "TrainConfig",
    "ValidConfig",
]


@dataclass(frozen=True)
class ModelConfig:
    """Registry class name and constructor kwargs (sources, channels, rate come from dset)."""

    arch: str = "Demucs"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the generated dataset (``dset.kind=synthetic``)."""

    train_tracks: int = 8
    valid_tracks: int = 2
    seconds: float = 8.0
    seed: int = 0


@dataclass(frozen=True)
class DsetConfig:
    """Where the stems are and what they are (``kind``: musdb | folder | synthetic)."""

    kind: str = "musdb"
    root: Optional[str] = None  # noqa: UP045  (OmegaConf needs Optional on 3.10)
    is_wav: bool = True
    train_split: str = "train"
    valid_split: str = "valid"
    sources: list[str] = field(default_factory=lambda: list(MUSDB_SOURCES))
    samplerate: int = 44100
    channels: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class DataConfig:
    """How training items are cut and loaded."""

    stride: float = 1.0
    workers: int = 4
    repitch: float = 0.2
    max_tempo: float = 12.0


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentations of the Demucs v2 recipe; each can be switched off."""

    shift: float = 1.0
    flip_sign: bool = True
    flip_channels: bool = True
    scale: bool = True
    scale_min: float = 0.25
    scale_max: float = 1.25
    remix_group_size: int = 4
    mixup_probs: list[float] = field(default_factory=list)
    mixup_min: float = 0.5
    mixup_max: float = 1.5


@dataclass(frozen=True)
class LossConfig:
    """Per-source reconstruction loss (see :mod:`demucs_rr.train.losses`)."""

    kind: str = "l1"
    weights: Optional[list[float]] = None  # noqa: UP045
    quantile: float = 0.95
    coarse: bool = True
    multi_stft_weight: float = 0.0
    multi_stft_windows: list[int] = field(default_factory=lambda: [4096, 2048, 1024, 512, 256])
    multi_stft_hop: int = 147
    multi_stft_min_n_fft: int = 2048
    multi_stft_normalized: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Adam, schedule, clipping and EMA."""

    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    schedule: str = "none"
    warmup_steps: int = 0
    plateau_factor: float = 0.95
    plateau_patience: int = 2
    clip_grad: float = 0.0
    ema_decay: float = 0.0


@dataclass(frozen=True)
class ValidConfig:
    """Validation through the separation engine."""

    every: int = 1
    split: bool = True
    segment: Optional[float] = None  # noqa: UP045
    overlap: Optional[float] = None  # noqa: UP045 (None: the model's own overlap)
    batch_size: int = 1
    max_seconds: Optional[float] = None  # noqa: UP045
    best_on: str = "loss"


@dataclass(frozen=True)
class LogConfig:
    """Progress display and optional TensorBoard."""

    progress: bool = True
    tensorboard: bool = False


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the linear and 1x1 convolution layers (rank 0: none)."""

    rank: int = 0
    alpha: Optional[float] = None  # noqa: UP045  (scale alpha / rank; null: alpha = rank)


@dataclass(frozen=True)
class BaseRecord:
    """What ``init`` resolved to, recorded when a fine-tuning run starts (a ``sha256`` given
    on the command line pins it: another file is refused)."""

    sha256: Optional[str] = None  # noqa: UP045
    arch: Optional[str] = None  # noqa: UP045
    sources: list[str] = field(default_factory=list)
    member: Optional[str] = None  # noqa: UP045


@dataclass(frozen=True)
class TrainConfig:
    """The whole resolved training configuration (see ``conf/config.yaml`` for the meanings)."""

    seed: int = 42
    epochs: int = 180
    batch_size: int = 64
    segment: float = 10.0
    device: str = "auto"
    amp: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    dset: DsetConfig = field(default_factory=DsetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    valid: ValidConfig = field(default_factory=ValidConfig)
    log: LogConfig = field(default_factory=LogConfig)
    init: Optional[str] = None  # noqa: UP045
    init_member: Optional[str] = None  # noqa: UP045
    init_repo: Optional[str] = None  # noqa: UP045
    init_new_from: Optional[str] = None  # noqa: UP045
    freeze: list[str] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    base: BaseRecord = field(default_factory=BaseRecord)
