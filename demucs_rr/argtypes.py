"""argparse ``type=`` validators shared by the command-line modules, and the checks of option
combinations that run before any work (contradictory options are refused in one line)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from demucs_rr.errors import ConfigError

MAX_SECONDS = 1e6
"""Largest duration ``seconds`` accepts (about 11 days; larger values overflow sample counts)."""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def overlap(text: str) -> float:
    """A chunk overlap in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def seconds(text: str) -> float:
    """A positive, finite duration in seconds (at most :data:`MAX_SECONDS`)."""
    value = float(text)
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds up to {MAX_SECONDS:g}, got {value}"
        )
    return value


Conflict = tuple[bool, str]
"""A contradiction between options: (whether it holds, the one-line message)."""


def refuse_conflicts(conflicts: Sequence[Conflict]) -> None:
    """Raise a :class:`ConfigError` with the message of the first conflict that holds."""
    for holds, message in conflicts:
        if holds:
            raise ConfigError(message)


def only_with(option: str, needed: str) -> str:
    """The message of an option given without the option it modifies."""
    return f"{option} applies only with {needed}; add {needed} or drop {option}"


def not_with(option: str, other: str, why: str) -> str:
    """The message of two options that contradict each other."""
    return f"{option} cannot be used with {other}: {why}"


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> None:
    """Replace the ``None`` sentinels of options not given on the command line by their default.

    Options whose combination with others is checked have ``default=None``, so that "given
    explicitly" can be told apart from "left at its default"; this fills them in afterwards.
    """
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def chunking_conflicts(args: argparse.Namespace) -> list[Conflict]:
    """``--segment`` or ``--overlap`` with ``--no-split`` (one pass has no chunks), checked
    before :func:`fill_defaults` (``args.overlap`` is ``None`` unless given)."""
    why = "--no-split separates each track in one pass, without chunks"
    return [
        (args.no_split and args.segment is not None, not_with("--segment", "--no-split", why)),
        (args.no_split and args.overlap is not None, not_with("--overlap", "--no-split", why)),
    ]
