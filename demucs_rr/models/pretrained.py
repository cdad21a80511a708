"""Named pretrained models, the download cache, and ``-n NAME_OR_PATH`` resolution.

Two catalogues: the released Demucs 3/4 models (:mod:`.official_bags`: ``htdemucs``, the
default, ``htdemucs_ft``, ``htdemucs_6s``, ``hdemucs_mmi``, ``mdx``, ``mdx_extra``), each a bag
of official package files, and the Demucs v2 / Conv-TasNet hub states (:mod:`.catalogue`).

Checksum policy: a download is hashed while it streams and only renamed into the cache when the
sha256 prefix matches. A file already in the cache is hashed once more on first use (it may have
been put there by hand, as the download error message suggests) and the result is recorded in a
``.verified`` sidecar holding the digest, size and mtime; later runs only compare size and mtime,
so a 1 GB model is not rehashed every run. Files given by path (``-n file.th``) are not
checksummed: the strict state-dict load is their check; official member files named
``{sig}-{hash}.th`` in a ``--repo`` folder are checked against ``hash``.

The DiffQ-quantized ``demucs_quantized``, ``mdx_q`` and ``mdx_extra_q`` are refused with the
unquantized model to use instead.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

from demucs_rr.errors import ModelNotFoundError
from demucs_rr.models.base import SeparationModel
from demucs_rr.models.catalogue import (
    DEFAULT_MODEL,
    PRETRAINED,
    REMOTE_ROOT,
    UNSUPPORTED,
    PretrainedInfo,
    cached_path,
    model_url,
)
from demucs_rr.models.fetch import checksum_state, download, verify_cached
from demucs_rr.models.files import (
    MODEL_SUFFIXES,
    is_official_package,
    load_file_as_bag,
    load_state_model,
    single,
)
from demucs_rr.models.listing import ModelRow, repo_row
from demucs_rr.models.official_bags import OFFICIAL_BAGS, load_official_bag
from demucs_rr.models.official_repo import LoadedBag, check_member_hash
from demucs_rr.runtime import cache_dir

__all__ = [
    "DEFAULT_MODEL",
    "PRETRAINED",
    "REMOTE_ROOT",
    "UNSUPPORTED",
    "ModelRow",
    "PretrainedInfo",
    "cache_dir",
    "cached_path",
    "download",
    "is_official_package",
    "known_names",
    "list_models",
    "load_model_file",
    "model_url",
    "resolve_bag",
    "resolve_model",
]

logger = logging.getLogger(__name__)


def known_names() -> list[str]:
    """Every name ``-n`` accepts without a file: Demucs 3/4 releases first, then v2."""
    official = [name for name, info in OFFICIAL_BAGS.items() if info.refused is None]
    return official + list(PRETRAINED)


def load_model_file(path: Path, preset: PretrainedInfo | None = None) -> SeparationModel:
    """Load a model file (package, official ``.th`` / hub ``.safetensors``, bag ``.yaml``)
    ready to run (eval mode); see :mod:`demucs_rr.models.files`."""
    return load_file_as_bag(path, preset).build()


def _unknown(name: str, extra: str = "") -> ModelNotFoundError:
    if name in UNSUPPORTED:
        return ModelNotFoundError(UNSUPPORTED[name])
    return ModelNotFoundError(
        f"unknown model {name!r}{extra}: not an existing file and not a pretrained name. Known "
        f"pretrained models: {', '.join(known_names())} (see `demucs-rr models list`)"
    )


def _find_in_repo(name: str, repo: Path) -> Path | None:
    candidates = [repo / f"{name}.safetensors"]
    candidates += sorted(Path(p) for p in glob.glob(str(repo / f"{glob.escape(name)}-*.th")))
    candidates += [repo / f"{name}.th", repo / f"{name}.yaml", repo / f"{name}.yml"]
    return next((c for c in candidates if c.is_file()), None)


def _v2_pretrained(info: PretrainedInfo, progress: bool) -> LoadedBag:
    url = model_url(info)
    target = cached_path(info)
    if target.is_file():
        verify_cached(target, info.sha256_prefix, url)
    else:
        logger.info("downloading %s from %s", info.name, url)
        download(url, target, info.sha256_prefix, progress=progress)
    return single(load_state_model(target, info), info.name)


def resolve_bag(name_or_path: str, repo: Path | None = None, progress: bool = True) -> LoadedBag:
    """Turn a ``-n`` argument into the loaded model(s), before they are assembled.

    Order: an existing file path; then, if ``repo`` is given, ``{repo}/{name}.safetensors``,
    ``{repo}/{name}-*.th``, ``{repo}/{name}.th``, ``{repo}/{name}.yaml`` (a bag whose members
    are in ``repo``); then a released Demucs 3/4 name (members from ``repo``, the cache or a
    download); then a v2 pretrained name (cached file, verified once, else downloaded).

    Raises:
        ModelNotFoundError: nothing matches ``name_or_path``, or it is a refused DiffQ model.
        DownloadError: a pretrained file cannot be downloaded or fails its checksum.
        PackageFormatError: the file found is not a loadable model.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_file_as_bag(path)
    if os.sep in name_or_path or path.suffix in MODEL_SUFFIXES:
        raise ModelNotFoundError(f"no model file at {path}")
    name = name_or_path
    if repo is not None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            raise ModelNotFoundError(f"model repository {repo} is not a folder")
        found = _find_in_repo(name, repo)
        if found is not None:
            return load_file_as_bag(check_member_hash(found), PRETRAINED.get(name))
    if name in OFFICIAL_BAGS:
        return load_official_bag(name, repo, progress)
    info = PRETRAINED.get(name)
    if info is None:
        raise _unknown(name, f" (also not found in {repo})" if repo is not None else "")
    return _v2_pretrained(info, progress)


def resolve_model(
    name_or_path: str, repo: Path | None = None, progress: bool = True
) -> SeparationModel:
    """Turn a ``-n`` argument into a model in eval mode (a bag of models for a multi-model
    release such as ``htdemucs_ft``); see :func:`resolve_bag` for the lookup order.

    Raises:
        ModelNotFoundError, DownloadError, PackageFormatError: see :func:`resolve_bag`.
    """
    return resolve_bag(name_or_path, repo, progress).build()


def _bad_files(names: list[str]) -> str:
    """`` [bad checksum: NAME; delete it to download again]`` or an empty string."""
    if not names:
        return ""
    return f" [bad checksum: {', '.join(names)}; delete to download again]"


def _cache_state(states: list[str]) -> str:
    """The ``cached`` column for the :func:`checksum_state` of each file of a model: ``yes``,
    ``no``, or the first problem (``bad checksum``, ``unreadable``)."""
    problems = [state for state in states if state not in ("ok", "missing")]
    if problems:
        return problems[0]
    return "yes" if all(state == "ok" for state in states) else "no"


def _official_rows() -> list[ModelRow]:
    rows: list[ModelRow] = []
    for info in OFFICIAL_BAGS.values():
        files = info.files
        states = [checksum_state(f.cached_path, f.sha256_prefix) for f in files]
        pairs = zip(files, states, strict=True)
        bad = [f.cached_path.name for f, s in pairs if s not in ("ok", "missing")]
        description = info.description
        if info.refused is not None:
            description += " (not supported: DiffQ format)"
        rows.append(
            {
                "name": info.name,
                "class": info.architecture,
                "sdr": info.sdr,
                "valid_nsdr": None,
                "description": description + _bad_files(bad),
                "cached": _cache_state(states) == "yes",
                "cache_state": _cache_state(states),
                "path": ", ".join(str(f.cached_path) for f in files),
            }
        )
    return rows


def list_models(repo: Path | None = None) -> list[ModelRow]:
    """Rows for ``demucs-rr models list``: models in ``repo`` first, then the pretrained ones.

    ``repo`` files are ``*.safetensors`` packages (with the validation nSDR their training
    recorded) and official hub files, official ``*.th`` files and bag ``*.yaml`` files.
    ``demucs_quantized`` is not listed; ``mdx_q`` / ``mdx_extra_q`` are, marked unsupported.
    """
    rows: list[ModelRow] = []
    if repo is not None:
        for file in sorted(Path(repo).expanduser().glob("*")):
            if file.suffix in (".safetensors", ".th", ".yaml") and file.is_file():
                rows.append(repo_row(file))
    rows += _official_rows()
    for info in PRETRAINED.values():
        target = cached_path(info)
        state = checksum_state(target, info.sha256_prefix)
        bad = [] if state in ("ok", "missing") else [target.name]
        rows.append(
            {
                "name": info.name,
                "class": info.model_class,
                "sdr": info.sdr,
                "valid_nsdr": None,
                "description": info.description + _bad_files(bad),
                "cached": state == "ok",
                "cache_state": _cache_state([state]),
                "path": str(target),
            }
        )
    return rows
