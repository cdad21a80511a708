"""Where models come from: one small protocol, one class per place.

A source answers three questions about model names (``-n NAME_OR_PATH``): does it hold
``name`` (:meth:`ModelSource.has`), load it (:meth:`ModelSource.get`, the member networks as a
:class:`~demucs_rr.hub.loaded.LoadedModel`), and what does it hold (:meth:`ModelSource.rows`,
for ``demucs-rr models list``). The places:

- :class:`FileSource`: a name that is a path to a model file, any format (:mod:`.formats`);
- :class:`FolderSource`: a ``--repo`` folder: ``NAME.safetensors``, ``NAME-*.th``, ``NAME.th``,
  ``NAME.yaml`` (a bag whose members are in the folder), ``NAME.ckpt`` (its config beside it);
- :class:`ReleasedSource`: the released names (Demucs 3/4 bags and v2 states,
  :mod:`.releases`, :mod:`.catalogue`; band-split checkpoints, :mod:`.msst_releases`), from an
  optional member folder, the verified cache or a download;
- :class:`AnySource`: the first of several sources that holds a name.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from demucs_rr.errors import ModelNotFoundError
from demucs_rr.hub.bag_yaml import check_member_hash
from demucs_rr.hub.catalogue import PRETRAINED, UNSUPPORTED, PretrainedInfo, cached_path, model_url
from demucs_rr.hub.fetch import download, verify_cached
from demucs_rr.hub.formats import MODEL_SUFFIXES, load_file, load_state_model
from demucs_rr.hub.listing import ModelRow, folder_rows, released_rows
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.msst_releases import MSST_RELEASES, load_msst_release
from demucs_rr.hub.releases import OFFICIAL_BAGS, load_official_bag

__all__ = [
    "AnySource",
    "FileSource",
    "FolderSource",
    "ModelSource",
    "ReleasedSource",
    "known_names",
    "unknown_model",
]

logger = logging.getLogger(__name__)


class ModelSource(Protocol):
    """A place that holds models by name."""

    def has(self, name: str) -> bool:
        """Whether ``name`` designates a model of this source (nothing is loaded)."""
        ...

    def get(self, name: str) -> LoadedModel:
        """Load model ``name``.

        Raises:
            ModelNotFoundError, DownloadError, PackageFormatError: the model cannot be loaded.
        """
        ...

    def rows(self) -> list[ModelRow]:
        """One ``models list`` row per model this source holds."""
        ...


class FileSource:
    """Names that are paths of model files; ``config`` is the MSST config of a ``.ckpt``."""

    def __init__(self, config: Path | None = None) -> None:
        self.config = config

    def has(self, name: str) -> bool:
        """Whether ``name`` is an existing file."""
        return Path(name).expanduser().is_file()

    def get(self, name: str) -> LoadedModel:
        """Load the file ``name`` (any format of :mod:`demucs_rr.hub.formats`)."""
        return load_file(Path(name).expanduser(), config=self.config)

    def rows(self) -> list[ModelRow]:
        """Files are not listed."""
        return []


class FolderSource:
    """A folder of model files (``--repo``): ``NAME.safetensors``, ``NAME-*.th``, ``NAME.th``,
    bag ``NAME.yaml`` files (members in the same folder) and ``NAME.ckpt`` checkpoints
    (``config``, or their config beside them).

    Raises:
        ModelNotFoundError: ``folder`` is not a folder.
    """

    def __init__(self, folder: Path, config: Path | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.config = config
        if not self.folder.is_dir():
            raise ModelNotFoundError(f"model repository {self.folder} is not a folder")

    def find(self, name: str) -> Path | None:
        """The file of ``name`` in the folder (the first of ``NAME.safetensors``, ``NAME-*.th``,
        ``NAME.th``, ``NAME.ckpt``, ``NAME.yaml``, ``NAME.yml``), or None."""
        folder = self.folder
        candidates = [folder / f"{name}.safetensors"]
        candidates += sorted(Path(p) for p in glob.glob(str(folder / f"{glob.escape(name)}-*.th")))
        candidates += [folder / f"{name}.th", folder / f"{name}.ckpt"]  # a .ckpt's NAME.yaml is
        candidates += [folder / f"{name}.yaml", folder / f"{name}.yml"]  # its config, not a bag
        return next((c for c in candidates if c.is_file()), None)

    def has(self, name: str) -> bool:
        """Whether the folder holds a file for ``name``."""
        return self.find(name) is not None

    def get(self, name: str) -> LoadedModel:
        """Load ``name``'s file (a ``{sig}-{hash}.th`` name is checked against its hash)."""
        found = self.find(name)
        if found is None:
            raise ModelNotFoundError(f"no model {name!r} in {self.folder}")
        return load_file(check_member_hash(found), PRETRAINED.get(name), self.config)

    def rows(self) -> list[ModelRow]:
        """A row per model file of the folder."""
        return folder_rows(self.folder)


class ReleasedSource:
    """The released names: Demucs 3/4 bags (members from ``member_folder``, the cache or a
    download), v2 / Conv-TasNet states (cache, verified once, else a download) and band-split
    checkpoints (``member_folder``, else the cache, sha256 pinned on the first download)."""

    def __init__(self, member_folder: Path | None = None, progress: bool = True) -> None:
        self.member_folder = member_folder
        self.progress = progress

    def has(self, name: str) -> bool:
        """Whether ``name`` is a released name (refused DiffQ names included)."""
        return name in OFFICIAL_BAGS or name in PRETRAINED or name in MSST_RELEASES

    def get(self, name: str) -> LoadedModel:
        """Load the released model ``name``, fetching its files when missing."""
        if name in OFFICIAL_BAGS:
            return load_official_bag(name, self.member_folder, self.progress)
        if name in MSST_RELEASES:
            return load_msst_release(MSST_RELEASES[name], self.member_folder, self.progress)
        if name not in PRETRAINED:
            raise unknown_model(name)
        return self._v2(PRETRAINED[name])

    def _v2(self, info: PretrainedInfo) -> LoadedModel:
        url = model_url(info)
        target = cached_path(info)
        if target.is_file():
            verify_cached(target, info.sha256_prefix, url)
        else:
            logger.info("downloading %s from %s", info.name, url)
            download(url, target, info.sha256_prefix, progress=self.progress)
        return LoadedModel.single(load_state_model(target, info), info.name)

    def rows(self) -> list[ModelRow]:
        """A row per released name, with the state of its cached files."""
        return released_rows()


class AnySource:
    """The first of ``sources`` that holds a name."""

    def __init__(self, sources: Sequence[ModelSource]) -> None:
        self.sources = list(sources)

    def has(self, name: str) -> bool:
        """Whether any source holds ``name``."""
        return any(source.has(name) for source in self.sources)

    def get(self, name: str) -> LoadedModel:
        """Load ``name`` from the first source that holds it."""
        for source in self.sources:
            if source.has(name):
                return source.get(name)
        raise unknown_model(name)

    def rows(self) -> list[ModelRow]:
        """The rows of every source, in order."""
        return [row for source in self.sources for row in source.rows()]


def known_names() -> list[str]:
    """Every name ``-n`` accepts without a file: Demucs 3/4 releases, v2, then band-split."""
    official = [name for name, info in OFFICIAL_BAGS.items() if info.refused is None]
    return official + list(PRETRAINED) + list(MSST_RELEASES)


def unknown_model(name: str, folder: Path | None = None) -> ModelNotFoundError:
    """The one-line error for a name no source holds (a path that does not exist, an unknown
    name, or a name deliberately not offered)."""
    if name in UNSUPPORTED:
        return ModelNotFoundError(UNSUPPORTED[name])
    if os.sep in name or Path(name).suffix in MODEL_SUFFIXES:
        return ModelNotFoundError(f"no model file at {Path(name).expanduser()}")
    extra = f" (also not found in {folder})" if folder is not None else ""
    return ModelNotFoundError(
        f"unknown model {name!r}{extra}: not an existing file and not a pretrained name. Known "
        f"pretrained models: {', '.join(known_names())} (see `demucs-rr models list`)"
    )
