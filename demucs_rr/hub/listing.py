"""Rows of ``demucs-rr models list``: the files of a ``--repo`` folder and the released names."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.bag_yaml import read_bag_yaml
from demucs_rr.hub.catalogue import PRETRAINED, cached_path
from demucs_rr.hub.fetch import checksum_state
from demucs_rr.hub.formats import HUB_NAME, is_training_checkpoint, preset_from_filename
from demucs_rr.hub.msst import config_beside, msst_kwargs, read_msst_config
from demucs_rr.hub.msst_releases import MSST_RELEASES, pin_state
from demucs_rr.hub.msst_roformer import ROFORMER_CLASSES
from demucs_rr.hub.msst_tfc import TFC_CLASSES
from demucs_rr.hub.official_safetensors import is_hub_file, read_safetensors_header
from demucs_rr.hub.package import package_kind, read_package_metadata, read_training_info
from demucs_rr.hub.releases import OFFICIAL_BAGS

__all__ = ["ModelRow", "folder_rows", "released_rows", "repo_row"]

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
        elif file.suffix == ".ckpt":
            _checkpoint_row(file, row)
        elif file.suffix == ".yaml":
            spec = read_bag_yaml(file)
            row["class"] = "bag"
            row["description"] = f"bag of {len(spec.models)}: {', '.join(spec.models)}"
        elif is_training_checkpoint(file):
            row["class"] = "checkpoint"
            row["description"] = (
                f"training checkpoint, not a model: `demucs-rr export {file.parent}` "
                "writes its package"
            )
        else:
            preset = preset_from_filename(file)
            match = HUB_NAME.match(file.name)
            row["name"] = match["name"] if match else file.stem
            row["class"] = preset.model_class if preset else None
            row["description"] = "official-format file" + (f" ({preset.name})" if preset else "")
    except (PackageFormatError, ModelNotFoundError) as exc:
        row["description"] = f"unreadable: {exc}"
    return row


def _checkpoint_row(file: Path, row: ModelRow) -> None:
    """An MSST checkpoint: its family from the config beside it (the weights are not read)."""
    config = config_beside(file)
    if not config.is_file():
        row["description"] = f"MSST checkpoint without its config ({config.name} expected)"
        return
    name, _ = msst_kwargs(read_msst_config(config), str(config))
    row["class"] = name
    row["description"] = f"MSST checkpoint, config {config.name}"


def _safetensors_row(file: Path, row: ModelRow) -> None:
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


def _is_bag(file: Path) -> bool:
    """Whether a YAML file is a bag (a mapping with ``models``), not another kind of YAML (a
    training run's ``config.yaml``, the config beside an MSST checkpoint); only the text is
    parsed."""
    import yaml

    if file.with_suffix(".ckpt").is_file():
        return False

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # a broken bag: its row says why
    return isinstance(data, dict) and "models" in data


def folder_rows(folder: Path) -> list[ModelRow]:
    """A row per ``*.safetensors``, ``*.th`` and ``*.yaml`` file of ``folder``."""
    files = [
        f for f in sorted(Path(folder).expanduser().glob("*")) if f.suffix != ".yaml" or _is_bag(f)
    ]
    return [
        repo_row(f)
        for f in files
        if f.suffix in (".safetensors", ".th", ".yaml", ".ckpt") and f.is_file()
    ]


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


def _row(
    name: str, cls: str, sdr: float | None, description: str, files: list[Path], sha: list[str]
) -> ModelRow:
    """The row of a released model whose files are ``files`` (sha256 prefixes ``sha``)."""
    states = [checksum_state(f, prefix) for f, prefix in zip(files, sha, strict=True)]
    bad = [f.name for f, s in zip(files, states, strict=True) if s not in ("ok", "missing")]
    return {
        "name": name,
        "class": cls,
        "sdr": sdr,
        "valid_nsdr": None,
        "description": description + _bad_files(bad),
        "cached": _cache_state(states) == "yes",
        "cache_state": _cache_state(states),
        "path": ", ".join(str(f) for f in files),
    }


def released_rows() -> list[ModelRow]:
    """A row per released name: Demucs 3/4 bags, v2 / Conv-TasNet states, then band-split
    checkpoints (their published score, metric and test set in the description, since it is
    not the museval SDR of the ``sdr`` column; their pinned sha256)."""
    rows: list[ModelRow] = []
    for info in OFFICIAL_BAGS.values():
        description = info.description
        if info.refused is not None:
            description += " (not supported: DiffQ format)"
        files = info.files
        paths = [f.cached_path for f in files]
        rows.append(
            _row(
                info.name,
                info.architecture,
                info.sdr,
                description,
                paths,
                [f.sha256_prefix for f in files],
            )
        )
    for v2 in PRETRAINED.values():
        rows.append(
            _row(
                v2.name,
                v2.model_class,
                v2.sdr,
                v2.description,
                [cached_path(v2)],
                [v2.sha256_prefix],
            )
        )
    for msst in MSST_RELEASES.values():
        ckpt = msst.checkpoint_path
        state = "yes" if ckpt.is_file() else "no"
        rows.append(
            {
                "name": msst.name,
                "class": TFC_CLASSES.get(msst.family) or ROFORMER_CLASSES[msst.family],
                "sdr": None,
                "valid_nsdr": None,
                "description": f"{msst.description}; global SDR {msst.sdr:.2f} dB on "
                f"{msst.scored_on}; licence {msst.licence or 'not stated'}; {pin_state(msst)}",
                "cached": state == "yes",
                "cache_state": state,
                "path": str(ckpt),
            }
        )
    return rows
