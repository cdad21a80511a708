"""Loading a model from a file, whatever its format.

Accepted files:

- ``*.safetensors``: a demucs_rr package (one model or a bag, :mod:`.package`,
  :mod:`.bag_package`), or an official 4.1.0 hub file (``klass``/``args``/``kwargs`` metadata,
  :mod:`.official_safetensors`);
- ``*.th`` / ``*.pt``: an official pickled package, v2 or v3/v4 (restricted unpickler,
  :mod:`.official_th`), or a v2 bare state dict whose architecture comes from its file name
  (``{name}-{sig}.th`` or ``{name}.th`` of a known pretrained name);
- ``*.yaml`` / ``*.yml``: an official bag (``models`` / ``weights`` / ``segment``) whose member
  files sit in the same folder (:mod:`.bag_yaml`);
- ``*.ckpt``: an MSST / UVR checkpoint with its MSST config (given, or beside it as
  ``NAME.yaml``; :mod:`.msst`).

Every file gives a :class:`~demucs_rr.hub.loaded.LoadedModel` (one member for a single model)
so that the same result can be run (``.build()``), converted or fine-tuned.
"""

from __future__ import annotations

import copy
import pickletools
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import demucs_rr.hub.official_safetensors as official_safetensors
import demucs_rr.hub.official_th as official_th
from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.bag_package import load_bag_package
from demucs_rr.hub.bag_yaml import BagSpec, check_member_hash, find_member, read_bag_yaml
from demucs_rr.hub.catalogue import PRETRAINED, PretrainedInfo
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.msst import CHECKPOINT_SUFFIXES, load_msst
from demucs_rr.hub.package import load_single_package, package_kind, read_package_metadata
from demucs_rr.hub.safety import build_checked, load_weights
from demucs_rr.hub.training_info import CHECKPOINT_FORMAT
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.registry import build_model

__all__ = [
    "BAG_SUFFIXES",
    "HUB_NAME",
    "MODEL_SUFFIXES",
    "is_official_package",
    "is_training_checkpoint",
    "load_bag",
    "load_file",
    "load_member",
    "load_state_model",
    "locate_in",
    "preset_from_filename",
]

HUB_NAME = re.compile(r"^(?P<name>.+)-(?P<sig>[0-9a-f]{8})\.th$")
BAG_SUFFIXES = (".yaml", ".yml")
MODEL_SUFFIXES = (".safetensors", ".th", ".pt", *BAG_SUFFIXES, *CHECKPOINT_SUFFIXES)
"""File suffixes ``-n`` accepts."""


def _pickle_strings(data: bytes) -> set[str]:
    """The strings a pickle stream holds (opcodes only: nothing is unpickled)."""
    try:
        return {str(arg) for op, arg, _ in pickletools.genops(data) if "UNICODE" in op.name}
    except Exception:  # not a pickle: let the real loader produce the error
        return set()


def _torch_file_strings(path: Path) -> set[str]:
    """The strings of the pickled object of a ``torch.save`` file; tensor data are not read."""
    if zipfile.is_zipfile(path):  # torch >= 1.6 format: archive/data.pkl
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            return _pickle_strings(archive.read(pkl)) if pkl is not None else set()
    found: set[str] = set()  # legacy format: magic number, protocol, sys info, then the object
    with open(path, "rb") as fh:
        for _ in range(4):
            try:
                found |= {str(a) for op, a, _ in pickletools.genops(fh) if "UNICODE" in op.name}
            except Exception:
                break
    return found


def is_official_package(path: Path) -> bool:
    """True for a pickled Demucs package (dict with ``'klass'``) rather than a bare state dict.

    Only the pickle opcodes are scanned (nothing is unpickled); tensor data are not read.
    """
    return "klass" in _torch_file_strings(path)


def is_training_checkpoint(path: Path) -> bool:
    """True for a demucs_rr training checkpoint (``RUN/checkpoint.th``), by its opcodes."""
    return CHECKPOINT_FORMAT in _torch_file_strings(path)


def preset_from_filename(path: Path) -> PretrainedInfo | None:
    """The v2 pretrained entry a file name designates (``{name}-{sig}.th``, ``{name}.th``)."""
    match = HUB_NAME.match(path.name)
    if match and match["name"] in PRETRAINED:
        return PRETRAINED[match["name"]]
    return PRETRAINED.get(path.stem) if path.suffix == ".th" else None


def load_state_model(path: Path, info: PretrainedInfo) -> PackagedModel:
    """Build ``info``'s architecture and strict-load the bare state dict at ``path``."""
    state = official_th.load_state_file(path)
    source = f"{path} ({info.name})"
    shapes = {k: tuple(v.shape) for k, v in state.items()}

    def factory(**kwargs: object) -> PackagedModel:
        return build_model(info.model_class, kwargs)

    model = build_checked(factory, (), copy.deepcopy(info.kwargs), shapes, source)
    load_weights(model, state, source)
    return model.eval()


def load_member(path: Path) -> PackagedModel:
    """Load one network file: an official pickled package or hub file, or a single-model
    package (hashes are the locator's business, see
    :func:`~demucs_rr.hub.bag_yaml.check_member_hash`).

    Raises:
        ModelNotFoundError: the file does not exist.
        PackageFormatError: unsafe or malformed file, or a demucs_rr bag.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"no model file at {path}")
    if path.suffix != ".safetensors":
        return official_th.model_from_official_package(path)
    if official_safetensors.is_hub_file(official_safetensors.read_safetensors_header(path)):
        return official_safetensors.model_from_hub_file(path)
    meta = read_package_metadata(path)
    if package_kind(meta) == "bag":
        raise PackageFormatError(f"{path} holds a bag of models, not a single model")
    return load_single_package(path, meta)


def load_bag(spec: BagSpec, locate: Callable[[str], Path]) -> LoadedModel:
    """Load every member of ``spec``; ``locate(sig)`` gives the file of a signature.

    Raises:
        ModelNotFoundError, DownloadError, PackageFormatError: from ``locate`` and the loaders.
    """
    loaded: dict[str, PackagedModel] = {}
    for sig in spec.models:
        if sig not in loaded:
            loaded[sig] = load_member(locate(sig))
    bag = LoadedModel(
        spec.name, [loaded[s] for s in spec.models], list(spec.models), spec.weights, spec.segment
    )
    bag.check()
    return bag


def locate_in(folder: Path, bag: str) -> Callable[[str], Path]:
    """A ``locate`` for :func:`load_bag` that looks in ``folder`` only."""

    def locate(sig: str) -> Path:
        path = find_member(sig, folder)
        if path is None:
            raise ModelNotFoundError(
                f"bag {bag}: no file for model {sig} in {folder} (expected {sig}.th, "
                f"{sig}-HASH.th or {sig}.safetensors)"
            )
        return check_member_hash(path)

    return locate


def _load_safetensors(path: Path) -> LoadedModel:
    if official_safetensors.is_hub_file(official_safetensors.read_safetensors_header(path)):
        return LoadedModel.single(official_safetensors.model_from_hub_file(path), path.stem)
    meta = read_package_metadata(path)
    if package_kind(meta) == "bag":
        return load_bag_package(path, meta)
    return LoadedModel.single(load_single_package(path, meta), str(meta.get("name") or path.stem))


def _load_pickle(path: Path, preset: PretrainedInfo | None) -> LoadedModel:
    strings = _torch_file_strings(path)
    if CHECKPOINT_FORMAT in strings:
        raise PackageFormatError(
            f"{path} is a training checkpoint, not a model: write its package with "
            f"`demucs-rr export {path.parent}` and separate with the .safetensors it names"
        )
    if "klass" in strings:
        model = official_th.model_from_official_package(path).eval()
        return LoadedModel.single(model, path.stem)
    preset = preset or preset_from_filename(path)
    if preset is None:
        raise PackageFormatError(
            f"{path} holds bare weights and its name does not tell the architecture. Pass a "
            "demucs_rr .safetensors package or an official package, or keep the official file "
            f"name NAME-SIG.th of a known model ({', '.join(PRETRAINED)})"
        )
    return LoadedModel.single(load_state_model(path, preset), preset.name)


def load_file(
    path: Path, preset: PretrainedInfo | None = None, config: Path | None = None
) -> LoadedModel:
    """Load the network(s) of a model file (see the module docstring for the formats).

    Args:
        path: the file.
        preset: architecture of a bare v2 state dict (default: from the file name).
        config: the MSST config of a ``.ckpt`` (default: ``NAME.yaml`` beside it); refused for
            other files.

    Raises:
        ModelNotFoundError: a file (or a bag member, or a checkpoint's config) does not exist.
        PackageFormatError: unsupported suffix, unsafe or malformed file, weights that do not
            fit.
    """
    path = Path(path)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return load_msst(path, config)
    if config is not None:
        raise PackageFormatError(
            f"{path}: a model config is only for MSST .ckpt checkpoints; this file describes "
            "its model itself"
        )
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in BAG_SUFFIXES:
        spec = read_bag_yaml(path)
        return load_bag(spec, locate_in(path.parent, spec.name))
    if path.suffix not in (".th", ".pt"):
        raise PackageFormatError(
            f"{path}: unsupported model file type {path.suffix!r}; expected a .safetensors "
            "package, an official Demucs .th/.pt file, a bag .yaml or an MSST .ckpt"
        )
    return _load_pickle(path, preset)
