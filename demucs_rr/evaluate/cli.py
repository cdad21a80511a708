"""Command line of ``demucs-rr evaluate`` and ``demucs-rr leaderboard``.

The top-level CLI registers the subcommands with :func:`add_evaluate_arguments` /
:func:`run_evaluate` and :func:`add_leaderboard_arguments` / :func:`run_leaderboard`; errors are
raised as :class:`~demucs_rr.errors.DemucsRRError` and turned into exit codes there. Return
codes: 0 success, 1 some tracks failed (the others were scored).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from demucs_rr import argtypes
from demucs_rr.errors import ConfigError
from demucs_rr.runtime import DEVICE_NAMES

if TYPE_CHECKING:
    from demucs_rr.data.trackset import TrackSet
    from demucs_rr.evaluate.metrics import TrackScores
    from demucs_rr.evaluate.run import EvalOptions

logger = logging.getLogger(__name__)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``demucs-rr evaluate``."""
    from demucs_rr.hub.catalogue import DEFAULT_MODEL
    from demucs_rr.separate.options import add_engine_arguments

    p = parser
    p.add_argument(
        "-n",
        "--name",
        default=DEFAULT_MODEL,
        help=f"model name or file to evaluate (default {DEFAULT_MODEL})",
    )
    p.add_argument("--repo", help="folder searched first for model files")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--musdb", metavar="ROOT", help="MUSDB18 root (train/ and test/)")
    data.add_argument(
        "--folder",
        metavar="ROOT",
        help="generic dataset: ROOT/<track>/<stem>.<ext> (+ optional mixture)",
    )
    p.add_argument("--is-wav", action="store_true", help="MUSDB18-HQ (wav folders)")
    p.add_argument(
        "--subset",
        help="MUSDB18 split test|train|valid (default test); for --folder, a "
        "sub-folder of ROOT (default: ROOT/test/ if present, else all of ROOT)",
    )
    p.add_argument("--tracks", nargs="+", metavar="NAME", help="only these tracks")
    p.add_argument(
        "-o", "--out", help="results folder (default evaluation/<model>/<dataset>-<subset>)"
    )
    p.add_argument("-d", "--device", default="auto", help="|".join(DEVICE_NAMES))
    add_engine_arguments(p)
    p.add_argument(
        "-j",
        "--jobs",
        type=argtypes.positive_int,
        default=1,
        help="worker processes (tracks in parallel) on this rank (default 1)",
    )
    p.add_argument(
        "--sdr-only",
        action="store_true",
        help="score SDR only (milliseconds per track; ISR/SIR/SAR left empty)",
    )
    p.add_argument(
        "--backend",
        choices=("torch", "museval"),
        default="torch",
        help="metrics implementation (default torch; museval is the slow reference)",
    )
    p.add_argument(
        "--solver",
        choices=("levinson", "cholesky", "lu"),
        help="normal-equation solver of the torch backend: levinson (default, "
        "block-Toeplitz, fastest), cholesky, or lu (museval's); same parity",
    )
    p.add_argument("--overwrite", action="store_true", help="re-score tracks already scored")
    p.add_argument("--no-plot", action="store_true", help="no SDR box plot (no matplotlib)")
    p.add_argument(
        "--before",
        metavar="DIR",
        help="also print a before/after table against the results in DIR (e.g. the model "
        "this one was fine-tuned from, evaluated on the same tracks)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _check_options(args: argparse.Namespace) -> None:
    """Refuse contradictory options in one line, then fill in the ``None`` sentinel defaults."""
    museval = args.backend == "museval"
    why = "the museval backend computes every metric its own way"
    argtypes.refuse_conflicts(
        [
            (
                museval and args.solver is not None,
                argtypes.not_with("--solver", "--backend museval", why),
            ),
            (museval and args.sdr_only, argtypes.not_with("--sdr-only", "--backend museval", why)),
            (bool(args.folder) and args.is_wav, argtypes.only_with("--is-wav", "--musdb")),
            *argtypes.chunking_conflicts(args),
            (
                args.seed is not None and args.shifts == 0,
                argtypes.only_with("--seed", "--shifts N") + " (it seeds the random shifts)",
            ),
        ]
    )
    argtypes.fill_defaults(args, {"solver": "levinson"})


def _trackset(args: argparse.Namespace) -> TrackSet:
    from demucs_rr.data.trackset import open_tracks

    if args.musdb:
        kind, root = ("musdb-hq" if args.is_wav else "musdb"), args.musdb
    elif args.is_wav:
        raise ConfigError("--is-wav applies to --musdb only")
    else:
        kind, root = "folder", args.folder
    return open_tracks(kind, root, args.subset, args.tracks)


def _options(args: argparse.Namespace, out: Path, device: str) -> EvalOptions:
    from demucs_rr.evaluate.run import EvalOptions
    from demucs_rr.separate.options import engine_options

    return EvalOptions(
        model=args.name,
        out=out,
        repo=Path(args.repo) if args.repo else None,
        device=device,
        sdr_only=args.sdr_only,
        backend=args.backend,
        solver=args.solver,
        jobs=args.jobs,
        overwrite=args.overwrite,
        engine=engine_options(args),
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``demucs-rr evaluate``; returns 0, or 1 when some tracks failed.

    Under ``torchrun`` every rank scores its share of the tracks; rank 0 reports for all and
    every rank returns the same code.
    """
    from demucs_rr.distributed import Group, process_group
    from demucs_rr.evaluate.leaderboard import require_matplotlib
    from demucs_rr.evaluate.results import default_out, model_label
    from demucs_rr.evaluate.run import run_evaluation

    _check_options(args)
    if args.before and not Path(args.before).is_dir():
        raise ConfigError(f"--before {args.before}: no such results folder")
    if not args.no_plot:
        require_matplotlib()
    group = Group.from_env(args.device)
    device = group.device
    trackset = _trackset(args)
    label = model_label(args.name)
    out = Path(args.out) if args.out else default_out(label, trackset)
    with process_group(group):
        result = run_evaluation(
            trackset,
            _options(args, out, str(device)),
            group=group,
            progress=not args.quiet and sys.stderr.isatty() and group.is_main,
            notify=_stderr if group.is_main else None,
        )
        for name, error in result.failed.items() if group.is_main else ():
            _stderr(f"failed: {name}: {error}")
        if not result.count:  # known on every rank
            raise ConfigError(f"no track could be scored; results folder {out}")
        if group.is_main:
            _report(result.scores, out, f"{label} on {trackset.label}", not args.no_plot)
            if args.before:
                from demucs_rr.evaluate.before_after import before_after_table

                print(before_after_table(args.before, out), end="")
        group.barrier()  # no rank exits (torchrun stops the others) before rank 0 has reported
    return 1 if result.failed else 0


def _report(scores: list[TrackScores], out: Path, title: str, plot: bool) -> None:
    """Write the summary files and print the table and where the results are."""
    from demucs_rr.evaluate.leaderboard import markdown, summary_table, write_summary

    paths = write_summary(scores, out, title, plot=plot)
    print(markdown(*summary_table(scores)), end="")
    print(
        f"results: {out} ({len(scores)} tracks; summary: {paths['markdown'].name}, "
        f"{paths['csv'].name}" + (f", {paths['plot'].name})" if "plot" in paths else ")")
    )


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``demucs-rr leaderboard``."""
    p = parser
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="result folders of `evaluate`, or folders holding them (evaluation/)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="leave out the published reference rows"
    )
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")


def run_leaderboard(args: argparse.Namespace) -> int:
    """Run ``demucs-rr leaderboard``: print the merged table, ranked within each dataset."""
    from demucs_rr.evaluate.leaderboard import (
        REFERENCE_SOURCE,
        entry_from,
        label_entries,
        leaderboard,
        load_results,
        markdown,
        reference_entries,
        to_csv,
    )

    groups, seen = [], set()
    for folder in args.dirs:
        for group in load_results(folder):
            key = (group.folder.resolve(), group.dataset)
            if key not in seen:
                seen.add(key)
                groups.append(group)
    entries = label_entries([entry_from(g) for g in groups])
    if not args.no_reference:
        entries += reference_entries()
    header, rows = leaderboard(entries)
    table = markdown(header, rows)
    note = "" if args.no_reference else f"\n[published]: {REFERENCE_SOURCE}.\n"
    print(table + note, end="")
    if args.markdown:
        Path(args.markdown).write_text(table + note)
    if args.csv:
        Path(args.csv).write_text(to_csv(header, rows))
    return 0
