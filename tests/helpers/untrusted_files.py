"""Small valid model files of every format demucs_rr reads, for the untrusted-file tests."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from demucs_rr.hub.package import save_package
from demucs_rr.models.demucs_v2 import Demucs

TINY_KWARGS: dict[str, Any] = {
    "sources": ["a", "b"],
    "channels": 2,
    "depth": 1,
    "lstm_layers": 1,
    "context": 1,
    "samplerate": 8000,
    "segment_length": 800,
}


def tiny_model() -> Demucs:
    """A 2-source Demucs of a few hundred parameters (deterministic weights)."""
    torch.manual_seed(0)
    return Demucs(**TINY_KWARGS)


def write_package(path: Path) -> Path:
    """A demucs_rr ``.safetensors`` package of :func:`tiny_model` (float16, ~2 kB)."""
    return save_package(tiny_model(), path, half=True)


def write_hub(path: Path, kwargs: dict[str, Any] | None = None) -> Path:
    """An official 4.1.0 hub ``.safetensors`` file of :func:`tiny_model`."""
    metadata = {
        "klass": "demucs.model.Demucs",
        "args": "[]",
        "kwargs": json.dumps(TINY_KWARGS if kwargs is None else kwargs),
    }
    save_file(tiny_model().state_dict(), str(path), metadata=metadata)
    return path


def official_package(kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict an official pickled ``.th`` package holds (class stands in by its path)."""
    return {
        "klass": "demucs.model.Demucs",
        "args": [],
        "kwargs": dict(TINY_KWARGS if kwargs is None else kwargs),
        "state": tiny_model().state_dict(),
        "training_args": None,
    }


def write_official(path: Path, kwargs: dict[str, Any] | None = None, **extra: Any) -> Path:
    """An official pickled ``.th`` package of :func:`tiny_model` (``extra`` entries added);
    ``klass`` pickles as ``demucs.model.Demucs`` through a stand-in module."""
    module = types.ModuleType("demucs.model")
    klass = type("Demucs", (), {"__module__": "demucs.model"})
    module.Demucs = klass  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("demucs", "demucs.model")}
    sys.modules["demucs"], sys.modules["demucs.model"] = types.ModuleType("demucs"), module
    try:
        torch.save({**official_package(kwargs), "klass": klass, **extra}, path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return path


def write_state(path: Path) -> Path:
    """An official v2 hub state file (``torch.save`` of a plain state dict)."""
    torch.save(tiny_model().state_dict(), path)
    return path


def raw_safetensors(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a JSON-able ``header`` (or raw bytes) and a payload."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data
