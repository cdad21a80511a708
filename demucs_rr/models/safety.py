"""Checks run on an untrusted model file *before* anything real is allocated.

* :func:`read_declared_shapes` parses a safetensors header by hand (the 8-byte length, then the
  JSON) and refuses a header that is not JSON, too long, declares unknown dtypes, negative or
  absurd shapes, offsets past the end of the file, or tensors larger than the file itself.
* :func:`build_checked` builds a model on the ``meta`` device (no memory), turns any constructor
  error into a one-line :class:`~demucs_rr.errors.PackageFormatError`, compares every state-dict
  shape with the stored ones, and only then builds the real model. A package can therefore only
  make demucs_rr allocate about as much as the file holds.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.modules.module as module_hooks

from demucs_rr.errors import DemucsRRError, PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.initialization import skip_random_init

__all__ = ["build_checked", "check_shapes", "read_declared_shapes", "shape_problems"]

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
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        raise PackageFormatError(
            f"{source}: cannot build {what} from the stored arguments ({detail[:300]})"
        ) from None


class _TooBig(PackageFormatError):
    """A constructor registered more modules / parameters than the file could fill."""


@contextmanager
def _registration_limit(limit: int, source: str) -> Iterator[None]:
    """Abort a constructor (in this thread) after ``limit`` module / parameter / buffer
    registrations: kwargs such as ``lstm_layers=10**6`` would otherwise take hours even on the
    ``meta`` device, for a file whose few tensors could never fill the model."""
    thread = threading.get_ident()
    count = 0

    def hook(*_: object) -> None:
        nonlocal count
        if threading.get_ident() != thread:
            return
        count += 1
        if count > limit:
            raise _TooBig(
                f"{source}: the stored arguments build a model far larger than the file "
                f"(more than {limit} modules and tensors)"
            )

    handles = [
        module_hooks.register_module_module_registration_hook(hook),
        module_hooks.register_module_parameter_registration_hook(hook),
        module_hooks.register_module_buffer_registration_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    """Build ``factory(*args, **kwargs)`` only once a ``meta``-device build shows that its
    state has exactly the ``stored`` shapes (so the real build allocates what the file holds).

    Args:
        rename: maps the stored shapes to the model's key names (old checkpoint layouts).

    Raises:
        PackageFormatError: a constructor error or a state that does not match, on one line.
    """
    limit = _registration_limit(8 * len(stored) + 1000, source)
    with skip_random_init(), torch.device("meta"), limit:
        probe = _construct(factory, args, kwargs, what, source)
    if rename is not None:
        stored = rename(probe, stored)
    check_shapes(probe, stored, source)
    del probe
    with skip_random_init():  # the caller loads every tensor of ``stored`` next
        return _construct(factory, args, kwargs, what, source)
