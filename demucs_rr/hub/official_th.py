"""Safe loading of official Demucs files: v2 hub state dicts and official model packages.

Formats:

- v2 hub files (``demucs-e07c671f.th``...): a plain ``dict[str, Tensor]`` written with
  ``torch.save``; read by :func:`load_state_file` with ``weights_only=True``.
- official packages, v2 (``models/NAME.th``) and v3/v4 (``{sig}.th``, ``{sig}-{hash}.th``):
  a pickled ``{'klass', 'args', 'kwargs', 'state', 'training_args'[, 'metrics']}`` dict whose
  ``klass`` is ``demucs.model.Demucs``, ``demucs.tasnet.ConvTasNet``, ``demucs.demucs.Demucs``,
  ``demucs.hdemucs.HDemucs`` or ``demucs.htdemucs.HTDemucs``. v2 packages hold an
  ``argparse.Namespace`` with paths and float32 weights; v3/v4 packages a plain dict, float16
  weights and, for HTDemucs, a ``fractions.Fraction`` segment. :func:`load_official_package`
  reads both through the restricted unpickler of :mod:`demucs_rr.hub.unpickle` (nothing
  outside its allow-list is resolved, nothing from the file is executed) and
  :func:`model_from_official_package` is the one entry point that builds the matching demucs_rr
  model (``Demucs``, ``ConvTasNet``, ``DemucsV3``, ``HDemucs``, ``HTDemucs``) and strictly
  loads the weights as float32.

DiffQ-quantized states (``demucs_quantized``, the ``mdx_q`` / ``mdx_extra_q`` members) are
refused with the name of the unquantized model to use instead.
"""

from __future__ import annotations

import inspect
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from demucs_rr.errors import ModelNotFoundError, PackageFormatError, one_line
from demucs_rr.hub.safety import build_checked, load_weights
from demucs_rr.hub.unpickle import RESTRICTED_PICKLE, OfficialClassRef, Refused
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.registry import get_model_class

__all__ = [
    "OfficialClassRef",
    "OfficialPackage",
    "build_official_model",
    "load_official_package",
    "load_state_file",
    "model_from_official_package",
    "resolve_official_class",
]

logger = logging.getLogger(__name__)

_V2_CLASSES = ("demucs.model.Demucs", "demucs.tasnet.ConvTasNet")

_QUANTIZED_HINT = (
    "quantized (DiffQ) v2 weights such as demucs_quantized are not supported; "
    "use the `demucs` or `demucs_extra` model instead"
)

_QUANTIZED_HINT_V4 = (
    "quantized (DiffQ) weights such as the mdx_q / mdx_extra_q members are not supported; "
    "use the unquantized `mdx` or `mdx_extra` model instead"
)


# --------------------------------------------------------------------------------------------
# Plain hub state dicts
# --------------------------------------------------------------------------------------------


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")


def validate_state(
    state: Any, path: str | Path, what: str, quantized_hint: str = _QUANTIZED_HINT
) -> dict[str, torch.Tensor]:
    """Check that ``state`` is a name -> Tensor dict (refusing DiffQ-compressed states).

    Raises:
        PackageFormatError: naming ``path`` and ``what`` (e.g. "the package state").
    """
    if isinstance(state, dict) and ("compressed" in state or "__quantized" in state):
        raise PackageFormatError(f"cannot load {path}: {quantized_hint}")
    if not isinstance(state, dict) or not state:
        raise PackageFormatError(
            f"cannot load {path}: {what} is a {type(state).__name__}, "
            "expected a non-empty dict of name -> tensor"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PackageFormatError(
                f"cannot load {path}: {what} entry {key!r} is a {type(value).__name__}, "
                "expected a tensor"
            )
        if value.device.type != "cpu" or value.layout != torch.strided or value.is_quantized:
            raise PackageFormatError(
                f"cannot load {path}: {what} entry {key!r} is a {value.layout} tensor on "
                f"{value.device.type}, expected plain weights"
            )
    return dict(state)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a v2 hub state file (plain ``dict[str, Tensor]``) safely.

    Args:
        path: file written by ``torch.save(state_dict)``.

    Returns:
        the state dict, tensors on CPU, dtypes as stored.

    Raises:
        ModelNotFoundError: if the file does not exist.
        PackageFormatError: if the file is not a plain state dict (e.g. a pickled package that
            needs :func:`load_official_package`, or the DiffQ-quantized ``demucs_quantized``).
    """
    path = Path(path)
    _check_exists(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PackageFormatError(
            f"cannot load {path} as a plain state dict: it pickles Python objects other than "
            "tensors (an official model package needs load_official_package)"
        ) from None
    except Exception as exc:
        raise PackageFormatError(
            f"cannot load {path} as a plain state dict ({one_line(exc, typed=True)})"
        ) from None
    return validate_state(state, path, "the file")


# --------------------------------------------------------------------------------------------
# Official packages (v2, v3, v4)
# --------------------------------------------------------------------------------------------


@dataclass
class OfficialPackage:
    """Content of an official model package (pickled ``.th`` or 4.1.0 hub ``.safetensors``).

    Attributes:
        klass_name: official class path, e.g. ``"demucs.htdemucs.HTDemucs"``.
        args: positional constructor arguments.
        kwargs: keyword constructor arguments (paths as str, HTDemucs segment a Fraction).
        state: state dict (float32 for v2, float16 for v3/v4 exports).
        training_args: the training ``argparse.Namespace`` / config as a plain dict, or None.
    """

    klass_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: dict[str, torch.Tensor]
    training_args: dict[str, Any] | None


def _unpickle(path: Path) -> Any:
    """``torch.load`` through the restricted unpickler, errors as one-line PackageFormatError."""
    try:
        # weights_only=False is safe here: every global goes through the restricted unpickler.
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE
        )
    except Refused as exc:
        raise PackageFormatError(
            f"refusing to load {path}: it references {exc.reference}, which is not allowed "
            "in a model package"
        ) from None
    except Exception as exc:
        raise PackageFormatError(
            f"cannot read model package {path} ({one_line(exc, typed=True)})"
        ) from None


def load_official_package(path: str | Path) -> OfficialPackage:
    """Read an official pickled package (v2 or v3/v4) through the restricted unpickler.

    Raises:
        ModelNotFoundError: if the file does not exist.
        PackageFormatError: if the pickle references anything outside the allow-list (nothing
            of it is executed), is not a package dict, or holds quantized weights.
    """
    path = Path(path)
    _check_exists(path)
    package = _unpickle(path)
    if not isinstance(package, dict) or not {"klass", "kwargs", "state"} <= set(package):
        keys = sorted(map(str, package)) if isinstance(package, dict) else None
        raise PackageFormatError(
            f"cannot load {path}: not an official model package (expected a dict with "
            f"klass/args/kwargs/state, got {type(package).__name__}"
            + (f" with keys {keys}" if keys is not None else "")
            + ")"
        )
    klass = package["klass"]
    if not isinstance(klass, OfficialClassRef):
        raise PackageFormatError(
            f"cannot load {path}: 'klass' is a {type(klass).__name__}, not a known model class"
        )
    return package_content(
        klass.path,
        package.get("args", ()),
        package["kwargs"],
        package["state"],
        package.get("training_args"),
        str(path),
    )


def package_content(
    klass_name: str, args: Any, kwargs: Any, state: Any, training_args: Any, source: str
) -> OfficialPackage:
    """Validate the parts of an official package read from ``source``.

    Raises:
        PackageFormatError: malformed args / kwargs, or a state that is not a name -> tensor
            dict (DiffQ states are refused with the unquantized model to use).
    """
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise PackageFormatError(f"cannot load {source}: malformed args/kwargs in the package")
    hint = _QUANTIZED_HINT if klass_name in _V2_CLASSES else _QUANTIZED_HINT_V4
    checked = validate_state(state, source, "the package state", hint)
    return OfficialPackage(
        klass_name=klass_name,
        args=list(args),
        kwargs=dict(kwargs),
        state=checked,
        training_args=dict(training_args) if isinstance(training_args, dict) else None,
    )


IMPLEMENTATIONS: dict[str, str] = {
    "demucs.model.Demucs": "Demucs",
    "demucs.tasnet.ConvTasNet": "ConvTasNet",
    "demucs.demucs.Demucs": "DemucsV3",
    "demucs.hdemucs.HDemucs": "HDemucs",
    "demucs.htdemucs.HTDemucs": "HTDemucs",
}
"""Official class path -> registry name of the demucs_rr class implementing it."""


def resolve_official_class(klass_name: str) -> Callable[..., PackagedModel]:
    """Map an official class path to the demucs_rr class implementing it.

    Raises:
        PackageFormatError: if the class is not implemented by demucs_rr.
    """
    if klass_name not in IMPLEMENTATIONS:
        raise PackageFormatError(
            f"model class {klass_name} is not supported (known official classes: "
            f"{', '.join(IMPLEMENTATIONS)})"
        )
    return get_model_class(IMPLEMENTATIONS[klass_name])


def _filter_kwargs(klass: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keyword arguments the constructor does not accept (as the official loader)."""
    params = inspect.signature(klass).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    kept = {}
    for key, value in kwargs.items():
        if key in params:
            kept[key] = value
        else:
            logger.warning("dropping unknown constructor argument %r of %s", key, klass.__name__)
    return kept


def _renamed(model: PackagedModel, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """``shapes`` under the key names of ``model`` (DemucsV3 renames early v3 keys)."""
    upgrade = getattr(model, "upgrade_state", None)
    return upgrade(shapes) if callable(upgrade) else shapes


def build_official_model(package: OfficialPackage, source: str) -> PackagedModel:
    """Build the demucs_rr model of an official package and strictly load its weights.

    Args:
        package: what :func:`load_official_package` (or the hub reader) returned.
        source: where it comes from (a path), for error messages.

    Returns:
        the model in eval mode, float32 weights.

    Raises:
        PackageFormatError: unsupported class, bad constructor arguments or weights that do
            not match.
    """
    klass = resolve_official_class(package.klass_name)
    kwargs = _filter_kwargs(klass, package.kwargs)
    shapes = {k: tuple(v.shape) for k, v in package.state.items()}
    model = build_checked(
        klass, package.args, kwargs, shapes, source, what=package.klass_name, rename=_renamed
    )
    state = package.state
    upgrade = getattr(model, "upgrade_state", None)
    if callable(upgrade):  # DemucsV3: old key names of early v3 packages
        state = upgrade(state)
    load_weights(model, state, source)
    return model.eval()


def model_from_official_package(path: str | Path) -> PackagedModel:
    """Build the model of any official pickled package (v2, v3 or v4) with float32 weights.

    This is the one entry point for official ``.th`` packages: v2 ``models/NAME.th``, v3/v4
    ``{sig}.th`` / ``{sig}-{hash}.th`` bag members included.

    Returns:
        the model (``Demucs``, ``ConvTasNet``, ``DemucsV3``, ``HDemucs`` or ``HTDemucs``) in
        eval mode.

    Raises:
        ModelNotFoundError, PackageFormatError: see :func:`load_official_package`; also for an
            unsupported class, bad constructor arguments or weights that do not match.
    """
    package = load_official_package(path)
    return build_official_model(package, str(path))
