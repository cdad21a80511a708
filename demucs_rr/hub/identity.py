"""What a model name stands for, as a short string that changes when the model does.

A queued ``serve`` job records the identity of the model it was submitted for, and the worker
that runs it checks that it holds the same model (a model file replaced under the same path,
or a worker of another server sharing the jobs folder, would otherwise give another model's
stems without a word).

The identity follows the lookup order of :func:`demucs_rr.hub.loader.resolve`:

- a model file (a path, or a file of the ``--repo`` folder): ``sha256:<hex>`` of the file; for a
  bag ``.yaml``, of the YAML and of each member file it names;
- a released name: ``<name>:<sha256 prefix of each file>``; released files are checked against
  those prefixes when they are loaded, so the name and prefixes pin the weights.

Hashes are kept per (path, size, mtime): a file is read again only when it changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from demucs_rr.hub.bag_yaml import find_member, read_bag_yaml
from demucs_rr.hub.catalogue import PRETRAINED
from demucs_rr.hub.fetch import sha256_file
from demucs_rr.hub.formats import BAG_SUFFIXES
from demucs_rr.hub.releases import OFFICIAL_BAGS
from demucs_rr.hub.sources import FolderSource, unknown_model

__all__ = ["model_identity"]

_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    """sha256 of a file, reused while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _file_identity(path: Path) -> str:
    if path.suffix not in BAG_SUFFIXES:
        return f"sha256:{_file_hash(path)}"
    combined = hashlib.sha256(_file_hash(path).encode())
    for sig in read_bag_yaml(path).models:
        member = find_member(sig, path.parent)
        combined.update(f"{sig}={_file_hash(member) if member else 'missing'}".encode())
    return f"sha256:{combined.hexdigest()}"


def model_identity(name_or_path: str | os.PathLike[str], repo: Path | str | None = None) -> str:
    """The identity of what ``load_model(name_or_path, repo=repo)`` would load now.

    Raises:
        ModelNotFoundError: nothing matches ``name_or_path``.
        PackageFormatError: a bag YAML cannot be read.
        OSError: a model file cannot be read.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        return _file_identity(path)
    if repo is not None:
        found = FolderSource(Path(repo)).find(name)
        if found is not None:
            return _file_identity(found)
    if name in OFFICIAL_BAGS:
        files = OFFICIAL_BAGS[name].files
        return f"{name}:{','.join(f.sha256_prefix for f in files)}"
    if name in PRETRAINED:
        return f"{name}:{PRETRAINED[name].sha256_prefix}"
    raise unknown_model(name, Path(repo).expanduser() if repo is not None else None)
