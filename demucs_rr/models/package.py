"""The demucs_rr release package: one ``.safetensors`` file, data only, no pickled classes.

Layout:

* tensors: the model ``state_dict``; floating tensors stored as float32, or float16 when saved
  with ``half=True`` (cast back to float32 at load). Other dtypes are stored unchanged.
* header metadata key ``"demucs_rr"``: a JSON string ::

    {"format_version": 1, "model_class": "Demucs", "kwargs": {...}, "sources": [...],
     "samplerate": 44100, "audio_channels": 2, "segment_length": N,
     "name": optional str, "training": optional dict (config, metrics, track lists)}

``model_class`` is a name of :mod:`demucs_rr.models.registry`; ``kwargs`` are the constructor
arguments the model recorded in its ``init_kwargs`` attribute. Loading rebuilds the model from
those and strict-loads the state, so it needs no unpickling at all.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.models.registry import build_model, class_name_of

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Newest package format this version of demucs_rr writes and reads."""

METADATA_KEY = "demucs_rr"


def save_package(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    training: dict | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` as a release package at ``path`` (atomically).

    The file is written to a temporary file in the same folder and renamed over ``path`` only
    once complete, so ``path`` is either the old file or the full new one, never partial.

    Args:
        model: a registered model class instance carrying ``init_kwargs`` (JSON-able dict) and
            the metadata attributes ``sources``, ``samplerate``, ``audio_channels``,
            ``segment_length``.
        path: destination file, conventionally ending in ``.safetensors``.
        name: optional human-readable model name stored in the metadata.
        training: optional JSON-able dict (training config, metrics, train/valid track lists).
        half: store floating tensors as float16 (half the size; loaded back as float32).

    Returns:
        The destination path.

    Raises:
        PackageFormatError: the model has no ``init_kwargs``, its class is not registered, or the
            metadata is not JSON-able.
    """
    path = Path(path)
    init_kwargs = getattr(model, "init_kwargs", None)
    if not isinstance(init_kwargs, dict):
        raise PackageFormatError(
            f"cannot package a {type(model).__name__}: it has no `init_kwargs` dict recording its "
            "constructor arguments, so the model could not be rebuilt at load time"
        )
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_class": class_name_of(model),
        "kwargs": init_kwargs,
        "sources": list(model.sources),
        "samplerate": int(model.samplerate),
        "audio_channels": int(model.audio_channels),
        "segment_length": int(model.segment_length),
    }
    if name is not None:
        meta["name"] = str(name)
    if training is not None:
        meta["training"] = training
    try:
        header = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise PackageFormatError(f"package metadata must be JSON-able: {exc}") from exc

    tensors = _state_for_saving(model, torch.float16 if half else torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: header, "format": "pt"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("saved package %s (%s, %d tensors)", path, meta["model_class"], len(tensors))
    return path


def _state_for_saving(model: nn.Module, float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CPU, contiguous copy-on-need of the state dict; tensors sharing memory get their own."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(float_dtype)
        tensor = tensor.contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if ident in seen:  # tied weights: safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        tensors[key] = tensor
    return tensors


def read_package_metadata(path: str | os.PathLike) -> dict:
    """Read and validate the ``demucs_rr`` metadata of a package without loading tensors.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: not a safetensors file, not a demucs_rr package, malformed metadata,
            or a format version this demucs_rr does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no model package at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise PackageFormatError(f"{path} is not a safetensors model package ({exc})") from exc
    if METADATA_KEY not in header:
        raise PackageFormatError(
            f"{path} is a safetensors file but not a demucs_rr package (no {METADATA_KEY!r} "
            "metadata); the architecture cannot be known"
        )
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise PackageFormatError(f"{path}: package metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise PackageFormatError(f"{path}: package metadata must be a JSON object")
    _check_version(path, meta.get("format_version"))
    for key, kind in (("model_class", str), ("kwargs", dict)):
        if not isinstance(meta.get(key), kind):
            raise PackageFormatError(f"{path}: package metadata lacks a valid {key!r} entry")
    return meta


def _check_version(path: Path, version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PackageFormatError(
            f"{path}: unknown package format version {version!r}; the file is damaged or was "
            "not written by demucs_rr"
        )
    if version > FORMAT_VERSION:
        raise PackageFormatError(
            f"{path} was written by a newer demucs_rr (format {version}); upgrade demucs_rr "
            f"(this version reads formats up to {FORMAT_VERSION})"
        )


def load_package(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model stored in a package, in eval mode, with float32 weights.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: see :func:`read_package_metadata`; also an unknown model class or
            a state that does not match the rebuilt model exactly (strict load).
    """
    path = Path(path)
    meta = read_package_metadata(path)
    model = build_model(meta["model_class"], meta["kwargs"])
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise PackageFormatError(f"{path}: cannot read package tensors ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PackageFormatError(
            f"{path}: stored weights do not match {meta['model_class']}"
            f"({json.dumps(meta['kwargs'])}): {exc}"
        ) from exc
    stored_sources = meta.get("sources")
    if stored_sources is not None and list(getattr(model, "sources", [])) != stored_sources:
        raise PackageFormatError(
            f"{path}: metadata sources {stored_sources} disagree with the rebuilt model's "
            f"{list(model.sources)}"
        )
    return model.eval()
