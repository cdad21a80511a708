"""The Demucs v2 pretrained files: names, architectures, URLs and sha256 prefixes.

The official v2 hub files are plain state dicts named ``{name}-{sig}.th`` where ``sig`` is the
first 8 hex digits of the sha256 of the whole file. The architecture of each name is fixed here
(:data:`PRETRAINED`), so those files load with ``weights_only=True`` into our own classes.
The released Demucs 3/4 models are in :mod:`demucs_rr.hub.releases`.

``demucs_quantized`` (the v2 CLI default) is deliberately absent: it is stored in DiffQ's
bit-packed format, which needs ``diffq<0.2`` to decode. Use ``demucs`` or ``demucs_extra``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demucs_rr.hub.training_data import TRAIN, V2_DOCS, TrainingData
from demucs_rr.runtime import cache_dir
from demucs_rr.sources import MUSDB_SOURCES

__all__ = [
    "DEFAULT_MODEL",
    "PRETRAINED",
    "REMOTE_ROOT",
    "UNSUPPORTED",
    "PretrainedInfo",
    "cached_path",
    "model_url",
]

REMOTE_ROOT = "https://dl.fbaipublicfiles.com/demucs/v3.0/"
"""Official v2 download folder (named "v3.0" upstream even for the v2 models)."""

DEFAULT_MODEL = "htdemucs"
"""The model ``separate`` uses without ``-n``: Hybrid Transformer Demucs v4."""


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
        training: what the model was trained on (official documentation).
    """

    name: str
    url: str
    sha256_prefix: str
    model_class: str
    kwargs: dict[str, Any]
    description: str
    sdr: float | None = None
    training: TrainingData | None = None

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

_MUSDB = TrainingData("MUSDB18 train", TRAIN, V2_DOCS)
_EXTRA = TrainingData("MUSDB18 train + 150 extra songs", TRAIN, V2_DOCS)
_TRAINING = {
    "demucs": _MUSDB,
    "demucs_extra": _EXTRA,
    "demucs48_hq": TrainingData("MUSDB18-HQ train", TRAIN, V2_DOCS),
    "demucs_unittest": TrainingData("untrained (a test model)", frozenset(), V2_DOCS),
    "tasnet": _MUSDB,
    "tasnet_extra": _EXTRA,
}

PRETRAINED: dict[str, PretrainedInfo] = {
    name: PretrainedInfo(
        name, f"{REMOTE_ROOT}{name}-{sig}.th", sig, cls, kwargs, desc, sdr, _TRAINING[name]
    )
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


def model_url(info: PretrainedInfo) -> str:
    """Download URL of ``info``; ``$DEMUCS_RR_REMOTE`` (a base URL) replaces the official root."""
    base = os.environ.get("DEMUCS_RR_REMOTE")
    if base:
        return base.rstrip("/") + "/" + info.filename
    return info.url


def cached_path(info: PretrainedInfo) -> Path:
    """Where ``info``'s file is (or would be) stored in the cache."""
    return cache_dir() / info.filename
