"""Training checkpoints: written atomically every epoch, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
classes), so loading it runs no code. Keys (see :func:`demucs_rr.train.loop.TrainState`):
``format``, ``version``, ``config`` (plain dict), ``epoch``, ``step``, ``model``, ``optimizer``,
``scheduler``, ``scaler``, ``ema``, ``rng``, ``history``, ``best``, ``train_tracks``,
``valid_tracks``. It is for resuming only; ``demucs-rr export`` makes the release package.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demucs_rr.errors import OutputError, PackageFormatError, one_line
from demucs_rr.hub.training_info import CHECKPOINT_FORMAT
from demucs_rr.staging import atomic_write, is_disk_full

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.th"
CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain values."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    name, keys, pos, has_gauss, cached = np_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored when CUDA is available)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder + rename).

    ``format`` and ``version`` keys are added. A crash leaves either the previous checkpoint
    or the new one, never a partial file.

    Raises:
        OutputError: the file cannot be written (``no space left on device while writing
            checkpoint PATH`` when the disk is full); the temporary file is removed and the
            previous checkpoint stays as it was.
    """
    path = Path(path)
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    try:
        with atomic_write(path, fsync=True) as tmp, open(tmp, "wb") as handle:
            torch.save(data, handle)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports ENOSPC as RuntimeError
        raise _save_error(path, exc) from None
    return path


def _save_error(path: Path, exc: BaseException) -> OutputError:
    """One line for a failed checkpoint write; says that the previous checkpoint is kept."""
    kept = "; the previous checkpoint is unchanged" if path.is_file() else ""
    if is_disk_full(exc, path.parent):
        return OutputError(f"no space left on device while writing checkpoint {path}{kept}")
    return OutputError(f"cannot write checkpoint {path}: {one_line(exc)}{kept}")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        PackageFormatError: missing file, not a demucs_rr training checkpoint, unsafe content,
            or a newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise PackageFormatError(f"no training checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PackageFormatError(f"{path} is not a readable training checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise PackageFormatError(f"{path} is not a demucs_rr training checkpoint")
    version = data.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise PackageFormatError(
            f"{path}: checkpoint version {version!r} is not supported "
            f"(this demucs_rr reads up to {CHECKPOINT_VERSION})"
        )
    return data
