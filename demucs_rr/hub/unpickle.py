"""The restricted unpickler that reads official Demucs pickles without running their code.

Official model packages (v2 ``models/NAME.th``, v3/v4 ``{sig}.th``) are pickles that reference
classes (``demucs.model.Demucs``, ``demucs.htdemucs.HTDemucs``...), an ``argparse.Namespace``,
``pathlib`` paths and ``fractions.Fraction``. They are read with
``torch.load(..., weights_only=False, pickle_module=RESTRICTED_PICKLE)`` whose unpickler resolves
only an explicit allow-list of globals (torch's tensor/storage rebuild machinery, dtypes,
``collections.OrderedDict``, ``fractions.Fraction``...). Official class references become inert
:class:`OfficialClassRef` markers (never called during unpickling), a Namespace becomes a dict
and paths become strings. Any other global (``os.system``, ``builtins.eval``,
``pathlib.Path.touch``, ``subprocess.Popen``...) aborts the load with :class:`Refused` before
anything is executed. Plain ``pickle.load`` is never used.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pathlib
import pickle
import types
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import torch

__all__ = ["OFFICIAL_CLASSES", "RESTRICTED_PICKLE", "OfficialClassRef", "Refused"]


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
OFFICIAL_CLASSES = (
    "demucs.model.Demucs",
    "demucs.tasnet.ConvTasNet",
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
    for path in OFFICIAL_CLASSES:
        allowed[path] = OfficialClassRef(path)
    return allowed


_ALLOWED_GLOBALS: dict[str, Any] | None = None


def _allowed_globals() -> dict[str, Any]:
    global _ALLOWED_GLOBALS
    if _ALLOWED_GLOBALS is None:
        _ALLOWED_GLOBALS = _build_allowed_globals()
    return _ALLOWED_GLOBALS


class Refused(pickle.UnpicklingError):
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
            raise Refused(key) from None


def _restricted_load(file: IO[bytes], **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return _restricted_load(io.BytesIO(data), **kwargs)


#: The ``pickle_module`` handed to ``torch.load``: only the restricted unpickler is exposed
#: (``torch.load`` uses ``Unpickler`` and, for the legacy format, ``load``).
RESTRICTED_PICKLE = types.ModuleType("demucs_rr_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]
RESTRICTED_PICKLE.loads = _restricted_loads  # type: ignore[attr-defined]
RESTRICTED_PICKLE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
