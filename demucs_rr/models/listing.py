"""Rows of ``demucs-rr models list`` for the files of a ``--repo`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.models.files import HUB_NAME, preset_from_filename

__all__ = ["ModelRow", "repo_row"]

ModelRow = TypedDict(
    "ModelRow",
    {
        "name": str,
        "class": str | None,
        "sdr": float | None,
        "valid_nsdr": float | None,
        "description": str,
        "cached": bool,
        "cache_state": str,
        "path": str,
    },
)
"""One row of ``demucs-rr models list``: the ``-n`` name; the registry class (None when
unknown); ``sdr``, the published MUSDB18 test SDR in dB (pretrained models); ``valid_nsdr``,
the validation nSDR in dB recorded by ``demucs-rr export`` (packages trained here); a one-line
description; whether the file(s) are present locally (and, for downloads, pass their sha256
check); ``cache_state``, what the ``cached`` column shows: ``yes``, ``no``, ``bad checksum``
(a cached download whose sha256 does not match) or ``unreadable``; and where the file(s) are or
would be cached."""


def repo_row(file: Path) -> ModelRow:
    """The row of one file of a model folder (``.safetensors``, ``.th`` or bag ``.yaml``)."""
    row: ModelRow = {
        "name": file.stem,
        "class": None,
        "sdr": None,
        "valid_nsdr": None,
        "description": "",
        "cached": True,
        "cache_state": "yes",
        "path": str(file),
    }
    try:
        if file.suffix == ".safetensors":
            _safetensors_row(file, row)
        elif file.suffix == ".yaml":
            from demucs_rr.models.official_repo import read_bag_yaml

            spec = read_bag_yaml(file)
            row["class"] = "bag"
            row["description"] = f"bag of {len(spec.models)}: {', '.join(spec.models)}"
        else:
            preset = preset_from_filename(file)
            match = HUB_NAME.match(file.name)
            row["name"] = match["name"] if match else file.stem
            row["class"] = preset.model_class if preset else None
            row["description"] = "official-format file" + (f" ({preset.name})" if preset else "")
    except (PackageFormatError, ModelNotFoundError) as exc:
        row["description"] = f"unreadable: {exc}"
    return row


def _safetensors_row(file: Path, row: ModelRow) -> None:
    from demucs_rr.models.hub import is_hub_file, read_safetensors_header
    from demucs_rr.models.package import package_kind, read_package_metadata, read_training_info

    header = read_safetensors_header(file)
    if is_hub_file(header):
        row["class"] = header["klass"].rsplit(".", 1)[-1]
        row["description"] = "official Demucs hub file"
        return
    meta = read_package_metadata(file)
    row["description"] = meta.get("name") or "demucs_rr package"
    if package_kind(meta) == "bag":
        row["class"] = "bag"
        row["description"] += f" (bag of {len(meta['models'])})"
        return
    row["class"] = meta["model_class"]
    training = read_training_info(meta, str(file))
    if training is not None:
        row["valid_nsdr"] = training.valid_nsdr
        row["description"] += _training_summary(
            training.epochs, training.best_epoch, training.weights
        )


def _training_summary(epochs: int, best_epoch: int | None, weights: str) -> str:
    """`` (trained N epochs; best epoch K, ema weights)`` for a package description."""
    if not epochs:
        return ""
    if best_epoch is None:
        return f" (trained {epochs} epochs; last weights)"
    return f" (trained {epochs} epochs; best epoch {best_epoch}, {weights} weights)"
