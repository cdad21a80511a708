"""Named pretrained models, the download cache, and ``-n NAME_OR_PATH`` resolution.

The official v2 hub files are plain state dicts named ``{name}-{sig}.th`` where ``sig`` is the
first 8 hex digits of the sha256 of the whole file. The architecture of each name is fixed here
(:data:`PRETRAINED`), so those files load with ``weights_only=True`` into our own classes.

Checksum policy: a download is hashed while it streams and only renamed into the cache when the
sha256 prefix matches. A file already in the cache is hashed once more on first use (it may have
been put there by hand, as the download error message suggests) and the result is recorded in a
``.verified`` sidecar holding the digest, size and mtime; later runs only compare size and mtime,
so a 1 GB model is not rehashed every run. Files given by path (``-n file.th``, ``--repo``) are
not checksummed: the strict state-dict load is their check.

``demucs_quantized`` (the v2 CLI default) is deliberately absent: it is stored in DiffQ's
bit-packed format, which needs ``diffq<0.2`` to decode. Use ``demucs`` or ``demucs_extra``.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.fetch import download, verify_cached
from demucs_rr.models.package import (
    load_package,
    load_state_strict,
    read_package_metadata,
    read_training_info,
)
from demucs_rr.models.registry import build_model
from demucs_rr.runtime import cache_dir
from demucs_rr.sources import MUSDB_SOURCES

logger = logging.getLogger(__name__)

REMOTE_ROOT = "https://dl.fbaipublicfiles.com/demucs/v3.0/"
"""Official v2 download folder (named "v3.0" upstream even for the v2 models)."""

DEFAULT_MODEL = "demucs"


@dataclass(frozen=True)
class PretrainedInfo:
    """One downloadable pretrained model.

    Attributes:
        name: the ``-n`` name.
        url: official download URL (``{REMOTE_ROOT}{name}-{sha256_prefix}.th``).
        sha256_prefix: first hex digits of the sha256 of the file.
        model_class: registry class name.
        kwargs: constructor kwargs (JSON-able); copied before use.
        description: one line for ``demucs-rr models list``.
        sdr: reported MUSDB18 test SDR (dB), or None when none was published.
    """

    name: str
    url: str
    sha256_prefix: str
    model_class: str
    kwargs: dict[str, Any]
    description: str
    sdr: float | None = None

    @property
    def filename(self) -> str:
        """File name in the cache and on the server: ``{name}-{sig}.th``."""
        return f"{self.name}-{self.sha256_prefix}.th"


def _demucs(channels: int) -> dict[str, Any]:
    return {"sources": list(MUSDB_SOURCES), "channels": channels}


_TASNET: dict[str, Any] = {"sources": list(MUSDB_SOURCES), "X": 10}

# name, sha256 prefix, registry class, constructor kwargs, MUSDB18 test SDR, description
_CATALOGUE: list[tuple[str, str, str, dict[str, Any], float | None, str]] = [
    ("demucs", "e07c671f", "Demucs", _demucs(64), 6.28, "Demucs v2, 64 channels, MUSDB18"),
    ("demucs_extra", "3646af93", "Demucs", _demucs(64), 6.79,
     "Demucs v2, 64 channels, MUSDB18 + 150 extra tracks"),
    ("demucs48_hq", "28a1282c", "Demucs", _demucs(48), None,
     "Demucs v2, 48 channels, MUSDB18-HQ (MDX'21 baseline)"),
    ("demucs_unittest", "09ebc15f", "Demucs", _demucs(4), None,
     "tiny Demucs v2 (4 channels) for tests; separates nothing useful"),
    ("tasnet", "beb46fac", "ConvTasNet", _TASNET, 5.73, "Conv-TasNet (X=10), MUSDB18"),
    ("tasnet_extra", "df3777b2", "ConvTasNet", _TASNET, 5.97,
     "Conv-TasNet (X=10), MUSDB18 + 150 extra tracks"),
]  # fmt: skip

PRETRAINED: dict[str, PretrainedInfo] = {
    name: PretrainedInfo(name, f"{REMOTE_ROOT}{name}-{sig}.th", sig, cls, kwargs, desc, sdr)
    for name, sig, cls, kwargs, sdr, desc in _CATALOGUE
}
"""Known pretrained names. ``demucs_quantized`` is absent on purpose (see :data:`UNSUPPORTED`)."""

UNSUPPORTED: dict[str, str] = {
    "demucs_quantized": (
        "demucs_quantized is stored in DiffQ's bit-packed format, which demucs_rr does not "
        "decode; use `demucs` (same architecture, unquantized) or `demucs_extra`"
    ),
}
"""Official names that exist upstream but are deliberately not offered, with the reason."""

_HUB_NAME = re.compile(r"^(?P<name>.+)-(?P<sig>[0-9a-f]{8})\.th$")


# --------------------------------------------------------------------------- cache and URLs


def model_url(info: PretrainedInfo) -> str:
    """Download URL of ``info``; ``$DEMUCS_RR_REMOTE`` (a base URL) replaces the official root."""
    base = os.environ.get("DEMUCS_RR_REMOTE")
    if base:
        return base.rstrip("/") + "/" + info.filename
    return info.url


def cached_path(info: PretrainedInfo) -> Path:
    """Where ``info``'s file is (or would be) stored in the cache."""
    return cache_dir() / info.filename


# --------------------------------------------------------------------------- loading files


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


def _preset_from_filename(path: Path) -> PretrainedInfo | None:
    match = _HUB_NAME.match(path.name)
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


def load_model_file(path: Path, preset: PretrainedInfo | None = None) -> PackagedModel:
    """Load a model from a file: our ``.safetensors`` package, or an official ``.th``/``.pt``.

    A ``.th``/``.pt`` file is either an official pickled package (loaded through the restricted
    unpickler of :mod:`demucs_rr.models.legacy`) or a bare state dict, whose architecture comes
    from ``preset`` or from a known pretrained file name (``{name}-{sig}.th`` or ``{name}.th``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_package(path)
    if path.suffix not in (".th", ".pt"):
        raise PackageFormatError(
            f"{path}: unsupported model file type {path.suffix!r}; expected a demucs_rr "
            ".safetensors package or an official Demucs .th/.pt file"
        )
    if is_official_package(path):
        from demucs_rr.models import legacy

        return legacy.model_from_official_package(path).eval()
    preset = preset or _preset_from_filename(path)
    if preset is None:
        raise PackageFormatError(
            f"{path} holds bare weights and its name does not tell the architecture. Pass a "
            "demucs_rr .safetensors package or an official package, or keep the official file "
            f"name NAME-SIG.th of a known model ({', '.join(PRETRAINED)})"
        )
    return load_state_model(path, preset)


# --------------------------------------------------------------------------- resolution


def _unknown(name: str, extra: str = "") -> ModelNotFoundError:
    if name in UNSUPPORTED:
        return ModelNotFoundError(UNSUPPORTED[name])
    return ModelNotFoundError(
        f"unknown model {name!r}{extra}: not an existing file and not a pretrained name. Known "
        f"pretrained models: {', '.join(PRETRAINED)} (see `demucs-rr models list`)"
    )


def _find_in_repo(name: str, repo: Path) -> Path | None:
    candidates = [repo / f"{name}.safetensors"]
    candidates += sorted(Path(p) for p in glob.glob(str(repo / f"{glob.escape(name)}-*.th")))
    candidates.append(repo / f"{name}.th")
    return next((c for c in candidates if c.is_file()), None)


def resolve_model(
    name_or_path: str, repo: Path | None = None, progress: bool = True
) -> PackagedModel:
    """Turn a ``-n`` argument into a model in eval mode.

    Order: an existing file path; then, if ``repo`` is given, ``{repo}/{name}.safetensors``,
    ``{repo}/{name}-*.th``, ``{repo}/{name}.th``; then a pretrained name (cached file, verified
    once, else downloaded from the official root or ``$DEMUCS_RR_REMOTE``).

    Raises:
        ModelNotFoundError: nothing matches ``name_or_path``.
        DownloadError: the pretrained file cannot be downloaded or fails its checksum.
        PackageFormatError: the file found is not a loadable model.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_model_file(path)
    looks_like_path = os.sep in name_or_path or path.suffix in (".safetensors", ".th", ".pt")
    if looks_like_path:
        raise ModelNotFoundError(f"no model file at {path}")
    name = name_or_path
    if repo is not None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            raise ModelNotFoundError(f"model repository {repo} is not a folder")
        found = _find_in_repo(name, repo)
        if found is not None:
            return load_model_file(found, PRETRAINED.get(name))
    info = PRETRAINED.get(name)
    if info is None:
        raise _unknown(name, f" (also not found in {repo})" if repo is not None else "")
    url = model_url(info)
    target = cached_path(info)
    if target.is_file():
        verify_cached(target, info.sha256_prefix, url)
    else:
        logger.info("downloading %s from %s", info.name, url)
        download(url, target, info.sha256_prefix, progress=progress)
    return load_state_model(target, info)


ModelRow = TypedDict(
    "ModelRow",
    {
        "name": str,
        "class": str | None,
        "sdr": float | None,
        "valid_nsdr": float | None,
        "description": str,
        "cached": bool,
        "path": str,
    },
)
"""One row of ``demucs-rr models list``: the ``-n`` name; the registry class (None when
unknown); ``sdr``, the published MUSDB18 test SDR in dB (pretrained models); ``valid_nsdr``,
the validation nSDR in dB recorded by ``demucs-rr export`` (packages trained here); a one-line
description; whether the file is present locally, and where it is or would be cached."""


def list_models(repo: Path | None = None) -> list[ModelRow]:
    """Rows for ``demucs-rr models list``: models in ``repo`` first, then the pretrained ones.

    ``repo`` files are ``*.safetensors`` packages (with the validation nSDR their training
    recorded) and official ``*.th`` files. ``demucs_quantized`` is not listed: its DiffQ
    format is not supported (see :data:`UNSUPPORTED`).
    """
    rows: list[ModelRow] = []
    if repo is not None:
        for file in sorted(Path(repo).expanduser().glob("*")):
            if file.suffix in (".safetensors", ".th") and file.is_file():
                rows.append(_repo_row(file))
    for info in PRETRAINED.values():
        target = cached_path(info)
        rows.append(
            {
                "name": info.name,
                "class": info.model_class,
                "sdr": info.sdr,
                "valid_nsdr": None,
                "description": info.description,
                "cached": target.is_file(),
                "path": str(target),
            }
        )
    return rows


def _repo_row(file: Path) -> ModelRow:
    row: ModelRow = {
        "name": file.stem,
        "class": None,
        "sdr": None,
        "valid_nsdr": None,
        "description": "",
        "cached": True,
        "path": str(file),
    }
    if file.suffix == ".safetensors":
        try:
            meta = read_package_metadata(file)
            training = read_training_info(meta, str(file))
        except (PackageFormatError, ModelNotFoundError) as exc:
            row["description"] = f"unreadable package: {exc}"
            return row
        row["class"] = meta["model_class"]
        row["description"] = meta.get("name") or "demucs_rr package"
        if training is not None:
            row["valid_nsdr"] = training.valid_nsdr
            row["description"] += _training_summary(
                training.epochs, training.best_epoch, training.weights
            )
    else:
        preset = _preset_from_filename(file)
        match = _HUB_NAME.match(file.name)
        row["name"] = match["name"] if match else file.stem
        row["class"] = preset.model_class if preset else None
        row["description"] = "official-format file" + (f" ({preset.name})" if preset else "")
    return row


def _training_summary(epochs: int, best_epoch: int | None, weights: str) -> str:
    """`` (trained N epochs; best epoch K, ema weights)`` for a package description."""
    if not epochs:
        return ""
    if best_epoch is None:
        return f" (trained {epochs} epochs; last weights)"
    return f" (trained {epochs} epochs; best epoch {best_epoch}, {weights} weights)"
