"""MSST / UVR checkpoints: a ``.ckpt`` state dict and the MSST YAML config that describes it.

The band-split families (BS-RoFormer, Mel-Band RoFormer, SCNet, MDX23C) are shared as files
trained with ZFTurbo's Music-Source-Separation-Training:

- ``NAME.ckpt``: ``torch.save`` of a state dict, sometimes wrapped under ``state_dict``,
  ``state`` or ``model_state_dict``. Read with ``torch.load(weights_only=True)`` (memory-mapped
  where the file allows it): a file that needs any Python object beyond tensors is refused in one
  line and nothing of it runs.
- the config (``--model-config``, or ``NAME.yaml`` beside the checkpoint): sections ``audio``,
  ``model``, ``training``, ``inference``; ``training.model_type`` names the family. MSST reads it
  with PyYAML's FullLoader, so lists may be tagged ``!!python/tuple``; this reader accepts that
  tag (as a list) and refuses every other ``!!python/...`` tag.

The network is built on the ``meta`` device from the config and compared, tensor by tensor, with
the shapes the checkpoint declares before anything is allocated
(:func:`~demucs_rr.hub.safety.build_checked`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from demucs_rr.errors import ConfigError, ModelNotFoundError, PackageFormatError, one_line
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.msst_roformer import ROFORMER_CLASSES, roformer_kwargs
from demucs_rr.hub.msst_tfc import TFC_CLASSES, tfc_kwargs
from demucs_rr.hub.official_th import validate_state
from demucs_rr.hub.safety import build_checked, load_weights
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.registry import build_model

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MODEL_TYPES",
    "config_beside",
    "load_msst",
    "msst_kwargs",
    "read_checkpoint",
    "read_msst_config",
]

CHECKPOINT_SUFFIXES = (".ckpt",)
WRAPPERS = ("state_dict", "state", "model_state_dict")
"""Keys under which released checkpoints nest their state dict."""

_KWARGS: dict[str, Callable[[Mapping[str, Any], str | None], tuple[str, dict[str, Any]]]] = {
    **dict.fromkeys(ROFORMER_CLASSES, roformer_kwargs),
    **dict.fromkeys(TFC_CLASSES, tfc_kwargs),
}
MODEL_TYPES = tuple(_KWARGS)
"""MSST ``model_type`` values demucs_rr builds."""


class _ConfigLoader(yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader plus ``!!python/tuple`` (a list); any other python tag refused."""


def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> list[Any]:
    assert isinstance(node, yaml.SequenceNode)
    items: list[Any] = loader.construct_sequence(node, deep=True)
    return items


def _refuse(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"the tag !!python/{suffix} is not allowed in a config", node.start_mark
    )


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _tuple)
_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse)


def _safe_load(text: str) -> Any:
    """One YAML document through :class:`_ConfigLoader` (a ``SafeLoader``: no python object is
    ever built)."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_msst_config(path: str | Path) -> dict[str, Any]:
    """Read an MSST config safely (see the module docstring).

    Raises:
        ModelNotFoundError: no file at ``path``.
        PackageFormatError: unreadable YAML, a refused tag, or not a mapping (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no model config at {path}")
    try:
        data = _safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PackageFormatError(f"{path}: not a readable model config ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise PackageFormatError(f"{path}: a model config must be a mapping of sections")
    return data


def msst_kwargs(config: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """Registry class and constructor kwargs of the network an MSST config describes.

    Raises:
        PackageFormatError: an unknown or missing ``training.model_type``, or a config the
            family's mapping refuses (one line naming the key and ``source``).
    """
    training = config.get("training")
    model_type = training.get("model_type") if isinstance(training, Mapping) else None
    if model_type not in _KWARGS:
        raise PackageFormatError(
            f"{source}: training.model_type {model_type!r} is not a family demucs_rr builds "
            f"({', '.join(MODEL_TYPES)})"
        )
    try:
        return _KWARGS[model_type](config, model_type)
    except ConfigError as exc:
        raise PackageFormatError(f"{source}: {exc}") from None


def _unwrap(data: Any, path: Path) -> Any:
    """The state dict inside a released checkpoint's wrappers."""
    for _ in range(len(WRAPPERS)):
        if not isinstance(data, dict):
            break
        inner = next((data[k] for k in WRAPPERS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    return data


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an MSST ``.ckpt`` (tensors memory-mapped where the file allows it).

    Raises:
        ModelNotFoundError: no file at ``path``.
        PackageFormatError: the file needs Python objects other than tensors (refused, nothing
            runs), is not a checkpoint, or holds no name -> tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no checkpoint at {path}")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PackageFormatError(
            f"refusing to load {path}: it holds Python objects other than tensors, which a "
            f"model checkpoint never needs ({one_line(exc)[:120]})"
        ) from None
    except Exception as exc:
        raise PackageFormatError(f"cannot read {path} as a checkpoint ({one_line(exc)})") from None
    return validate_state(_unwrap(data, path), path, "the checkpoint")


def config_beside(checkpoint: Path) -> Path:
    """Where the config of ``checkpoint`` is looked for without ``--model-config``."""
    yml = checkpoint.with_suffix(".yml")
    return (
        yml
        if yml.is_file() and not checkpoint.with_suffix(".yaml").is_file()
        else (checkpoint.with_suffix(".yaml"))
    )


def build_msst(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str
) -> PackagedModel:
    """The network of ``config`` holding ``state`` (meta-device check first), eval mode."""
    name, kwargs = msst_kwargs(config, source)

    def factory(**kw: Any) -> PackagedModel:
        return build_model(name, kw)

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    model = build_checked(factory, (), kwargs, shapes, source, what=name)
    load_weights(model, state, source)
    return model.eval()


def load_msst(path: str | Path, config: str | Path | None = None) -> LoadedModel:
    """Load an MSST checkpoint with its config (default: :func:`config_beside`).

    Raises:
        ModelNotFoundError: the checkpoint or the config is missing (one line saying where the
            config was looked for and how to name it).
        PackageFormatError: see :func:`read_checkpoint`, :func:`read_msst_config`,
            :func:`msst_kwargs`; also weights that do not fit the config.
    """
    path = Path(path)
    config_path = Path(config) if config is not None else config_beside(path)
    if config is None and not config_path.is_file():
        raise ModelNotFoundError(
            f"{path} needs its MSST config: pass --model-config CONFIG.yaml or put it beside "
            f"the checkpoint as {config_path.name}"
        )
    settings = read_msst_config(config_path)
    state = read_checkpoint(path)
    return LoadedModel.single(build_msst(settings, state, str(path)), path.stem)
