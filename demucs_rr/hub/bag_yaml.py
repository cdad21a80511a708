"""Bag YAMLs of official Demucs model repositories and the member files they name.

A repository is a folder holding official model files named by their signature ``sig`` (8 hex
digits): a pickled package ``{sig}.th`` or ``{sig}-{hash}.th`` (``hash`` = first 8 hex digits
of the file's sha256, checked on load), or a 4.1.0 hub file ``{sig}.safetensors``; and bag
YAMLs ``NAME.yaml``::

    models: ['955717e8']            # member signatures, in order
    weights: [[1, 0, 0, 0], ...]    # optional: per member, one weight per source
    segment: 44                     # optional: chunk length in seconds for every member

The released bags (``htdemucs``, ``htdemucs_ft``, ``htdemucs_6s``, ``hdemucs_mmi``, ``mdx``,
``mdx_extra``, and the refused DiffQ ``mdx_q`` / ``mdx_extra_q``) ship with demucs_rr as YAML
files in ``demucs_rr/hub/remote/``. :func:`demucs_rr.hub.formats.load_bag` loads the members
of a :class:`BagSpec`.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demucs_rr.errors import ModelNotFoundError, PackageFormatError, one_line
from demucs_rr.hub.fetch import sha256_file

__all__ = [
    "BagSpec",
    "builtin_bag",
    "builtin_bag_names",
    "check_member_hash",
    "find_member",
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
        raise PackageFormatError(f"{path}: not a readable bag YAML ({one_line(exc)})") from None
    return parse_bag(data, path.stem, str(path))


def _builtin_folder() -> Any:
    return importlib.resources.files("demucs_rr.hub") / "remote"


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
