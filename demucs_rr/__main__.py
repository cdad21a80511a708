"""Entry points: ``python -m demucs_rr``, the ``demucs-rr`` and ``separate`` console scripts.

They own the process: they parse the arguments, set the process-wide state
(:func:`demucs_rr.process.configure_process`: threads, allocator, SIGTERM, logging) and run the
command (:func:`demucs_rr.cli.run`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from demucs_rr.cli import MODEL_COMMANDS, TEMP_FOLDER, build_parser, run, separate_argv
from demucs_rr.process import configure_process


def main(argv: Sequence[str] | None = None) -> int:
    """``demucs-rr ARGS``; returns the exit code."""
    args = build_parser().parse_args(argv)
    serving = args.command == "serve"
    configure_process(
        threads=args.threads,
        keep_freed_memory=args.command in MODEL_COMMANDS,
        signals=True,
        temp_dir=args.jobs_dir / TEMP_FOLDER if serving else None,
        verbose=args.verbose,
    )
    return run(args)


def separate(argv: Sequence[str] | None = None) -> int:
    """``separate ARGS`` (same as ``demucs-rr separate ARGS``); returns the exit code."""
    return main(separate_argv(argv))


if __name__ == "__main__":
    sys.exit(main())
