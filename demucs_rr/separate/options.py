"""Engine options, declared once, and the combinations of ``separate`` options.

:class:`ApplyOptions` says how the engine applies a model (chunks, overlap, shifts, batch,
precision); every default lives there. ``separate``, ``evaluate`` and ``serve`` declare the
same command-line options with :func:`add_engine_arguments` and read them back with
:func:`engine_options`.

Options that only make sense with another one (``--mp3-bitrate`` with ``--mp3``, ``--block-size``
with ``--stream``, ``--seed`` with ``--shifts``...) have ``default=None`` in the parser so that an
explicit value can be told apart from the default; :func:`check_separate_options` refuses the
contradictions, then fills in the defaults (:data:`DEFAULTS`). This module does not import torch
(``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Any

from demucs_rr.argtypes import (
    Conflict,
    chunking_conflicts,
    fill_defaults,
    non_negative_int,
    not_with,
    only_with,
    overlap,
    positive_int,
    refuse_conflicts,
    seconds,
)
from demucs_rr.audio.options import WriteOptions

__all__ = [
    "DEFAULTS",
    "PRECISIONS",
    "ApplyOptions",
    "add_engine_arguments",
    "check_separate_options",
    "engine_options",
]

PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions of the model's forward passes (:mod:`demucs_rr.separate.precision`)."""


@dataclass(frozen=True)
class ApplyOptions:
    """How the engine applies a model.

    Attributes:
        segment: chunk length in seconds; ``None`` uses the model's ``segment_length`` (each
            member's own for an ensemble).
        overlap: fraction of overlap between neighbouring chunks, in [0, 1); ``None`` uses the
            model's own (``model.chunking``: 0.25 for Demucs, ``1 - 1/num_overlap`` for
            band-split models, whose step is then exactly ``segment // num_overlap``).
        split: cut the track into chunks; ``False`` runs the whole track in one call.
        shifts: number of random time shifts averaged (shift trick); 0 disables it.
        seed: seed of the shift offsets, so that shifted runs are reproducible.
        batch_size: number of chunks per forward pass.
        transition_power: sharpness of the triangular cross-fade (>= 1).
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'`` for the model's forward passes (see
            :mod:`demucs_rr.separate.precision`); the engine's own arithmetic stays float32.

    Raises:
        ConfigError: a value out of range, on one line.
    """

    segment: float | None = None
    overlap: float | None = None
    split: bool = True
    shifts: int = 0
    seed: int = 0
    batch_size: int = 1
    transition_power: float = 1.0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        segment = self.segment
        problems = [
            (
                self.overlap is not None and not 0 <= self.overlap < 1,
                f"overlap must be in [0, 1), got {self.overlap}",
            ),
            (self.shifts < 0, f"shifts must be >= 0, got {self.shifts}"),
            (self.batch_size < 1, f"batch size must be >= 1, got {self.batch_size}"),
            (
                segment is not None and not (math.isfinite(segment) and segment > 0),
                f"segment must be a positive number of seconds, got {segment}",
            ),
            (self.transition_power < 1, "transition power must be >= 1"),
            (
                self.precision not in PRECISIONS,
                f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}",
            ),
        ]
        refuse_conflicts(problems)

    def segment_samples(self, samplerate: int) -> int | None:
        """:attr:`segment` in samples at ``samplerate`` (at least 1), or None."""
        if self.segment is None:
            return None
        return max(1, int(self.segment * samplerate))


_D = ApplyOptions()


def add_engine_arguments(parser: argparse.ArgumentParser, *, shifts: bool = True) -> None:
    """The engine options (:class:`ApplyOptions`) of a command; ``shifts=False`` leaves out
    ``--shifts`` and ``--seed`` (``serve``: each job chooses its shifts)."""
    p = parser
    if shifts:
        p.add_argument(
            "--shifts",
            type=non_negative_int,
            default=_D.shifts,
            help="random shifts averaged (shift trick; better, N times slower); "
            f"default {_D.shifts}",
        )
        # default=None: refused without the option it modifies (check_separate_options)
        p.add_argument("--seed", type=int, help=f"seed of the shift offsets (default {_D.seed})")
    p.add_argument(
        "--overlap",
        type=overlap,
        help="chunk overlap in [0, 1) (default: the model's; 0.25 for Demucs, "
        "1 - 1/num_overlap for band-split models)",
    )
    p.add_argument("--segment", type=seconds, help="chunk length in seconds (default: model's)")
    p.add_argument("--no-split", action="store_true", help="process each track in one pass")
    p.add_argument(
        "-b",
        "--batch-size",
        type=positive_int,
        default=_D.batch_size,
        help=f"chunks per forward pass (faster on GPU, more memory); default {_D.batch_size}",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=_D.precision,
        help=f"precision of the model's forward passes: {_D.precision} (default), bf16 (CPUs "
        "with AVX512-BF16/AMX, CUDA; about 2x faster for HT Demucs on such CPUs), fp16 "
        "(CUDA, MPS)",
    )


def engine_options(args: argparse.Namespace) -> ApplyOptions:
    """The :class:`ApplyOptions` of parsed engine arguments (options not given keep their
    default; contradictions are checked before, e.g. by :func:`check_separate_options`)."""
    given: dict[str, Any] = {
        "segment": getattr(args, "segment", None),
        "overlap": getattr(args, "overlap", None),
        "split": not getattr(args, "no_split", False),
        "shifts": getattr(args, "shifts", None),
        "seed": getattr(args, "seed", None),
        "batch_size": getattr(args, "batch_size", None),
        "precision": getattr(args, "precision", None),
    }
    names = {f.name for f in fields(ApplyOptions)}
    return ApplyOptions(**{k: v for k, v in given.items() if v is not None and k in names})


_WRITE = WriteOptions()

DEFAULTS = {
    "mp3_bitrate": _WRITE.mp3_bitrate,
    "mp3_preset": _WRITE.mp3_preset,
    "block_size": 1024,
    "other_method": "add",
}
"""Defaults of the ``separate`` options whose parser default is the ``None`` sentinel."""


def _stream_conflicts(args: argparse.Namespace) -> list[Conflict]:
    """Engine options that ``--stream`` (block by block, one pass, no chunks) does not use."""
    why = "--stream runs the causal model block by block, in one pass without chunks"
    ignored = [
        ("--shifts", args.shifts != _D.shifts),
        ("--segment", args.segment is not None),
        ("--overlap", args.overlap is not None),
        ("--no-split", args.no_split),
        ("--batch-size", args.batch_size != _D.batch_size),
        ("--precision", args.precision != _D.precision),
    ]
    return [(args.stream and given, not_with(name, "--stream", why)) for name, given in ignored]


def check_separate_options(args: argparse.Namespace) -> None:
    """Refuse contradictory ``separate`` options, then fill in the sentinel defaults.

    Raises:
        ConfigError: one line naming the two options (exit 2, before anything is loaded).
    """
    no_samples = "mp3 is encoded at --mp3-bitrate, without a sample format"
    conflicts: list[Conflict] = [
        (args.int24 and args.mp3, not_with("--int24", "--mp3", no_samples)),
        (args.float32 and args.mp3, not_with("--float32", "--mp3", no_samples)),
        (
            args.two_stems is not None and args.stems is not None,
            not_with("--two-stems", "--stems", "choose STEM + no_STEM or a subset of stems"),
        ),
        (args.mp3_bitrate is not None and not args.mp3, only_with("--mp3-bitrate", "--mp3")),
        (args.mp3_preset is not None and not args.mp3, only_with("--mp3-preset", "--mp3")),
        (args.block_size is not None and not args.stream, only_with("--block-size", "--stream")),
        (
            args.other_method is not None and args.two_stems is None,
            only_with("--other-method", "--two-stems STEM") + " (it says how no_STEM is made)",
        ),
        *_stream_conflicts(args),
        *chunking_conflicts(args),
        (
            args.seed is not None and args.shifts == _D.shifts,
            only_with("--seed", "--shifts N") + " (it seeds the random shifts)",
        ),
    ]
    refuse_conflicts(conflicts)
    fill_defaults(args, DEFAULTS)
