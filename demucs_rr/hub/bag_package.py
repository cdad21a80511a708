"""Bag packages: a bag of models (members, per-source weights, segment) in one ``.safetensors``.

Layout (package format version 2, ``"kind": "bag"``):

* tensors: the state dict of each distinct member ``j`` under the prefix ``members.{j}.``;
  floating tensors float32, or float16 when saved with ``half=True``;
* header metadata key ``"demucs_rr"``: a JSON string ::

    {"format_version": 2, "kind": "bag", "name": "htdemucs_ft",
     "sources": [...], "samplerate": 44100, "audio_channels": 2,
     "members": [{"model_class": "HTDemucs", "kwargs": {...}, "sources": [...],
                  "samplerate": 44100, "audio_channels": 2, "segment_length": N,
                  "training": {...}}, ...],   # optional: how a member was trained
     "models": [0, 1, 2, 3],          # member index of each bag entry (entries may repeat)
     "signatures": ["f7e0c4bc", ...],  # official signature of each entry (or a name)
     "weights": [[1, 0, 0, 0], ...] | null, "segment": 44.0 | null}

Loading rebuilds every member from its class and kwargs, strict-loads its prefixed tensors
and gives a :class:`~demucs_rr.hub.loaded.LoadedModel` (``.build()`` -> the model).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from demucs_rr.errors import PackageFormatError
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.package import (
    bag_spec,
    build_package_model,
    model_entry,
    state_for_saving,
    write_package_file,
)
from demucs_rr.hub.safety import load_weights, read_declared_shapes
from demucs_rr.hub.training_info import TrainingInfo
from demucs_rr.models.base import PackagedModel

__all__ = ["BAG_FORMAT_VERSION", "load_bag_package", "save_bag_package"]

logger = logging.getLogger(__name__)

BAG_FORMAT_VERSION = 2
"""Package format version that introduced bags."""

PREFIX = "members"


def _distinct(members: list[PackagedModel]) -> tuple[list[PackagedModel], list[int]]:
    """Distinct member objects (in first-use order) and the index of each entry among them."""
    distinct: list[PackagedModel] = []
    index: list[int] = []
    for model in members:
        found = next((j for j, m in enumerate(distinct) if m is model), None)
        if found is None:
            distinct.append(model)
            found = len(distinct) - 1
        index.append(found)
    return distinct, index


def save_bag_package(
    bag: LoadedModel,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    half: bool = False,
    training: Sequence[TrainingInfo | None] | None = None,
) -> Path:
    """Write ``bag`` as one bag package at ``path`` (atomically).

    Args:
        bag: the members (each a registered model class with ``init_kwargs``), weights and
            segment.
        path: destination, conventionally ``NAME.safetensors``.
        name: model name stored in the metadata (default: the bag's name).
        half: store floating tensors as float16 (exact for official float16 weights).
        training: per bag entry, how that member was trained (kept in its member entry).

    Returns:
        The destination path.

    Raises:
        PackageFormatError: members disagree or cannot be packaged.
    """
    path = Path(path)
    bag.check()
    distinct, index = _distinct(bag.members)
    first = distinct[0]
    meta: dict[str, Any] = {
        "format_version": BAG_FORMAT_VERSION,
        "kind": "bag",
        "name": name or bag.name,
        "sources": list(first.sources),
        "samplerate": int(first.samplerate),
        "audio_channels": int(first.audio_channels),
        "members": [_entry(model, bag.members, training) for model in distinct],
        "models": index,
        "signatures": list(bag.signatures),
        "weights": bag.weights,
        "segment": bag.segment,
    }
    dtype = torch.float16 if half else torch.float32
    tensors: dict[str, torch.Tensor] = {}
    for j, model in enumerate(distinct):
        for key, value in state_for_saving(model, dtype).items():
            tensors[f"{PREFIX}.{j}.{key}"] = value
    write_package_file(path, tensors, json.dumps(meta))
    logger.info("saved bag package %s (%d members)", path, len(distinct))
    return path


def _entry(
    model: PackagedModel,
    entries: list[PackagedModel],
    training: Sequence[TrainingInfo | None] | None,
) -> dict[str, Any]:
    """The member entry of ``model`` (with the training block of its first bag entry)."""
    entry = model_entry(model)
    info = None
    if training is not None:
        info = training[next(i for i, m in enumerate(entries) if m is model)]
    if info is not None:
        entry["training"] = info.to_json()
    return entry


def load_bag_package(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> LoadedModel:
    """Rebuild the members of the bag package at ``path`` (validated ``meta``), eval mode.

    Raises:
        PackageFormatError: unreadable tensors, unknown classes or weights that do not match.
    """
    path = Path(path)
    shapes = read_declared_shapes(path)
    members: list[PackagedModel] = []
    for j, entry in enumerate(meta["members"]):
        prefix = f"{PREFIX}.{j}."
        member = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
        members.append(build_package_model(entry, member, f"{path} (member {j})"))
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise PackageFormatError(f"{path}: cannot read package tensors ({exc})") from exc
    for j, model in enumerate(members):
        prefix = f"{PREFIX}.{j}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_weights(model, state, f"{path} (member {j})")
        model.eval()
    extra = [k for k in tensors if not k.startswith(f"{PREFIX}.")]
    if extra:
        raise PackageFormatError(f"{path}: tensors outside any member ({', '.join(extra[:5])})")
    spec = bag_spec(meta, str(path))
    bag = LoadedModel(
        spec.name, [members[i] for i in meta["models"]], spec.models, spec.weights, spec.segment
    )
    bag.check()
    return bag
