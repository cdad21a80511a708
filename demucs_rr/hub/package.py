"""The demucs_rr release package: one ``.safetensors`` file, data only, no pickled classes.

Layout:

* tensors: the model ``state_dict``; floating tensors stored as float32, or float16 when saved
  with ``half=True`` (cast back to float32 at load). Other dtypes are stored unchanged.
* header metadata key ``"demucs_rr"``: a JSON string ::

    {"format_version": 1, "model_class": "Demucs", "kwargs": {...}, "sources": [...],
     "samplerate": 44100, "audio_channels": 2, "segment_length": N,
     "name": optional str, "training": optional object, see TrainingInfo}

``model_class`` is a name of :mod:`demucs_rr.models.registry`; ``kwargs`` are the constructor
arguments the model recorded in its ``init_kwargs`` attribute. Loading rebuilds the model from
those and strict-loads the state (:func:`~demucs_rr.hub.safety.load_weights`), so it needs no
unpickling at all.

Format versions: 1 is a single model (still what :func:`save_package` writes, so older
demucs_rr read it); 2 adds ``"kind"``: ``"model"`` (as version 1) or ``"bag"``, a bag of models
in one file (:mod:`demucs_rr.hub.bag_package`; its header is validated here too). A version
above :data:`FORMAT_VERSION` or an unknown kind is refused with a message to upgrade.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.bag_yaml import BagSpec, parse_bag
from demucs_rr.hub.safety import build_checked, load_weights, read_declared_shapes
from demucs_rr.hub.training_info import TrainingInfo
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.registry import build_model, class_name_of, get_model_class
from demucs_rr.staging import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "MODEL_FORMAT_VERSION",
    "load_single_package",
    "read_package_metadata",
    "read_training_info",
    "save_package",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Newest package format this version of demucs_rr reads (and writes, for bags)."""

MODEL_FORMAT_VERSION = 1
"""Format version of a single-model package (readable by every demucs_rr)."""

KINDS = ("model", "bag")
"""What a version-2 package holds."""

METADATA_KEY = "demucs_rr"


def save_package(
    model: PackagedModel,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    training: TrainingInfo | Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` as a release package at ``path`` (atomically).

    The file is written to a temporary file in the same folder and renamed over ``path`` only
    once complete, so ``path`` is either the old file or the full new one, never partial.

    Args:
        model: an instance of a registered model class (see
            :class:`~demucs_rr.models.base.PackagedModel`).
        path: destination file, conventionally ending in ``.safetensors``.
        name: optional human-readable model name stored in the metadata.
        training: how the model was trained; a JSON object is validated as a
            :class:`TrainingInfo`.
        half: store floating tensors as float16 (half the size; loaded back as float32).

    Returns:
        The destination path.

    Raises:
        PackageFormatError: the model has no ``init_kwargs``, its class is not registered, or the
            metadata is not JSON-able or not a valid training block.
    """
    path = Path(path)
    meta = _metadata(model, name, training)
    try:
        header = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise PackageFormatError(f"package metadata must be JSON-able: {exc}") from exc

    tensors = state_for_saving(model, torch.float16 if half else torch.float32)
    write_package_file(path, tensors, header)
    logger.info("saved package %s (%s, %d tensors)", path, meta["model_class"], len(tensors))
    return path


def write_package_file(path: Path, tensors: dict[str, torch.Tensor], header: str) -> None:
    """Write ``tensors`` with the JSON ``header`` as a safetensors file at ``path``, atomically
    (a temporary file in the same folder renamed over ``path`` once complete)."""
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: header, "format": "pt"})


def _metadata(
    model: PackagedModel, name: str | None, training: TrainingInfo | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The JSON header of ``model``'s package."""
    meta: dict[str, Any] = {"format_version": MODEL_FORMAT_VERSION, **model_entry(model)}
    if name is not None:
        meta["name"] = str(name)
    if training is not None:
        if not isinstance(training, TrainingInfo):
            training = TrainingInfo.from_json(training, "training metadata")
        meta["training"] = training.to_json()
    return meta


def model_entry(model: PackagedModel) -> dict[str, Any]:
    """What rebuilds ``model``: registry class, kwargs, sources, rate, channels, segment.

    Raises:
        PackageFormatError: the model has no ``init_kwargs`` or its class is not registered.
    """
    init_kwargs = getattr(model, "init_kwargs", None)
    if not isinstance(init_kwargs, dict):
        raise PackageFormatError(
            f"cannot package a {type(model).__name__}: it has no `init_kwargs` dict recording its "
            "constructor arguments, so the model could not be rebuilt at load time"
        )
    return {
        "model_class": class_name_of(model),
        "kwargs": init_kwargs,
        "sources": list(model.sources),
        "samplerate": int(model.samplerate),
        "audio_channels": int(model.audio_channels),
        "segment_length": int(model.segment_length),
    }


def state_for_saving(model: PackagedModel, float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CPU, contiguous copy-on-need of the state dict, floating tensors cast to ``float_dtype``;
    tensors sharing memory get their own."""
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


def read_package_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the ``demucs_rr`` metadata of a package without loading tensors.

    The ``training`` entry, when present, is checked against :class:`TrainingInfo` (read it
    typed with :func:`read_training_info`). A bag's members are checked as well.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: not a safetensors file, not a demucs_rr package, malformed metadata,
            or a format version / kind this demucs_rr does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no model package at {path}")
    read_declared_shapes(path)  # offsets and sizes against the file, clear messages
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise PackageFormatError(f"{path} is not a safetensors model package ({exc})") from exc
    if METADATA_KEY not in header:
        hub = " (it is an official Demucs hub file: load it with -n or convert it)"
        raise PackageFormatError(
            f"{path} is a safetensors file but not a demucs_rr package (no {METADATA_KEY!r} "
            f"metadata){hub if 'klass' in header else '; the architecture cannot be known'}"
        )
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise PackageFormatError(f"{path}: package metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise PackageFormatError(f"{path}: package metadata must be a JSON object")
    _check_version(path, meta.get("format_version"), meta.get("kind"))
    if package_kind(meta) == "bag":
        check_bag_metadata(meta, str(path))
    else:
        check_model_metadata(meta, str(path))
    if meta.get("training") is not None:
        TrainingInfo.from_json(meta["training"], str(path))
    return meta


def check_model_metadata(meta: Mapping[str, Any], origin: str) -> None:
    """A single model's ``model_class`` (str) and ``kwargs`` (object) are present.

    Raises:
        PackageFormatError: naming ``origin`` and the missing entry.
    """
    for key, kind in (("model_class", str), ("kwargs", dict)):
        if not isinstance(meta.get(key), kind):
            raise PackageFormatError(f"{origin}: package metadata lacks a valid {key!r} entry")


def package_kind(meta: Mapping[str, Any]) -> str:
    """``"model"`` or ``"bag"``: what validated package metadata describes."""
    return str(meta.get("kind") or "model")


def read_training_info(meta: Mapping[str, Any], origin: str = "package") -> TrainingInfo | None:
    """The typed ``training`` block of package metadata, or None when the package has none.

    Raises:
        PackageFormatError: the block is malformed.
    """
    training = meta.get("training")
    return None if training is None else TrainingInfo.from_json(training, origin)


def _check_version(path: Path, version: object, kind: object = None) -> None:
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
    if kind is not None and kind not in KINDS:
        raise PackageFormatError(
            f"{path} holds a {kind!r} package, which this demucs_rr does not know; upgrade "
            f"demucs_rr (it reads {', '.join(KINDS)} packages)"
        )
    if kind == "bag" and version < 2:
        raise PackageFormatError(f"{path}: a bag package needs format version 2, got {version}")


def build_package_model(
    entry: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], source: str
) -> PackagedModel:
    """Build, on the ``meta`` device, the model of a package entry (``model_class`` and
    ``kwargs``) whose state must have the ``shapes`` declared in the file, so absurd kwargs cost
    no memory (see :func:`~demucs_rr.hub.safety.build_checked`).

    Raises:
        PackageFormatError: unknown class, kwargs that do not build, or shapes that differ.
    """
    name, kwargs = entry["model_class"], entry["kwargs"]
    get_model_class(name)  # unknown class: its own message

    def factory(**kw: Any) -> PackagedModel:
        return build_model(name, kw)

    return build_checked(factory, (), kwargs, shapes, source, what=str(name))


def load_single_package(path: Path, meta: Mapping[str, Any]) -> PackagedModel:
    """Rebuild the single model of the package at ``path`` (validated ``meta``): eval mode,
    float32 weights.

    Raises:
        PackageFormatError: unknown model class, unreadable tensors, or a state that does not
            match the rebuilt model exactly (strict load).
    """
    model = build_package_model(meta, read_declared_shapes(path), str(path))
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise PackageFormatError(f"{path}: cannot read package tensors ({exc})") from exc
    load_weights(model, state, str(path))
    stored_sources = meta.get("sources")
    if stored_sources is not None and list(model.sources) != stored_sources:
        raise PackageFormatError(
            f"{path}: metadata sources {stored_sources} disagree with the rebuilt model's "
            f"{list(model.sources)}"
        )
    return model.eval()


def check_bag_metadata(meta: Mapping[str, Any], origin: str) -> None:
    """Validate the bag entries of package metadata (members, models, weights, segment).

    Raises:
        PackageFormatError: naming ``origin`` and the first problem.
    """
    members = meta.get("members")
    if not isinstance(members, list) or not members:
        raise PackageFormatError(f"{origin}: bag metadata lacks a non-empty 'members' list")
    for j, entry in enumerate(members):
        if not isinstance(entry, dict):
            raise PackageFormatError(f"{origin}: bag member {j} is not a JSON object")
        check_model_metadata(entry, f"{origin} (member {j})")
        if entry.get("training") is not None:
            TrainingInfo.from_json(entry["training"], f"{origin} (member {j})")
    index = meta.get("models")
    ok = isinstance(index, list) and bool(index)
    ok = ok and all(isinstance(i, int) and 0 <= i < len(members) for i in index or [])
    if not ok:
        raise PackageFormatError(f"{origin}: bag 'models' must list member indices")
    signatures = meta.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != len(index or []):
        raise PackageFormatError(f"{origin}: bag 'signatures' must name every entry of 'models'")
    bag_spec(meta, origin)


def bag_spec(meta: Mapping[str, Any], origin: str) -> BagSpec:
    """The bag entries of package metadata as a validated :class:`BagSpec`."""
    return parse_bag(
        {"models": [str(s) for s in meta["signatures"]], "weights": meta.get("weights")}
        | ({"segment": meta["segment"]} if meta.get("segment") is not None else {}),
        str(meta.get("name") or Path(origin).stem),
        origin,
    )
