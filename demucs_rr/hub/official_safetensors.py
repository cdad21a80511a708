"""Official Demucs 4.1.0 hub files: one ``{sig}.safetensors`` per model, data only.

Layout (written by the official ``demucs`` 4.1.0 for its HuggingFace repositories):

* tensors: the state dict (name -> tensor), or the flattened leaves of a nested state;
* header metadata (all strings): ``klass`` = dotted class path (``demucs.htdemucs.HTDemucs``),
  ``args`` = JSON list, ``kwargs`` = JSON object in which a Fraction is
  ``{"_type": "fraction", "numerator": 39, "denominator": 5}``; optional ``structure`` = JSON
  tree rebuilding a nested state from the flat tensors, with nodes ``{"_tensor": key}``,
  ``{"_dict": [[k, node], ...]}``, ``{"_list": [...]}``, ``{"_tuple": [...]}``,
  ``{"_class": "module.Name"}`` or a JSON literal.

Nothing is imported or called from the metadata: a ``_class`` node stays an inert
:class:`~demucs_rr.hub.unpickle.OfficialClassRef` (only DiffQ states hold one, and those are
refused), and the class path must be one of the official model classes. The result is the same
:class:`~demucs_rr.hub.official_th.OfficialPackage` as for a pickled ``.th`` package, so both build
through :func:`~demucs_rr.hub.official_th.build_official_model`.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.official_th import OfficialPackage, build_official_model, package_content
from demucs_rr.hub.safety import read_declared_shapes
from demucs_rr.hub.unpickle import OFFICIAL_CLASSES, OfficialClassRef
from demucs_rr.models.base import PackagedModel

__all__ = ["is_hub_file", "load_hub_package", "model_from_hub_file", "read_safetensors_header"]

_MAX_DEPTH = 32
"""Deepest ``structure`` nesting accepted (a state is a dict of a few levels)."""


def read_safetensors_header(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensor is read).

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: not a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no model file at {path}")
    read_declared_shapes(path)  # offsets and sizes against the file, clear messages
    try:
        with safe_open(str(path), framework="pt") as handle:
            header: dict[str, str] = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise PackageFormatError(f"{path} is not a safetensors model file ({exc})") from None
    return header


def is_hub_file(header: dict[str, str]) -> bool:
    """Whether safetensors metadata is that of an official hub file (it has ``klass``)."""
    return "klass" in header and "demucs_rr" not in header


def _fraction_hook(obj: dict[str, Any]) -> Any:
    if obj.get("_type") == "fraction":
        return Fraction(int(obj["numerator"]), int(obj["denominator"]))
    return obj


def _json(header: dict[str, str], key: str, default: str, source: str) -> Any:
    try:
        return json.loads(header.get(key, default), object_hook=_fraction_hook)
    except (ValueError, TypeError, KeyError) as exc:
        raise PackageFormatError(f"{source}: metadata {key!r} is not valid JSON ({exc})") from None


def _rebuild(node: Any, tensors: dict[str, torch.Tensor], source: str, depth: int = 0) -> Any:
    """Rebuild a nested state from a ``structure`` node (recursive, depth-limited)."""
    if depth > _MAX_DEPTH:
        raise PackageFormatError(f"{source}: 'structure' metadata is nested too deeply")
    if isinstance(node, list):
        return [_rebuild(item, tensors, source, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if "_tensor" in node:
        if node["_tensor"] not in tensors:
            raise PackageFormatError(f"{source}: structure names a missing tensor")
        return tensors[node["_tensor"]]
    if "_class" in node:
        return OfficialClassRef(str(node["_class"]))
    if "_dict" in node:
        pairs = node["_dict"]
        return {str(k): _rebuild(v, tensors, source, depth + 1) for k, v in pairs}
    if "_list" in node or "_tuple" in node:
        seq = node["_list"] if "_list" in node else node["_tuple"]
        items = [_rebuild(v, tensors, source, depth + 1) for v in seq]
        return items if "_list" in node else tuple(items)
    return {str(k): _rebuild(v, tensors, source, depth + 1) for k, v in node.items()}


def load_hub_package(path: str | Path) -> OfficialPackage:
    """Read an official 4.1.0 hub ``.safetensors`` file into a package description.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: not a hub file, a class that is not an official model class,
            malformed metadata, or a quantized (DiffQ) state.
    """
    path = Path(path)
    source = str(path)
    header = read_safetensors_header(path)
    if not is_hub_file(header):
        raise PackageFormatError(f"{path}: not an official Demucs hub file (no 'klass' metadata)")
    klass = header["klass"]
    if klass not in OFFICIAL_CLASSES:
        raise PackageFormatError(
            f"refusing to load {path}: its class {klass!r} is not an official Demucs model class"
        )
    args = _json(header, "args", "[]", source)
    kwargs = _json(header, "kwargs", "{}", source)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise PackageFormatError(f"{path}: cannot read the tensors ({exc})") from None
    state: Any = tensors
    if "structure" in header:
        try:
            state = _rebuild(_json(header, "structure", "null", source), tensors, source)
        except (TypeError, ValueError, KeyError) as exc:
            raise PackageFormatError(f"{path}: malformed 'structure' metadata ({exc})") from None
    return package_content(klass, args, kwargs, state, None, source)


def model_from_hub_file(path: str | Path) -> PackagedModel:
    """Build the model of an official hub ``.safetensors`` file, float32 weights, eval mode.

    Raises:
        ModelNotFoundError, PackageFormatError: see :func:`load_hub_package`; also weights that
            do not fit the stored kwargs.
    """
    return build_official_model(load_hub_package(path), str(path))
