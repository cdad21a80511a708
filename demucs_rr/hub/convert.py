"""``demucs-rr models convert``: any loadable model into a demucs_rr ``.safetensors`` package.

Sources: an official ``.th`` package (v2, v3/v4, bag members), an official 4.1.0 hub
``.safetensors``, a bag ``.yaml`` with its member files in the same folder, a pretrained name
(``htdemucs_ft``: members from ``--repo``, the cache or a download), or a demucs_rr package.
A single model becomes a single-model package; a bag (several members, weights or a segment)
becomes a bag package (:mod:`demucs_rr.hub.bag_package`). Floating weights are stored as
float16 when that is exact (the official v3/v4 weights are float16), else as float32, so the
converted model computes exactly what the source computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.hub.bag_package import save_bag_package
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.loader import resolve
from demucs_rr.hub.package import save_package
from demucs_rr.models.base import PackagedModel

__all__ = ["Converted", "convert_model", "half_is_exact"]


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_model` wrote.

    Attributes:
        path: the package.
        members: number of bag entries (1 for a single model).
        half: whether the weights are stored as float16.
    """

    path: Path
    members: int
    half: bool


def half_is_exact(models: list[PackagedModel]) -> bool:
    """Whether every floating tensor of ``models`` survives a float16 round trip unchanged."""
    for model in models:
        for tensor in model.state_dict().values():
            if not tensor.is_floating_point():
                continue
            if not torch.equal(
                tensor.detach().cpu().half().to(tensor.dtype), tensor.detach().cpu()
            ):
                return False
    return True


def save_loaded(bag: LoadedModel, dst: Path, name: str | None = None) -> Converted:
    """Write ``bag`` as a single-model or a bag package at ``dst`` (see module docstring).

    Raises:
        PackageFormatError: a member cannot be packaged.
    """
    half = half_is_exact(bag.members)
    if bag.is_single:
        save_package(bag.members[0], dst, name=name or bag.name, half=half)
    else:
        save_bag_package(bag, dst, name=name, half=half)
    return Converted(dst, len(bag.members), half)


def convert_model(
    src: str,
    dst: str | Path,
    repo: Path | None = None,
    name: str | None = None,
    config: str | Path | None = None,
) -> Converted:
    """Load ``src`` (a file or a ``-n`` name) and write it as a package at ``dst``.

    Args:
        src: source file or pretrained name.
        dst: destination, must end in ``.safetensors`` and differ from ``src``.
        repo: folder searched first for ``src`` and for bag members.
        name: model name stored in the package (default: the source's name).
        config: the MSST config of a ``.ckpt`` ``src`` (default: ``NAME.yaml`` beside it).

    Raises:
        ConfigError: ``dst`` is not a ``.safetensors`` path or is the source itself.
        ModelNotFoundError, DownloadError, PackageFormatError: ``src`` does not load.
    """
    dst = Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise ConfigError(f"the converted package must be a .safetensors file, got {dst}")
    source = Path(src).expanduser()
    if source.exists() and source.resolve() == dst.resolve():
        raise ConfigError(f"refusing to convert {source} onto itself")
    bag = resolve(src, repo, config=config)
    return save_loaded(bag, dst, name)
