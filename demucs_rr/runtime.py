"""Conventions shared by every command: the cache folder and device names.

* :func:`cache_dir`: ``$DEMUCS_RR_CACHE``, else ``$XDG_CACHE_HOME/demucs_rr``, else
  ``~/.cache/demucs_rr`` (model downloads, decoded MUSDB18, dataset metadata).
* :func:`check_device` / :func:`resolve_device`: the device vocabulary ``auto``, ``cpu``,
  ``cuda``, ``cuda:N`` and ``mps``, used by ``separate``, ``evaluate`` and ``train``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from demucs_rr.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_NAMES", "cache_dir", "check_device", "resolve_device"]

#: Device names every command accepts (``cuda:N`` selects GPU ``N``).
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def cache_dir() -> Path:
    """``$DEMUCS_RR_CACHE``, else ``$XDG_CACHE_HOME/demucs_rr``, else ``~/.cache/demucs_rr``."""
    if os.environ.get("DEMUCS_RR_CACHE"):
        return Path(os.environ["DEMUCS_RR_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "demucs_rr"
    return Path.home() / ".cache" / "demucs_rr"


# --------------------------------------------------------------------------- devices


def check_device(name: str, *, allow_mps: bool = True) -> str:
    """Validate a device name without looking at the hardware; returns it.

    Raises:
        ConfigError: ``device 'NAME': ...``, naming the accepted values.
    """
    names = DEVICE_NAMES if allow_mps else tuple(n for n in DEVICE_NAMES if n != "mps")
    if not isinstance(name, str) or _DEVICE.fullmatch(name) is None:
        raise ConfigError(f"device {name!r}: not one of {', '.join(names)}")
    if name == "mps" and not allow_mps:
        raise ConfigError(f"device {name!r}: not supported here; use {', '.join(names)}")
    return name


def _unavailable(name: str, why: str) -> ConfigError:
    return ConfigError(f"device {name!r}: {why}; use cpu (or auto)")


def resolve_device(name: str, local_rank: int = 0, *, allow_mps: bool = True) -> torch.device:
    """Turn a device name into an available :class:`torch.device`.

    ``auto`` prefers CUDA, then Apple MPS (when ``allow_mps``), then the CPU. ``auto`` and
    ``cuda`` pick GPU ``local_rank`` (modulo the GPU count), so every ``torchrun`` process of a
    machine gets its own; an explicit ``cuda:N`` is kept.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        local_rank: this process's rank on the machine.
        allow_mps: whether MPS may be used (training does not support it).

    Raises:
        ConfigError: unknown name, or a device that is not available.
    """
    import torch

    check_device(name, allow_mps=allow_mps)
    if name == "cpu":
        return torch.device("cpu")
    cuda = torch.cuda.is_available()
    mps = allow_mps and torch.backends.mps.is_available()
    if name == "auto" and not cuda:
        return torch.device("mps" if mps else "cpu")
    if name == "mps":
        if not mps:
            raise _unavailable(name, "Apple MPS is not available")
        return torch.device("mps")
    if not cuda:
        raise _unavailable(name, "no CUDA GPU is available")
    count = torch.cuda.device_count()
    if name in ("auto", "cuda"):
        return torch.device("cuda", local_rank % count)
    index = int(name.split(":")[1])
    if index >= count:
        raise _unavailable(name, f"only {count} CUDA GPU(s) are visible")
    return torch.device("cuda", index)
