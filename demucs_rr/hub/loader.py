"""The one loader: ``load_model(name_or_path)`` -> a model ready to separate.

Lookup order for ``name_or_path`` (:mod:`.sources`): an existing file path (any format of
:mod:`.formats`); then, with ``repo``, the folder's ``NAME.safetensors``, ``NAME-*.th``,
``NAME.th``, ``NAME.yaml`` or ``NAME.ckpt``; then a released name (Demucs 3/4 members from
``repo``, the cache or a download; v2 states from the cache or a download; band-split
checkpoints from ``repo``, the cache or a download).

Checksum policy: a download is hashed while it streams and only renamed into the cache when the
sha256 prefix matches. A file already in the cache is hashed once more on first use (it may have
been put there by hand, as the download error message suggests) and the result is recorded in a
``.verified`` sidecar holding the digest, size and mtime; later runs only compare size and mtime,
so a 1 GB model is not rehashed every run. Files given by path (``-n file.th``) are not
checksummed: the strict state-dict load is their check; official member files named
``{sig}-{hash}.th`` in a ``--repo`` folder are checked against ``hash``. Nobody publishes
checksums of the band-split checkpoints: their sha256 is pinned in the cache on the first
download and checked on every later load (:func:`~demucs_rr.hub.fetch.fetch_pinned`).

The DiffQ-quantized ``demucs_quantized``, ``mdx_q`` and ``mdx_extra_q`` are refused with the
unquantized model to use instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from demucs_rr.errors import ModelNotFoundError
from demucs_rr.hub.formats import MODEL_SUFFIXES
from demucs_rr.hub.listing import ModelRow
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.sources import (
    AnySource,
    FileSource,
    FolderSource,
    ModelSource,
    ReleasedSource,
    unknown_model,
)
from demucs_rr.models.base import SeparationModel

__all__ = ["list_models", "load_model", "resolve"]


def _sources(repo: Path | None, progress: bool, config: Path | None = None) -> list[ModelSource]:
    folder = FolderSource(Path(repo), config) if repo is not None else None
    places: list[ModelSource] = [FileSource(config)]
    if folder is not None:
        places.append(folder)
    places.append(ReleasedSource(folder.folder if folder else None, progress))
    return places


def resolve(
    name_or_path: str | os.PathLike[str],
    repo: Path | None = None,
    progress: bool = True,
    config: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """The member networks of ``name_or_path`` before assembly (see the module docstring).

    ``config`` is the MSST config of a ``.ckpt`` file (default: ``NAME.yaml`` beside it).

    Raises:
        ModelNotFoundError: nothing matches ``name_or_path``, or it is a refused DiffQ model.
        DownloadError: a released file cannot be downloaded or fails its checksum.
        PackageFormatError: the file found is not a loadable model.
    """
    name_or_path = os.fspath(name_or_path)
    sources = _sources(repo, progress, Path(config).expanduser() if config is not None else None)
    file = sources[0]
    if file.has(name_or_path):
        return file.get(name_or_path)
    if os.sep in name_or_path or Path(name_or_path).suffix in MODEL_SUFFIXES:
        raise unknown_model(name_or_path)
    source = AnySource(sources[1:])
    in_folder = isinstance(sources[1], FolderSource) and sources[1].has(name_or_path)
    if config is not None and not in_folder:  # a released name describes its model itself
        raise ModelNotFoundError(
            f"--model-config goes with an MSST .ckpt file, and {name_or_path!r} is not one"
        )
    if not source.has(name_or_path):
        raise unknown_model(name_or_path, Path(repo).expanduser() if repo is not None else None)
    return source.get(name_or_path)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    repo: Path | str | None = None,
    progress: bool = True,
    config: str | os.PathLike[str] | None = None,
) -> SeparationModel:
    """Load a model by released name or file, in eval mode, ready to separate.

    Args:
        name_or_path: a released name (``htdemucs``, ``htdemucs_ft``, ``mdx_extra``, ``demucs``,
            ...; see ``demucs-rr models list``) or a model file: a demucs_rr ``.safetensors``
            package (one model or a bag), an official ``.th`` package, an official 4.1.0 hub
            ``.safetensors``, a bag ``.yaml`` (members beside it) or a v2 hub state
            ``NAME-SIG.th``.
        repo: a folder searched first for ``NAME.safetensors``, ``NAME-*.th``, ``NAME.th``,
            ``NAME.yaml``, and for the member files of a released name.
        progress: show a progress bar while downloading.
        config: the MSST config of a ``.ckpt`` checkpoint (default: ``NAME.yaml`` beside it).

    Returns:
        One network, or a :class:`~demucs_rr.models.bag.BagOfModels` for a model of several
        (``htdemucs_ft``).

    Raises:
        ModelNotFoundError, DownloadError, PackageFormatError: see :func:`resolve`.
    """
    folder = Path(repo) if repo is not None else None
    return resolve(name_or_path, folder, progress, config).build()


def list_models(repo: Path | str | None = None) -> list[ModelRow]:
    """Rows for ``demucs-rr models list``: the models of ``repo`` first, then the released
    ones (nothing is loaded; cached files are checked against their sha256 once)."""
    sources = _sources(Path(repo) if repo is not None else None, progress=False)
    return AnySource(sources).rows()
