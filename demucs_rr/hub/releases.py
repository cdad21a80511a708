"""The released Demucs 3/4 models: names, member files (URLs, sha256 prefixes) and fetching.

Every name is a bag (``demucs_rr/hub/remote/NAME.yaml``) of official packages; each member
file is ``{sig}-{hash}.th`` where ``hash`` is the first 8 hex digits of its sha256, downloaded
from ``https://dl.fbaipublicfiles.com/demucs/{folder}/{sig}-{hash}.th`` into the cache folder
(``$DEMUCS_RR_CACHE``...) under the same name, checked against ``hash`` while it streams and
once more (recorded in a ``.verified`` sidecar) when it was put there by hand. With
``--repo DIR`` a member file found in ``DIR`` (``{sig}.th``, ``{sig}-{hash}.th`` or
``{sig}.safetensors``) is used first. ``$DEMUCS_RR_REMOTE`` replaces the download folder.

``mdx_q`` and ``mdx_extra_q`` are listed but refused: their weights are stored in DiffQ's
bit-packed format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from demucs_rr.errors import ModelNotFoundError
from demucs_rr.hub.bag_yaml import BagSpec, builtin_bag, check_member_hash, find_member
from demucs_rr.hub.fetch import download, verify_cached
from demucs_rr.hub.formats import load_bag
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.training_data import MDX_DOCS, TRAIN, TRAIN_TEST, V4_DOCS, TrainingData
from demucs_rr.runtime import cache_dir

__all__ = [
    "OFFICIAL_BAGS",
    "OFFICIAL_FILES",
    "OFFICIAL_ROOT",
    "OfficialBagInfo",
    "OfficialFile",
    "load_official_bag",
]

OFFICIAL_ROOT = "https://dl.fbaipublicfiles.com/demucs/"
"""Download root of the official Demucs 3/4 files."""


@dataclass(frozen=True)
class OfficialFile:
    """One released model package.

    Attributes:
        sig: the model signature (8 hex digits).
        sha256_prefix: first 8 hex digits of the file's sha256.
        folder: folder below :data:`OFFICIAL_ROOT` (``hybrid_transformer`` or ``mdx_final``).
    """

    sig: str
    sha256_prefix: str
    folder: str

    @property
    def filename(self) -> str:
        """``{sig}-{sha256_prefix}.th``: the name on the server and in the cache."""
        return f"{self.sig}-{self.sha256_prefix}.th"

    @property
    def url(self) -> str:
        """Download URL; ``$DEMUCS_RR_REMOTE`` (a base URL) replaces the official folder."""
        base = os.environ.get("DEMUCS_RR_REMOTE")
        if base:
            return base.rstrip("/") + "/" + self.filename
        return f"{OFFICIAL_ROOT}{self.folder}/{self.filename}"

    @property
    def cached_path(self) -> Path:
        """Where the file is (or would be) in the cache."""
        return cache_dir() / self.filename


_HT = "hybrid_transformer"
_MDX = "mdx_final"
_FILES = [
    ("955717e8", "8726e21a", _HT),
    ("f7e0c4bc", "ba3fe64a", _HT),
    ("d12395a8", "e57c48e6", _HT),
    ("92cfc3b6", "ef3bcb9c", _HT),
    ("04573f0d", "f3cf25b2", _HT),
    ("75fc33f5", "1941ce65", _HT),
    ("5c90dfd2", "34c22ccb", _HT),
    ("0d19c1c6", "0f06f20e", _MDX),
    ("7ecf8ec1", "70f50cc9", _MDX),
    ("c511e2ab", "fe698775", _MDX),
    ("7d865c68", "3d5dd56b", _MDX),
    ("e51eebcc", "c1b80bdd", _MDX),
    ("a1d90b5c", "ae9d2452", _MDX),
    ("5d2d6c55", "db83574e", _MDX),
    ("cfa93e08", "61801ae1", _MDX),
    ("6b9c2ca1", "3fd82607", _MDX),
    ("b72baf4e", "8778635e", _MDX),
    ("42e558d4", "196e0e1b", _MDX),
    ("305bc58f", "18378783", _MDX),
    ("83fc094f", "4a16d450", _MDX),
    ("464b36d7", "e5a9386e", _MDX),
    ("14fc6a69", "a89dd0ee", _MDX),
    ("7fd6ef75", "a905dd85", _MDX),
]

OFFICIAL_FILES: dict[str, OfficialFile] = {
    sig: OfficialFile(sig, sha, folder) for sig, sha, folder in _FILES
}
"""Signature -> released package file."""


@dataclass(frozen=True)
class OfficialBagInfo:
    """A released Demucs 3/4 model name.

    Attributes:
        name: the ``-n`` name (also the bag YAML shipped in ``demucs_rr/hub/remote``).
        architecture: short description of the members (for ``models list``).
        description: one line for ``demucs-rr models list``.
        sdr: published MUSDB18-HQ test SDR in dB (museval, median over frames and tracks), or
            None when none was published for the released weights.
        refused: why demucs_rr does not load it, or None.
        training: what the model was trained on (official documentation).
    """

    name: str
    architecture: str
    description: str
    sdr: float | None = None
    refused: str | None = None
    training: TrainingData | None = None

    @property
    def spec(self) -> BagSpec:
        """The bag YAML shipped with demucs_rr."""
        spec = builtin_bag(self.name)
        if spec is None:  # the package data is incomplete
            raise ModelNotFoundError(f"the bag file of {self.name} is missing from demucs_rr")
        return spec

    @property
    def files(self) -> list[OfficialFile]:
        """The member files, each once, in YAML order."""
        return [OFFICIAL_FILES[sig] for sig in dict.fromkeys(self.spec.models)]


_HT_DATA = TrainingData("MUSDB18-HQ train + 800 extra songs", TRAIN, V4_DOCS)
_TRACK_A = TrainingData("MUSDB18-HQ train (MDX 2021 track A)", TRAIN, V4_DOCS)
_TRACK_B = TrainingData("MUSDB18-HQ train + test + extra songs", TRAIN_TEST, MDX_DOCS)

_DIFFQ = (
    "{name} is stored in DiffQ's bit-packed format, which demucs_rr does not decode; use "
    "`{instead}` (the same models, unquantized)"
)

OFFICIAL_BAGS: dict[str, OfficialBagInfo] = {
    info.name: info
    for info in [
        OfficialBagInfo(
            "htdemucs",
            "HTDemucs",
            "Hybrid Transformer Demucs v4, MUSDB18-HQ + 800 songs",
            8.80,
            training=_HT_DATA,
        ),
        OfficialBagInfo(
            "htdemucs_ft",
            "HTDemucs x4",
            "htdemucs fine-tuned per source: one model per stem (4x slower)",
            9.00,
            training=_HT_DATA,
        ),
        OfficialBagInfo(
            "htdemucs_6s",
            "HTDemucs",
            "6 stems (adds guitar, piano; piano is weak), MUSDB18-HQ + extra songs",
            training=TrainingData("MUSDB18-HQ train + extra songs (6 stems)", TRAIN, V4_DOCS),
        ),
        OfficialBagInfo(
            "hdemucs_mmi",
            "HDemucs",
            "Hybrid Demucs v3 retrained on MUSDB18-HQ + 800 songs",
            8.34,
            training=_HT_DATA,
        ),
        OfficialBagInfo(
            "mdx",
            "DemucsV3+HDemucs",
            "Hybrid Demucs v3 bag of 4, MDX'21 track A (MUSDB18-HQ only)",
            7.68,
            training=_TRACK_A,
        ),
        OfficialBagInfo(
            "mdx_extra",
            "HDemucs x4",
            "Hybrid Demucs v3 bag of 4, MDX'21 track B (trained with the MUSDB18 test set)",
            training=_TRACK_B,
        ),
        OfficialBagInfo(
            "mdx_q",
            "DiffQ",
            "quantized mdx",
            refused=_DIFFQ.format(name="mdx_q", instead="mdx"),
            training=_TRACK_A,
        ),
        OfficialBagInfo(
            "mdx_extra_q",
            "DiffQ",
            "quantized mdx_extra",
            refused=_DIFFQ.format(name="mdx_extra_q", instead="mdx_extra"),
            training=_TRACK_B,
        ),
    ]
}
"""Released Demucs 3/4 names, in ``models list`` order."""


def _offline_hint(info: OfficialBagInfo) -> Callable[[Path, str, str], str]:
    """One-line message of a failed member download: where to put every member file."""

    def hint(dest: Path, url: str, reason: str) -> str:
        files = info.files
        listing = ", ".join(f"{f.filename} from {f.url}" for f in files)
        return (
            f"could not download {dest.name} of {info.name} from {url} ({reason}). On a machine "
            f"with internet access download its {len(files)} file(s) ({listing}) and put them "
            f"in {dest.parent}, or in a folder passed as --repo"
        )

    return hint


def _locate(info: OfficialBagInfo, repo: Path | None, progress: bool) -> Callable[[str], Path]:
    """Member lookup: ``repo`` first, then the verified cache, then a download."""

    def locate(sig: str) -> Path:
        if repo is not None:
            found = find_member(sig, repo)
            if found is not None:
                return check_member_hash(found)
        file = OFFICIAL_FILES[sig]
        target = file.cached_path
        if target.is_file():
            verify_cached(target, file.sha256_prefix, file.url)
        else:
            download(
                file.url, target, file.sha256_prefix, progress, manual_hint=_offline_hint(info)
            )
        return target

    return locate


def load_official_bag(name: str, repo: Path | None = None, progress: bool = True) -> LoadedModel:
    """Load the released model ``name`` (every member, fetched when missing).

    Raises:
        ModelNotFoundError: ``name`` is refused (DiffQ) or unknown.
        DownloadError: a member cannot be downloaded (one line listing every member file and
            where to put it) or fails its checksum.
        PackageFormatError: a member file does not load.
    """
    info = OFFICIAL_BAGS.get(name)
    if info is None:
        raise ModelNotFoundError(f"{name} is not a released Demucs 3/4 model")
    if info.refused is not None:
        raise ModelNotFoundError(info.refused)
    return load_bag(info.spec, _locate(info, repo, progress))
