"""Combinations of ``separate`` options: contradictions are refused before any work.

Options that only make sense with another one (``--mp3-bitrate`` with ``--mp3``, ``--block-size``
with ``--stream``, ...) have ``default=None`` in the parser so that an explicit value can be told
apart from the default; :func:`check_separate_options` refuses the contradictions, then fills in
the defaults (:data:`DEFAULTS`).
"""

from __future__ import annotations

import argparse

from demucs_rr.argtypes import (
    Conflict,
    chunking_conflicts,
    fill_defaults,
    not_with,
    only_with,
    refuse_conflicts,
)
from demucs_rr.audio.options import WriteOptions

__all__ = ["DEFAULTS", "check_separate_options"]

_WRITE = WriteOptions()

DEFAULTS = {
    "mp3_bitrate": _WRITE.mp3_bitrate,
    "mp3_preset": _WRITE.mp3_preset,
    "block_size": 1024,
    "other_method": "add",
    "overlap": 0.25,
    "seed": 0,
}
"""Defaults of the ``separate`` options whose parser default is the ``None`` sentinel."""


def _stream_conflicts(args: argparse.Namespace) -> list[Conflict]:
    """Engine options that ``--stream`` (block by block, one pass, no chunks) does not use."""
    why = "--stream runs the causal model block by block, in one pass without chunks"
    ignored = [
        ("--shifts", args.shifts > 0),
        ("--segment", args.segment is not None),
        ("--overlap", args.overlap is not None),
        ("--no-split", args.no_split),
        ("--batch-size", args.batch_size > 1),
        ("--precision", args.precision != "fp32"),
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
            args.seed is not None and args.shifts == 0,
            only_with("--seed", "--shifts N") + " (it seeds the random shifts)",
        ),
    ]
    refuse_conflicts(conflicts)
    fill_defaults(args, DEFAULTS)
