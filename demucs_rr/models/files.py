"""Loading a model from a file, whatever its format.

Accepted files:

- ``*.safetensors``: a demucs_rr package (one model or a bag, :mod:`.package`), or an official
  4.1.0 hub file (``klass``/``args``/``kwargs`` metadata, :mod:`.hub`);
- ``*.th`` / ``*.pt``: an official pickled package, v2 or v3/v4 (restricted unpickler,
  :mod:`.legacy`), or a v2 bare state dict whose architecture comes from its file name
  (``{name}-{sig}.th`` or ``{name}.th`` of a known pretrained name);
- ``*.yaml`` / ``*.yml``: an official bag (``models`` / ``weights`` / ``segment``) whose member
  files sit in the same folder (:mod:`.official_repo`).

Every loader gives a :class:`~demucs_rr.models.official_repo.LoadedBag` (one member for a
single model) so that the same result can be run (``.build()``) or converted.
"""

from __future__ import annotations

import copy
import pickletools
import re
import zipfile
from pathlib import Path

from demucs_rr.errors import PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.catalogue import PRETRAINED, PretrainedInfo
from demucs_rr.models.official_repo import LoadedBag, load_bag, locate_in, read_bag_yaml
from demucs_rr.models.package import load_state_strict
from demucs_rr.models.registry import build_model

__all__ = [
    "BAG_SUFFIXES",
    "MODEL_SUFFIXES",
    "is_official_package",
    "load_file_as_bag",
    "load_state_model",
    "preset_from_filename",
    "single",
]

HUB_NAME = re.compile(r"^(?P<name>.+)-(?P<sig>[0-9a-f]{8})\.th$")
BAG_SUFFIXES = (".yaml", ".yml")
MODEL_SUFFIXES = (".safetensors", ".th", ".pt", *BAG_SUFFIXES)
"""File suffixes ``-n`` accepts."""


def single(model: PackagedModel, name: str) -> LoadedBag:
    """A one-member :class:`LoadedBag` holding ``model``."""
    return LoadedBag(name, [model], [name])


def _pickle_has_klass(data: bytes) -> bool:
    """Whether a pickle stream mentions the string ``'klass'`` (official package marker)."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if arg == "klass" and "UNICODE" in opcode.name:
                return True
    except Exception:  # not a pickle: let the real loader produce the error
        return False
    return False


def is_official_package(path: Path) -> bool:
    """True for a pickled Demucs package (dict with ``'klass'``) rather than a bare state dict.

    Only the pickle opcodes are scanned (nothing is unpickled); tensor data are not read.
    """
    if zipfile.is_zipfile(path):  # torch >= 1.6 format: archive/data.pkl
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            return pkl is not None and _pickle_has_klass(archive.read(pkl))
    # legacy torch format: magic number, protocol, sys info, then the object's pickle
    with open(path, "rb") as fh:
        for _ in range(4):
            try:
                ops = list(pickletools.genops(fh))
            except Exception:
                return False
            if any(arg == "klass" and "UNICODE" in op.name for op, arg, _ in ops):
                return True
    return False


def preset_from_filename(path: Path) -> PretrainedInfo | None:
    """The v2 pretrained entry a file name designates (``{name}-{sig}.th``, ``{name}.th``)."""
    match = HUB_NAME.match(path.name)
    if match and match["name"] in PRETRAINED:
        return PRETRAINED[match["name"]]
    return PRETRAINED.get(path.stem) if path.suffix == ".th" else None


def load_state_model(path: Path, info: PretrainedInfo) -> PackagedModel:
    """Build ``info``'s architecture and strict-load the bare state dict at ``path``."""
    from demucs_rr.models import legacy

    state = legacy.load_state_file(path)
    model = build_model(info.model_class, copy.deepcopy(info.kwargs))
    load_state_strict(model, state, f"{path} ({info.name})")
    return model.eval()


def _load_safetensors(path: Path) -> LoadedBag:
    from demucs_rr.models.hub import is_hub_file, model_from_hub_file, read_safetensors_header
    from demucs_rr.models.package import load_model_package, package_kind, read_package_metadata

    if is_hub_file(read_safetensors_header(path)):
        return single(model_from_hub_file(path), path.stem)
    meta = read_package_metadata(path)
    if package_kind(meta) == "bag":
        from demucs_rr.models.bag_package import load_bag_package

        return load_bag_package(path, meta)
    return single(load_model_package(path), str(meta.get("name") or path.stem))


def _load_pickle(path: Path, preset: PretrainedInfo | None) -> LoadedBag:
    if is_official_package(path):
        from demucs_rr.models import legacy

        return single(legacy.model_from_official_package(path).eval(), path.stem)
    preset = preset or preset_from_filename(path)
    if preset is None:
        raise PackageFormatError(
            f"{path} holds bare weights and its name does not tell the architecture. Pass a "
            "demucs_rr .safetensors package or an official package, or keep the official file "
            f"name NAME-SIG.th of a known model ({', '.join(PRETRAINED)})"
        )
    return single(load_state_model(path, preset), preset.name)


def load_file_as_bag(path: Path, preset: PretrainedInfo | None = None) -> LoadedBag:
    """Load the model(s) of a file (see the module docstring for the formats).

    Args:
        path: the file.
        preset: architecture of a bare v2 state dict (default: from the file name).

    Raises:
        ModelNotFoundError: a file (or a bag member) does not exist.
        PackageFormatError: unsupported suffix, unsafe or malformed file, weights that do not
            fit.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in BAG_SUFFIXES:
        spec = read_bag_yaml(path)
        return load_bag(spec, locate_in(path.parent, spec.name))
    if path.suffix not in (".th", ".pt"):
        raise PackageFormatError(
            f"{path}: unsupported model file type {path.suffix!r}; expected a .safetensors "
            "package, an official Demucs .th/.pt file or a bag .yaml"
        )
    return _load_pickle(path, preset)
