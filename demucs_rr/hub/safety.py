"""Checks run on an untrusted model file *before* anything real is allocated.

* :func:`read_declared_shapes` parses a safetensors header by hand (the 8-byte length, then the
  JSON) and refuses a header that is not JSON, too long, declares unknown dtypes, negative or
  absurd shapes, offsets past the end of the file, or tensors larger than the file itself.
* :func:`build_checked` builds a model on the ``meta`` device (no memory, no random
  initialisation), turns any constructor error into a one-line
  :class:`~demucs_rr.errors.PackageFormatError` and compares every state-dict shape with the
  stored ones. :func:`load_weights` then gives that model real storage holding exactly the stored
  tensors (strict: same keys and shapes), and has every module recompute its non-persistent
  buffers (``reset_buffers()``). A package can therefore only make demucs_rr allocate about as
  much as the file holds, and no process-wide state is touched while it is read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from demucs_rr.errors import DemucsRRError, PackageFormatError, one_line
from demucs_rr.models.base import PackagedModel

__all__ = [
    "build_checked",
    "check_shapes",
    "load_weights",
    "read_declared_shapes",
    "shape_problems",
]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors JSON header accepted (the safetensors library uses the same cap)."""

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

Shapes = Mapping[str, tuple[int, ...]]


def read_declared_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape declared by the safetensors header of ``path`` (nothing else read).

    Raises:
        PackageFormatError: the header is malformed or declares more data than the file holds.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise PackageFormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise PackageFormatError(
                    f"{path} is not a safetensors file (its header length {length} exceeds "
                    f"the file size, {size} bytes)"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise PackageFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageFormatError(
            f"{path} is not a safetensors file (header is not valid JSON: {exc})"
        ) from None
    if not isinstance(header, dict):
        raise PackageFormatError(f"{path} is not a safetensors file (header is not an object)")
    return _shapes(header, size - 8 - length, path)


def _shapes(header: dict[str, Any], data_bytes: int, path: Path) -> dict[str, tuple[int, ...]]:
    """Validate every tensor entry of a parsed header against ``data_bytes`` of payload."""
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise PackageFormatError(f"{path}: tensor {name!r} has a malformed header entry")
        shape, offsets = _ints(entry.get("shape")), _ints(entry.get("data_offsets"))
        itemsize = _DTYPE_BYTES.get(str(entry.get("dtype")))
        if itemsize is None or shape is None or offsets is None or len(offsets) != 2:
            raise PackageFormatError(f"{path}: tensor {name!r} has a malformed header entry")
        begin, end = offsets
        nbytes = math.prod(shape) * itemsize
        if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
            raise PackageFormatError(
                f"{path}: tensor {name!r} (shape {tuple(shape)}) lies outside the file or does "
                "not match its declared size; the file is truncated or damaged"
            )
        total += nbytes
        shapes[name] = tuple(shape)
    if total > data_bytes:
        raise PackageFormatError(f"{path}: tensors declare more data than the file holds")
    return shapes


def _ints(value: object) -> list[int] | None:
    """``value`` when it is a list of non-negative ints (bool excluded), else None."""
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return value
    return None


def shape_problems(own: Shapes, stored: Shapes) -> list[str]:
    """``missing keys [..]``, ``unexpected keys [..]``, ``shape mismatch [..]`` (each at most
    5 names then ``(+N more)``), or an empty list when ``stored`` fits ``own`` exactly."""
    missing = [k for k in own if k not in stored]
    extra = [k for k in stored if k not in own]
    shapes = [
        f"{k}: stored {tuple(v)}, model {tuple(own[k])}"
        for k, v in stored.items()
        if k in own and tuple(v) != tuple(own[k])
    ]
    return [
        f"{what} [{_shorten(items)}]"
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", extra),
            ("shape mismatch", shapes),
        )
        if items
    ]


def _shorten(items: list[str], shown: int = 5) -> str:
    text = ", ".join(items[:shown])
    return text + (f" (+{len(items) - shown} more)" if len(items) > shown else "")


def check_shapes(model: PackagedModel, stored: Shapes, source: str) -> None:
    """Raise a one-line PackageFormatError unless ``stored`` fits ``model``'s state exactly."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = shape_problems(own, stored)
    if problems:
        raise PackageFormatError(
            f"{source}: weights do not match {type(model).__name__}: " + "; ".join(problems)
        )


def _construct(
    factory: Callable[..., PackagedModel],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    what: str,
    source: str,
) -> PackagedModel:
    try:
        return factory(*args, **kwargs)
    except DemucsRRError:
        raise
    except MemoryError:
        raise PackageFormatError(f"{source}: the stored {what} arguments are absurd") from None
    except Exception as exc:  # any constructor error is a property of the file
        raise PackageFormatError(
            f"{source}: cannot build {what} from the stored arguments ({one_line(exc, typed=True)})"
        ) from None


class _TooBig(PackageFormatError):
    """A constructor made far more tensors than the file could fill."""


class _CallLimit(TorchFunctionMode):
    """Abort a constructor after ``limit`` torch calls (tensor creations, initialisers).

    Kwargs such as ``lstm_layers=10**6`` would otherwise take hours even on the ``meta``
    device, for a file whose few tensors could never fill the model. Torch function modes are
    thread-local, so a model built in another thread meanwhile is neither counted nor slowed.
    """

    def __init__(self, limit: int, source: str) -> None:
        super().__init__()
        self.limit = limit
        self.source = source
        self.calls = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        self.calls += 1
        if self.calls > self.limit:
            raise _TooBig(
                f"{self.source}: the stored arguments build a model far larger than the file "
                f"(more than {self.limit} tensor operations)"
            )
        if _sets_values_only(func) and _is_meta(args, kwargs):
            # a meta tensor has no values to set; torch's meta path for these imports its
            # compiler stack (sympy, dynamo): half a second of every process that loads a model
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


_VALUE_METHODS = frozenset(
    {"fill_", "zero_", "uniform_", "normal_", "div_", "mul_", "add_", "sub_", "clamp_", "copy_"}
)
"""In-place tensor methods that change values only (never shape, dtype or device)."""


def _sets_values_only(func: Callable[..., Any]) -> bool:
    """An initialiser of ``torch.nn.init`` or an in-place method of :data:`_VALUE_METHODS`."""
    if getattr(func, "__module__", None) == "torch.nn.init":
        return True
    owner, _, name = getattr(func, "__qualname__", "").rpartition(".")
    return owner in ("Tensor", "TensorBase") and name in _VALUE_METHODS


def _is_meta(args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> bool:
    """Whether the tensor changed (first argument or ``tensor=``) is on the meta device."""
    tensor = args[0] if args else (kwargs or {}).get("tensor")
    return isinstance(tensor, torch.Tensor) and tensor.is_meta


def build_checked(
    factory: Callable[..., PackagedModel],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    stored: Shapes,
    source: str,
    *,
    what: str = "the model",
    rename: Callable[[PackagedModel, Shapes], Shapes] | None = None,
) -> PackagedModel:
    """``factory(*args, **kwargs)`` built on the ``meta`` device, once its state is shown to
    have exactly the ``stored`` shapes; :func:`load_weights` gives it real storage.

    Args:
        rename: maps the stored shapes to the model's key names (old checkpoint layouts).

    Raises:
        PackageFormatError: a constructor error or a state that does not match, on one line.
    """
    grad = torch.is_grad_enabled()
    try:
        with torch.device("meta"), _CallLimit(64 * len(stored) + 10_000, source):
            model = _construct(factory, args, kwargs, what, source)
    finally:  # the limit can strike inside a no_grad() exit, before it restored autograd
        torch.set_grad_enabled(grad)
    if rename is not None:
        stored = rename(model, stored)
    check_shapes(model, stored, source)
    return model


def _to_empty_cpu(module: nn.Module) -> None:
    """``module.to_empty(device="cpu")`` through ``torch.empty``: ``to_empty`` calls
    ``empty_like`` on the meta tensors, whose reference implementation imports sympy (0.3-0.45 s
    of every process that loads a model)."""
    empty = lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu")  # noqa: E731
    module._apply(empty, recurse=True)  # type: ignore[no-untyped-call]  # what to_empty calls


def load_weights(model: PackagedModel, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` exactly: same keys, same shapes, or nothing is loaded.

    ``model`` may live on the ``meta`` device (:func:`build_checked`): it then gets real,
    uninitialised storage (``to_empty``) that the strict load fills, and every module that
    defines ``reset_buffers()`` recomputes its non-persistent buffers. Floating tensors are cast
    to the model's dtype (packages may store float16). Every mismatch is reported at once, on
    one line::

        SOURCE: weights do not match Demucs: missing keys [a, b]; unexpected keys [c];
        shape mismatch [d: stored (2, 7), model (2, 8)]

    (lists longer than 5 end with ``(+N more)``).

    Raises:
        PackageFormatError: on missing / unexpected keys, shape mismatches, or tensors that
            cannot be loaded.
    """
    check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    module = model if isinstance(model, nn.Module) else None
    on_meta = module is not None and any(t.is_meta for t in module.state_dict().values())
    if on_meta and module is not None:
        _check_resettable(module)
        _to_empty_cpu(module)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a dtype that cannot be copied
        raise PackageFormatError(
            f"{source}: cannot load the weights into {type(model).__name__}: "
            f"{one_line(exc, last=True)}"
        ) from None
    if on_meta and module is not None:
        for sub in module.modules():
            reset = getattr(sub, "reset_buffers", None)
            if callable(reset):
                reset()


def _check_resettable(module: nn.Module) -> None:
    """Every module with non-persistent buffers (absent from the state dict, so left
    uninitialised by ``to_empty``) must recompute them in ``reset_buffers()``."""
    for name, sub in module.named_modules():
        if sub._non_persistent_buffers_set and not callable(getattr(sub, "reset_buffers", None)):
            raise TypeError(  # a model class bug, not a property of the file
                f"{type(sub).__name__} ({name or 'model'}) has buffers outside its state dict "
                f"({', '.join(sorted(sub._non_persistent_buffers_set))}) but no reset_buffers()"
            )
