"""Command line: ``demucs-rr separate|models ...`` and the ``separate`` shortcut.

Only this module turns errors into exit codes: 0 success, 1 a batch where some tracks failed
(the others were written), 2 bad usage or nothing could be done. Messages are one line.
:func:`main` changes no process-wide setting; the entry points (:mod:`demucs_rr.__main__`, the
console scripts) apply ``--threads``, the allocator, signals and logging first
(:func:`demucs_rr.process.configure_process`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from demucs_rr import __version__, argtypes
from demucs_rr.errors import DemucsRRError
from demucs_rr.process import Terminated

# Commands that run models: malloc keeps freed memory for them (see demucs_rr.process).
MODEL_COMMANDS = frozenset({"separate", "evaluate", "serve", "train"})
TEMP_FOLDER = ".tmp"
"""Folder of ``serve``'s temporary files inside its jobs folder (emptied at start)."""

EXTRA_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    # name: (module, add-arguments function, run function, help)
    "train": (
        "demucs_rr.train.cli",
        "add_train_arguments",
        "run_train",
        "train a model (YAML config + key=value overrides)",
    ),
    "export": (
        "demucs_rr.train.cli",
        "add_export_arguments",
        "run_export",
        "write a release package from a training run",
    ),
    "evaluate": (
        "demucs_rr.evaluate.cli",
        "add_evaluate_arguments",
        "run_evaluate",
        "score a model on MUSDB18 or a folder of stems (SDR, nSDR)",
    ),
    "leaderboard": (
        "demucs_rr.evaluate.cli",
        "add_leaderboard_arguments",
        "run_leaderboard",
        "merge evaluation folders into one ranked table",
    ),
    "serve": (
        "demucs_rr.serve.cli",
        "add_serve_arguments",
        "run_serve",
        "web page and HTTP API for separation jobs (needs the [serve] extra)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (exit code 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


MODEL_CONFIG_HELP = "MSST config (YAML) of an MSST .ckpt model (default: NAME.yaml beside it)"


def _stem_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of stem names")
    return names


def add_separate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``separate`` (shared by ``demucs-rr separate`` and the ``separate`` script)."""
    from demucs_rr.audio.options import MP3_BITRATES, WriteOptions
    from demucs_rr.hub.catalogue import DEFAULT_MODEL
    from demucs_rr.separate.defaults import DEFAULT_TEMPLATE, OTHER_METHODS
    from demucs_rr.separate.options import add_engine_arguments

    d = WriteOptions()
    p = parser
    p.add_argument("tracks", nargs="+", help="audio files or directories to separate")
    p.add_argument(
        "-n",
        "--name",
        default=DEFAULT_MODEL,
        help="pretrained model name (see `demucs-rr models list`) or a model file "
        f"(.safetensors package, official .th, MSST .ckpt); default {DEFAULT_MODEL}",
    )
    p.add_argument("--repo", help="folder searched first for model files")
    p.add_argument("--model-config", help=MODEL_CONFIG_HELP)
    p.add_argument("-o", "--out", default="separated", help="output root folder")
    p.add_argument(
        "--filename",
        default=DEFAULT_TEMPLATE,
        help="output path template below --out; fields {model} {track} {trackext} "
        f"{{stem}} {{ext}}; default {DEFAULT_TEMPLATE!r}".replace("{{", "{").replace("}}", "}"),
    )
    existing = p.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite", action="store_true", help="replace stem files that already exist"
    )
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a track whose every stem file already exists (resume a killed batch)",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="search directories recursively")
    p.add_argument("-d", "--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    add_engine_arguments(p)
    p.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM only")
    p.add_argument(
        "--other-method",
        choices=OTHER_METHODS,
        help="how no_STEM is made: sum of the other stems (add), mixture minus "
        "STEM (minus), or not written (none); default add",
    )
    p.add_argument("--stems", type=_stem_list, help="comma-separated subset of stems to write")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--int24", action="store_true", help="write 24-bit integer wav/flac")
    enc.add_argument("--float32", action="store_true", help="write 32-bit float wav")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--flac", action="store_true", help="write flac instead of wav")
    fmt.add_argument("--mp3", action="store_true", help="write mp3 instead of wav")
    p.add_argument(
        "--mp3-bitrate",
        type=int,
        choices=MP3_BITRATES,
        metavar="KBPS",
        help=f"mp3 constant bit rate in kbps: {', '.join(map(str, MP3_BITRATES))} (default "
        f"{d.mp3_bitrate}); the stems keep their sample rate at every bit rate",
    )
    p.add_argument(
        "--mp3-preset",
        type=int,
        choices=range(2, 8),
        metavar="{2..7}",
        help="lame quality: 2 best .. 7 fastest (default 2)",
    )
    p.add_argument(
        "--clip-mode",
        choices=("rescale", "clamp", "none"),
        default=d.clip_mode,
        help="avoid clipping by rescaling each stem, clamping, or not (default rescale)",
    )
    p.add_argument(
        "--keep-sample-rate",
        action="store_true",
        help="write stems at the input's sample rate instead of the model's",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="separate block by block with a causal model (Conv-TasNet causal=True) "
        "and report its latency and real-time factor",
    )
    p.add_argument(
        "--block-size",
        type=argtypes.positive_int,
        help="samples per block with --stream (default 1024)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )


def add_threads_argument(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``--threads N``: CPU threads torch may use (accepted before or after the subcommand)."""
    parser.add_argument(
        "--threads",
        type=argtypes.positive_int,
        metavar="N",
        default=None if top_level else argparse.SUPPRESS,
        help="CPU threads for torch (default: torch's, one per core); on a "
        "shared machine set it to the cores you may use",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``demucs-rr`` parser with its subcommands."""
    parser = _Parser(prog="demucs-rr", description="Music source separation.")
    parser.add_argument("--version", action="version", version=f"demucs-rr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_threads_argument(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sep = sub.add_parser("separate", help="split songs into stems")
    add_separate_arguments(sep)
    models = sub.add_parser("models", help="list pretrained and local models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    lst = models_sub.add_parser("list", help="list known model names")
    for p in (models, lst):
        p.add_argument("--repo", help="also list model files in this folder")
    conv = models_sub.add_parser(
        "convert",
        help="write any model (official .th / hub .safetensors, bag .yaml, pretrained name) "
        "as a demucs_rr .safetensors package",
    )
    conv.add_argument("src", help="model file, bag .yaml (members beside it) or pretrained name")
    conv.add_argument("dst", help="destination .safetensors package")
    conv.add_argument("--repo", help="folder searched first for SRC and for bag members")
    conv.add_argument("--name", help="model name stored in the package (default: SRC's name)")
    conv.add_argument("--model-config", help=MODEL_CONFIG_HELP)
    sub.add_parser("doctor", help="versions, devices, tools and cached models, for bug reports")
    for name, (module, add, _, help_text) in EXTRA_COMMANDS.items():
        getattr(importlib.import_module(module), add)(sub.add_parser(name, help=help_text))
    for sub_parser in (*sub.choices.values(), lst, conv):
        add_threads_argument(sub_parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "separate":
        from demucs_rr.separate.run import run_separate

        return run_separate(args)
    if args.command == "doctor":
        from demucs_rr.doctor import run_doctor

        return run_doctor(args)
    if args.command in EXTRA_COMMANDS:
        module, _, run, _ = EXTRA_COMMANDS[args.command]
        return int(getattr(importlib.import_module(module), run)(args))
    from demucs_rr.separate.run import run_models_convert, run_models_list

    if getattr(args, "models_command", None) == "convert":
        return run_models_convert(args)
    return run_models_list(args)


def run(args: argparse.Namespace) -> int:
    """Run parsed arguments; returns the exit code (errors are one line on stderr).

    Ctrl-C (exit 130) and, where the entry point turned SIGTERM into
    :class:`~demucs_rr.process.Terminated`, SIGTERM (exit 143) unwind like an error: half-written
    stems and other staged files are removed, and the message is one line.
    """
    try:
        return _run(args)
    except DemucsRRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"error: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # `demucs-rr models list | head`: the reader went away
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports it


def main(argv: Sequence[str] | None = None) -> int:
    """``demucs-rr ARGS`` in this process, leaving process-wide settings alone (``--threads``
    is applied by the entry points); returns the exit code."""
    return run(build_parser().parse_args(argv))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit-time flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests, IDEs)
        pass


def separate_argv(argv: Sequence[str] | None = None) -> list[str]:
    """``demucs-rr`` arguments of a ``separate ARGS`` call (default: this process's)."""
    return ["separate", *(sys.argv[1:] if argv is None else argv)]
