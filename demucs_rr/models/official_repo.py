"""Official Demucs model repositories: bag YAMLs and the member files they name.

A repository is a folder holding official model files named by their signature ``sig`` (8 hex
digits): a pickled package ``{sig}.th`` or ``{sig}-{hash}.th`` (``hash`` = first 8 hex digits
of the file's sha256, checked on load), or a 4.1.0 hub file ``{sig}.safetensors``; and bag
YAMLs ``NAME.yaml``::

    models: ['955717e8']            # member signatures, in order
    weights: [[1, 0, 0, 0], ...]    # optional: per member, one weight per source
    segment: 44                     # optional: chunk length in seconds for every member

The released bags (``htdemucs``, ``htdemucs_ft``, ``htdemucs_6s``, ``hdemucs_mmi``, ``mdx``,
``mdx_extra``, and the refused DiffQ ``mdx_q`` / ``mdx_extra_q``) ship with demucs_rr as YAML
files in ``demucs_rr/models/remote/``. Loading a bag gives a :class:`LoadedBag` whose
:meth:`LoadedBag.build` makes the model the engine runs: the member itself for a one-model bag
without weights or segment, else a :class:`~demucs_rr.models.bag.BagOfModels`.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.models.base import PackagedModel, SeparationModel
from demucs_rr.models.fetch import sha256_file

__all__ = [
    "BagSpec",
    "LoadedBag",
    "builtin_bag",
    "builtin_bag_names",
    "check_member_hash",
    "find_member",
    "load_bag",
    "load_member",
    "parse_bag",
    "read_bag_yaml",
]

logger = logging.getLogger(__name__)

MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
"""What a bag may name a member (official signatures are 8 hex digits): a plain file stem."""
HASHED_NAME = re.compile(r"^(?P<sig>[0-9a-f]{8})-(?P<hash>[0-9a-f]{8})\.th$")
_BAG_KEYS = ("models", "weights", "segment")


@dataclass(frozen=True)
class BagSpec:
    """A bag of models as its YAML describes it.

    Attributes:
        name: the bag name (file stem).
        models: member signatures, in order (a signature may repeat).
        weights: per member, one weight per source; None: all 1.
        segment: chunk length in seconds given to every member; None: their own.
    """

    name: str
    models: list[str]
    weights: list[list[float]] | None = None
    segment: float | None = None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_bag(data: Any, name: str, source: str) -> BagSpec:
    """Validate the content of a bag YAML.

    Raises:
        PackageFormatError: not a mapping, no ``models`` list of signatures, ``weights`` not
            one list of numbers per model, or ``segment`` not a positive number.
    """
    if not isinstance(data, dict):
        raise PackageFormatError(f"{source}: a bag YAML must be a mapping with a 'models' list")
    unknown = sorted(set(map(str, data)) - set(_BAG_KEYS))
    if unknown:
        logger.warning("%s: ignoring unknown bag keys %s", source, ", ".join(unknown))
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise PackageFormatError(f"{source}: 'models' must be a non-empty list of signatures")
    bad = [m for m in models if not MEMBER_NAME.match(m)]
    if bad:
        raise PackageFormatError(
            f"{source}: bag member {bad[0]!r} is not a plain file name (letters, digits, _ . -)"
        )
    weights = data.get("weights")
    if weights is not None:
        ok = isinstance(weights, list) and len(weights) == len(models)
        ok = ok and all(isinstance(w, list) and all(map(_number, w)) for w in weights)
        if not ok:
            raise PackageFormatError(
                f"{source}: 'weights' must hold one list of numbers per model ({len(models)})"
            )
        weights = [[float(v) for v in row] for row in weights]
    segment = data.get("segment")
    if segment is not None and (not _number(segment) or segment <= 0):
        raise PackageFormatError(f"{source}: 'segment' must be a positive number of seconds")
    return BagSpec(name, list(models), weights, None if segment is None else float(segment))


def read_bag_yaml(path: str | Path) -> BagSpec:
    """Read and validate the bag YAML at ``path`` (its name is the file stem).

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        PackageFormatError: unreadable YAML or invalid content (see :func:`parse_bag`).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no bag YAML at {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PackageFormatError(f"{path}: not a readable bag YAML ({first})") from None
    return parse_bag(data, path.stem, str(path))


def _builtin_folder() -> Any:
    return importlib.resources.files("demucs_rr.models") / "remote"


def builtin_bag_names() -> list[str]:
    """Names of the bags shipped with demucs_rr."""
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in _builtin_folder().iterdir()
        if entry.name.endswith(".yaml")
    )


def builtin_bag(name: str) -> BagSpec | None:
    """The shipped bag ``name``, or None when demucs_rr has no bag of that name."""
    import yaml

    entry = _builtin_folder() / f"{name}.yaml"
    if not entry.is_file():
        return None
    return parse_bag(yaml.safe_load(entry.read_text(encoding="utf-8")), name, f"built-in {name}")


def find_member(sig: str, folder: Path) -> Path | None:
    """The file of model ``sig`` in ``folder``: ``{sig}.safetensors``, ``{sig}-{hash}.th`` or
    ``{sig}.th``; None when there is none.

    Raises:
        PackageFormatError: several files hold model ``sig``.
    """
    found = [p for p in (folder / f"{sig}.safetensors", folder / f"{sig}.th") if p.is_file()]
    found += sorted(
        p for p in folder.glob(f"{sig}-*.th") if HASHED_NAME.match(p.name) and p.is_file()
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise PackageFormatError(
            f"{folder} holds several files for model {sig} ({names}); keep one"
        )
    return found[0] if found else None


def check_member_hash(path: Path) -> Path:
    """Check a ``{sig}-{hash}.th`` file against the sha256 prefix its name gives (other names
    are not checked); returns ``path``.

    Raises:
        PackageFormatError: the file's sha256 does not start with ``hash``.
    """
    match = HASHED_NAME.match(path.name)
    if match is None:
        return path
    digest = sha256_file(path)
    if not digest.startswith(match["hash"]):
        raise PackageFormatError(
            f"{path}: its sha256 starts with {digest[:8]}, not with the {match['hash']} its name "
            "promises; the file is damaged or not the official one"
        )
    return path


def load_member(path: Path) -> PackagedModel:
    """Load one official (or demucs_rr) model file: a pickled package, a hub file or a
    single-model package (hashes are the locator's business, see :func:`check_member_hash`).

    Raises:
        ModelNotFoundError: the file does not exist.
        PackageFormatError: unsafe or malformed file, or a demucs_rr bag.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"no model file at {path}")
    if path.suffix == ".safetensors":
        from demucs_rr.models.hub import is_hub_file, model_from_hub_file, read_safetensors_header
        from demucs_rr.models.package import load_model_package

        if is_hub_file(read_safetensors_header(path)):
            return model_from_hub_file(path)
        return load_model_package(path)
    from demucs_rr.models.legacy import model_from_official_package

    return model_from_official_package(path)


@dataclass
class LoadedBag:
    """The loaded members of a bag with the bag's weights and segment.

    Attributes:
        name: bag name.
        members: one model per entry of the YAML's ``models`` (a repeated signature is the
            same model object).
        signatures: the YAML's ``models``.
        weights: per member, one weight per source; None: all 1.
        segment: chunk length in seconds for every member; None: their own.
    """

    name: str
    members: list[PackagedModel]
    signatures: list[str]
    weights: list[list[float]] | None = None
    segment: float | None = None

    def check(self) -> None:
        """Members agree on sources, rate and channels; weights fit them.

        Raises:
            PackageFormatError: naming the bag and the first disagreement.
        """
        first = self.members[0]
        for sig, model in zip(self.signatures, self.members, strict=True):
            for attr in ("sources", "samplerate", "audio_channels"):
                if getattr(model, attr) != getattr(first, attr):
                    raise PackageFormatError(
                        f"bag {self.name}: member {sig} has {attr} {getattr(model, attr)}, "
                        f"the first member {getattr(first, attr)}"
                    )
        if self.weights is not None and any(len(w) != len(first.sources) for w in self.weights):
            raise PackageFormatError(
                f"bag {self.name}: every weight list needs {len(first.sources)} values, one per "
                f"source ({', '.join(first.sources)})"
            )

    def build(self) -> SeparationModel:
        """The model to run: the member itself for a one-model bag without weights or segment,
        else a :class:`~demucs_rr.models.bag.BagOfModels` (eval mode)."""
        self.check()
        if len(self.members) == 1 and self.weights is None and self.segment is None:
            return self.members[0].eval()
        from demucs_rr.models.bag import BagOfModels

        bag = BagOfModels(self.members, weights=self.weights, segment=self.segment)
        return bag.eval()


def load_bag(spec: BagSpec, locate: Callable[[str], Path]) -> LoadedBag:
    """Load every member of ``spec``; ``locate(sig)`` gives the file of a signature.

    Raises:
        ModelNotFoundError, DownloadError, PackageFormatError: from ``locate`` and the loaders.
    """
    loaded: dict[str, PackagedModel] = {}
    for sig in spec.models:
        if sig not in loaded:
            loaded[sig] = load_member(locate(sig))
    bag = LoadedBag(
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
