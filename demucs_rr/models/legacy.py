"""Safe loading of official Demucs v2 files: hub state dicts and pickled model packages.

Two formats exist:

- hub files (``demucs-e07c671f.th``...): a plain ``dict[str, Tensor]`` written with ``torch.save``;
  read by :func:`load_state_file` with ``weights_only=True``.
- local packages (``models/NAME.th``): a pickled ``{'klass', 'args', 'kwargs', 'state',
  'training_args'}`` dict that references the class ``demucs.model.Demucs`` (or
  ``demucs.tasnet.ConvTasNet``), an ``argparse.Namespace`` and ``pathlib.PosixPath`` values. It
  cannot be read with ``weights_only=True``; :func:`load_official_package` reads it with
  ``torch.load(..., weights_only=False, pickle_module=<restricted>)`` whose unpickler resolves
  only an explicit allow-list of globals (torch's tensor/storage rebuild machinery, dtypes,
  ``collections.OrderedDict``, ...). Official class references become inert
  :class:`OfficialClassRef` markers (never called during unpickling), a Namespace becomes a
  dict and paths become strings. Any other global (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``...) aborts the load with :class:`~demucs_rr.errors.PackageFormatError`
  before anything is executed. Plain ``pickle.load`` is never used.
"""

from __future__ import annotations

import _compat_pickle
import collections
import inspect
import logging
import pathlib
import pickle
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import torch

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.package import load_state_strict

__all__ = [
    "LegacyPackage",
    "OfficialClassRef",
    "load_official_package",
    "load_state_file",
    "model_from_official_package",
    "resolve_official_class",
]

logger = logging.getLogger(__name__)

_QUANTIZED_HINT = (
    "quantized (DiffQ) v2 weights such as demucs_quantized are not supported; "
    "use the `demucs` or `demucs_extra` model instead"
)


# --------------------------------------------------------------------------------------------
# Plain hub state dicts
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")


def _validate_state(state: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    """Check that ``state`` is a name -> Tensor dict (refusing DiffQ-compressed states)."""
    if isinstance(state, dict) and ("compressed" in state or "__quantized" in state):
        raise PackageFormatError(f"cannot load {path}: {_QUANTIZED_HINT}")
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
            f"cannot load {path} as a plain state dict ({_one_line(exc)})"
        ) from None
    return _validate_state(state, path, "the file")


# --------------------------------------------------------------------------------------------
# Restricted unpickler for pickled packages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialClassRef:
    """Inert stand-in for an official class referenced by a package (``demucs.model.Demucs``).

    It is not callable, so a pickle cannot instantiate anything through it.
    """

    path: str


class _NamespaceDict(dict[str, Any]):
    """Stand-in for ``argparse.Namespace``: unpickles (NEWOBJ + BUILD) into a dict."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("argparse.Namespace state is not a dict")
        self.update(state)


def _posix_path_str(*parts: str) -> str:
    return str(pathlib.PurePosixPath(*parts))


def _windows_path_str(*parts: str) -> str:
    return str(pathlib.PureWindowsPath(*parts))


#: Official class paths a package may reference; resolved by :func:`resolve_official_class`.
_OFFICIAL_CLASSES = (
    "demucs.model.Demucs",
    "demucs.tasnet.ConvTasNet",
    # v3/v4 classes: read here, built by demucs_rr.models.official_v4.
    "demucs.demucs.Demucs",
    "demucs.hdemucs.HDemucs",
    "demucs.htdemucs.HTDemucs",
)


def _build_allowed_globals() -> dict[str, Any]:
    """Allow-list ``"module.name" -> object``, in the spirit of torch's weights-only unpickler."""
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "_codecs.encode": __import__("_codecs").encode,  # bytes under pickle protocol 2
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "builtins.complex": complex,
        "builtins.slice": slice,
        "fractions.Fraction": Fraction,  # v3/v4 HTDemucs segment
        "argparse.Namespace": _NamespaceDict,
    }
    layout = getattr(torch.serialization, "_get_layout", None)
    if layout is not None:
        allowed["torch.serialization._get_layout"] = layout
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_nested_tensor",
        "_rebuild_qtensor",
    ):
        func = getattr(torch._utils, name, None)
        if func is not None:
            allowed[f"torch._utils.{name}"] = func
    # dtypes (torch.float32, ...), quantization schemes, layouts, memory formats.
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)):
            allowed[f"torch.{name}"] = value
    # Storage classes (torch.load's own wrapper handles most "...Storage" names first).
    for storage in getattr(torch, "_storage_classes", ()):
        allowed[f"{storage.__module__}.{storage.__name__}"] = storage
        allowed[f"torch.{storage.__name__}"] = storage
    for module in ("pathlib", "pathlib._local"):
        for name in ("PosixPath", "PurePosixPath", "Path", "PurePath"):
            allowed[f"{module}.{name}"] = _posix_path_str
        for name in ("WindowsPath", "PureWindowsPath"):
            allowed[f"{module}.{name}"] = _windows_path_str
    for path in _OFFICIAL_CLASSES:
        allowed[path] = OfficialClassRef(path)
    return allowed


_ALLOWED_GLOBALS: dict[str, Any] | None = None


def _allowed_globals() -> dict[str, Any]:
    global _ALLOWED_GLOBALS
    if _ALLOWED_GLOBALS is None:
        _ALLOWED_GLOBALS = _build_allowed_globals()
    return _ALLOWED_GLOBALS


class _Refused(pickle.UnpicklingError):
    """Raised by the restricted unpickler for a global outside the allow-list."""

    def __init__(self, reference: str) -> None:
        super().__init__(reference)
        self.reference = reference


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names written by protocol <= 2 (``__builtin__``, ``copy_reg``...), as the
        # default find_class does with fix_imports.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        try:
            return _allowed_globals()[key]
        except KeyError:
            raise _Refused(key) from None


def _restricted_load(file: IO[bytes], **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return _restricted_load(io.BytesIO(data), **kwargs)


#: The ``pickle_module`` handed to ``torch.load``: only the restricted unpickler is exposed
#: (``torch.load`` uses ``Unpickler`` and, for the legacy format, ``load``).
_restricted_pickle = types.ModuleType("demucs_rr_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
_restricted_pickle.loads = _restricted_loads  # type: ignore[attr-defined]
_restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


@dataclass
class LegacyPackage:
    """Content of an official pickled model package.

    Attributes:
        klass_name: official class path, e.g. ``"demucs.model.Demucs"``.
        args: positional constructor arguments.
        kwargs: keyword constructor arguments (paths as str).
        state: state dict (float32 for v2, float16 for v3/v4 exports).
        training_args: the training ``argparse.Namespace`` / config as a plain dict, or None.
    """

    klass_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: dict[str, torch.Tensor]
    training_args: dict[str, Any] | None


def load_official_package(path: str | Path) -> LegacyPackage:
    """Read an official pickled package through the restricted unpickler.

    Raises:
        ModelNotFoundError: if the file does not exist.
        PackageFormatError: if the pickle references anything outside the allow-list (nothing
            of it is executed), is not a package dict, or holds quantized weights.
    """
    path = Path(path)
    _check_exists(path)
    try:
        # weights_only=False is safe here: every global goes through the restricted unpickler.
        package = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle
        )
    except _Refused as exc:
        raise PackageFormatError(
            f"refusing to load {path}: it references {exc.reference}, which is not allowed "
            "in a model package"
        ) from None
    except Exception as exc:
        raise PackageFormatError(f"cannot read model package {path} ({_one_line(exc)})") from None

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
    args = package.get("args", ())
    kwargs = package["kwargs"]
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise PackageFormatError(f"cannot load {path}: malformed args/kwargs in the package")
    state = _validate_state(package["state"], path, "the package state")
    training_args = package.get("training_args")
    if isinstance(training_args, dict):
        training_args = dict(training_args)
    elif training_args is not None:
        training_args = None
    return LegacyPackage(
        klass_name=klass.path,
        args=list(args),
        kwargs=dict(kwargs),
        state=state,
        training_args=training_args,
    )


def resolve_official_class(klass_name: str) -> Callable[..., PackagedModel]:
    """Map an official class path to the demucs_rr class implementing it.

    Raises:
        PackageFormatError: if the class is not implemented by demucs_rr.
    """
    if klass_name == "demucs.model.Demucs":
        from demucs_rr.models.demucs import Demucs

        return Demucs
    if klass_name == "demucs.tasnet.ConvTasNet":
        from demucs_rr.models.tasnet import ConvTasNet

        return ConvTasNet
    raise PackageFormatError(
        f"model class {klass_name} is not supported by the v2 package loader (Demucs 3/4 "
        "packages load with demucs_rr.models.official_v4.model_from_official_v4_package)"
    )


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


def model_from_official_package(path: str | Path) -> PackagedModel:
    """Build the model of an official v2 package and strictly load its (float32) weights.

    Returns:
        the model in eval mode.

    Raises:
        ModelNotFoundError, PackageFormatError: see :func:`load_official_package`; also for an
            unsupported class, bad constructor arguments or weights that do not match.
    """
    package = load_official_package(path)
    klass = resolve_official_class(package.klass_name)
    kwargs = _filter_kwargs(klass, package.kwargs)
    try:
        model = klass(*package.args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise PackageFormatError(f"cannot build {package.klass_name} from {path}: {exc}") from None
    load_state_strict(model, package.state, str(path))
    return model.eval()
