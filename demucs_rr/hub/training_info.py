"""The ``training`` block of a release package header: how the packaged weights were trained.

``demucs-rr export`` writes it and ``demucs-rr models list`` reads it, both through
:class:`TrainingInfo`, so the two always agree on the names. JSON layout::

    {"epochs": 40, "best_epoch": 37, "weights": "ema",
     "metrics": {"valid_loss": 0.081, "valid_nsdr": 5.39, "valid_nsdr_drums": 6.1, ...},
     "config": {...}, "train_tracks": [...], "valid_tracks": [...]}

Every key is optional when read (absent: the default below); a present key of the wrong type
is a :class:`~demucs_rr.errors.PackageFormatError`. Unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from demucs_rr.errors import PackageFormatError

__all__ = ["CHECKPOINT_FORMAT", "VALID_LOSS", "VALID_NSDR", "WEIGHTS", "TrainingInfo"]

CHECKPOINT_FORMAT = "demucs_rr.train.checkpoint"
"""``format`` of a training checkpoint (``RUN/checkpoint.th``): not a model file, its run's
package is written by ``demucs-rr export RUN``."""

VALID_NSDR = "valid_nsdr"
"""Metrics key of the validation nSDR (dB, mean over tracks then sources)."""

VALID_LOSS = "valid_loss"
"""Metrics key of the validation loss (normalised units, as the training loss)."""

WEIGHTS = ("model", "ema", "last")
"""Which weights a package holds: the best validated raw or EMA weights, or the last ones."""


@dataclass(frozen=True)
class TrainingInfo:
    """How a packaged model was trained.

    Attributes:
        epochs: epochs trained when the package was written (0: unknown).
        best_epoch: epoch whose validated weights are packaged, or None for the last weights.
        weights: ``model`` or ``ema`` (best validated weights of that kind) or ``last``.
        metrics: validation metrics of the packaged weights, ``{VALID_LOSS, VALID_NSDR,
            "valid_nsdr_<source>"}``; empty when they were not validated.
        config: the resolved training config, as plain JSON values.
        train_tracks: names of the training tracks (evaluation refuses to score them).
        valid_tracks: names of the validation tracks.
    """

    epochs: int = 0
    best_epoch: int | None = None
    weights: str = "last"
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    train_tracks: list[str] = field(default_factory=list)
    valid_tracks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")

    @property
    def valid_nsdr(self) -> float | None:
        """Validation nSDR of the packaged weights in dB, or None when not validated."""
        return self.metrics.get(VALID_NSDR)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the package header (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object, origin: str = "package") -> TrainingInfo:
        """Validate and read a ``training`` JSON object.

        Packages of the first exporter kept the best epoch and the weight kind inside
        ``metrics`` (``"epoch"``, ``"weights"``); they are moved to their own fields.

        Args:
            data: the decoded JSON value.
            origin: what it was read from, for error messages (e.g. the package path).

        Raises:
            PackageFormatError: ``data`` is not an object or an entry has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise PackageFormatError(
                f"{origin}: the 'training' entry must be a JSON object, got {type(data).__name__}"
            )
        metrics = dict(_get(data, "metrics", Mapping, origin) or {})
        best = data.get("best_epoch", metrics.pop("epoch", None))
        weights = data.get("weights", metrics.pop("weights", None))
        return cls(
            epochs=_int(data.get("epochs", 0), "epochs", origin),
            best_epoch=None if best is None else _int(best, "best_epoch", origin),
            weights=_weights(weights, best, origin),
            metrics=_metrics(metrics, origin),
            config=dict(_get(data, "config", Mapping, origin) or {}),
            train_tracks=_names(data, "train_tracks", origin),
            valid_tracks=_names(data, "valid_tracks", origin),
        )


def _get(data: Mapping[str, Any], key: str, kind: type, origin: str) -> Any:
    """``data[key]`` if present and of type ``kind``, None if absent."""
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise PackageFormatError(
            f"{origin}: training.{key} must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _int(value: object, key: str, origin: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PackageFormatError(
            f"{origin}: training.{key} must be a non-negative integer, got {value!r}"
        )
    return value


def _weights(value: object, best: object, origin: str) -> str:
    if value is None:
        return "last" if best is None else "model"
    if value not in WEIGHTS:
        raise PackageFormatError(
            f"{origin}: training.weights must be one of {', '.join(WEIGHTS)}, got {value!r}"
        )
    return str(value)


def _metrics(metrics: dict[str, Any], origin: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PackageFormatError(
                f"{origin}: training.metrics.{key} must be a number, got {value!r}"
            )
        out[str(key)] = float(value)
    return out


def _names(data: Mapping[str, Any], key: str, origin: str) -> list[str]:
    names = _get(data, key, list, origin) or []
    if not all(isinstance(name, str) for name in names):
        raise PackageFormatError(f"{origin}: training.{key} must be a list of track names")
    return list(names)
