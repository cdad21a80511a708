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
those and strict-loads the state (:func:`load_state_strict`), so it needs no unpickling at all.

Format versions: 1 is a single model (still what :func:`save_package` writes, so older
demucs_rr read it); 2 adds ``"kind"``: ``"model"`` (as version 1) or ``"bag"``, a bag of models
in one file (:mod:`demucs_rr.models.bag_package`). A version above :data:`FORMAT_VERSION` or an
unknown kind is refused with a message to upgrade.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.fsmode import normal_file_mode
from demucs_rr.models.base import PackagedModel, SeparationModel
from demucs_rr.models.registry import build_model, class_name_of, get_model_class
from demucs_rr.models.safety import build_checked, check_shapes, read_declared_shapes
from demucs_rr.models.training_info import TrainingInfo

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "MODEL_FORMAT_VERSION",
    "TrainingInfo",
    "load_model_package",
    "load_package",
    "load_state_strict",
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: header, "format": "pt"})
        os.chmod(tmp, normal_file_mode())  # mkstemp (and save_file) leave 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        from demucs_rr.models.bag_package import check_bag_metadata

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


def load_state_strict(model: PackagedModel, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` exactly: same keys, same shapes, or nothing is loaded.

    Floating tensors are cast to float32 first (packages may store float16). Every mismatch
    is reported at once, on one line::

        SOURCE: weights do not match Demucs: missing keys [a, b]; unexpected keys [c];
        shape mismatch [d: stored (2, 7), model (2, 8)]

    (lists longer than 5 end with ``(+N more)``).

    Args:
        model: the freshly built model.
        state: name -> tensor, e.g. from a package or an official file.
        source: where ``state`` comes from (a path), first in the error message.

    Raises:
        PackageFormatError: on missing / unexpected keys or shape mismatches.
    """
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a dtype that cannot be copied
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise PackageFormatError(
            f"{source}: cannot load the weights into {type(model).__name__}: {lines[-1][:300]}"
        ) from None


def build_package_model(
    entry: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], source: str
) -> PackagedModel:
    """Build the model of a package entry (``model_class`` and ``kwargs``) whose state must
    have the ``shapes`` declared in the file; checked on the ``meta`` device first, so absurd
    kwargs cost no memory (see :func:`~demucs_rr.models.safety.build_checked`).

    Raises:
        PackageFormatError: unknown class, kwargs that do not build, or shapes that differ.
    """
    name, kwargs = entry["model_class"], entry["kwargs"]
    get_model_class(name)  # unknown class: its own message

    def factory(**kw: Any) -> PackagedModel:
        return build_model(name, kw)

    return build_checked(factory, (), kwargs, shapes, source, what=str(name))


def load_package(path: str | os.PathLike[str]) -> SeparationModel:
    """Rebuild the model stored in a package, in eval mode, with float32 weights.

    A single-model package gives that model; a bag package gives a
    :class:`~demucs_rr.models.bag.BagOfModels` of its members.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: see :func:`read_package_metadata`; also an unknown model class or
            a state that does not match the rebuilt model exactly (strict load).
    """
    meta = read_package_metadata(path)
    if package_kind(meta) == "bag":
        from demucs_rr.models.bag_package import load_bag_package

        return load_bag_package(path, meta).build()
    return _load_model(Path(path), meta)


def load_model_package(path: str | os.PathLike[str]) -> PackagedModel:
    """Rebuild the single model stored in a package (eval mode, float32 weights).

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: as :func:`load_package`; also for a bag package.
    """
    meta = read_package_metadata(path)
    if package_kind(meta) == "bag":
        raise PackageFormatError(f"{path} holds a bag of models, not a single model")
    return _load_model(Path(path), meta)


def _load_model(path: Path, meta: dict[str, Any]) -> PackagedModel:
    model = build_package_model(meta, read_declared_shapes(path), str(path))
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise PackageFormatError(f"{path}: cannot read package tensors ({exc})") from exc
    load_state_strict(model, state, str(path))
    stored_sources = meta.get("sources")
    if stored_sources is not None and list(model.sources) != stored_sources:
        raise PackageFormatError(
            f"{path}: metadata sources {stored_sources} disagree with the rebuilt model's "
            f"{list(model.sources)}"
        )
    return model.eval()
