"""Command line of ``demucs-rr evaluate`` and ``demucs-rr leaderboard``.

The top-level CLI registers the subcommands with :func:`add_evaluate_arguments` /
:func:`run_evaluate` and :func:`add_leaderboard_arguments` / :func:`run_leaderboard`; errors are
raised as :class:`~demucs_rr.errors.DemucsRRError` and turned into exit codes there. Return
codes: 0 success, 1 some tracks failed (the others were scored).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from demucs_rr import argtypes
from demucs_rr.errors import ConfigError
from demucs_rr.runtime import DEVICE_NAMES

if TYPE_CHECKING:
    from demucs_rr.data.trackset import TrackSet
    from demucs_rr.evaluate.groups import ResultGroup
    from demucs_rr.evaluate.metrics import TrackScores
    from demucs_rr.evaluate.options import EvalOptions

logger = logging.getLogger(__name__)

_AGGREGATIONS = ("median", "mean")
_CONVENTIONS = ("mdx", "msst")


def _stems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of stem names")
    return names


def _add_definitions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracks-agg",
        choices=_AGGREGATIONS,
        default="median",
        help="museval scores over tracks: median (default; SiSEC, what papers report) or mean",
    )
    p.add_argument(
        "--global-sdr",
        choices=_CONVENTIONS,
        default="mdx",
        help="epsilon of the global SDR shown: mdx (1e-7: MDX'21, SDX'23, Demucs; default) or "
        "msst (1e-8); results keep both",
    )


def _add_estimate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--estimates",
        metavar="DIR",
        help="score the stems another tool wrote, DIR/<track>/<stem>.<ext> (any format and "
        "rate), instead of separating",
    )
    p.add_argument("--stems", type=_stems, help="with --estimates: stems to score, comma-separated")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``demucs-rr evaluate``."""
    from demucs_rr.hub.catalogue import DEFAULT_MODEL
    from demucs_rr.separate.options import add_engine_arguments

    p = parser
    p.add_argument(
        "-n",
        "--name",
        help=f"model name or file to evaluate (default {DEFAULT_MODEL}); with --estimates, the "
        "name of the results (default: the estimates folder's name; a released model's name "
        "also marks its training data)",
    )
    p.add_argument("--repo", help="folder searched first for model files")
    _add_estimate_arguments(p)
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
        help="worker processes (tracks in parallel) on this rank (default 1 with a model, "
        "one per CPU core with --estimates)",
    )
    p.add_argument(
        "--sdr-only",
        action="store_true",
        help="museval SDR and global SDR only (milliseconds per track; ISR/SIR/SAR left empty)",
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
        help="normal-equation solver of the torch backend: levinson (default; block-Toeplitz "
        "recursion, about 1 CPU-s less per track than the others), cholesky, or lu "
        "(museval's); same parity with museval",
    )
    _add_definitions(p)
    p.add_argument("--overwrite", action="store_true", help="re-score tracks already scored")
    p.add_argument("--no-plot", action="store_true", help="no box plots (no matplotlib)")
    p.add_argument(
        "--before",
        metavar="DIR",
        help="also print a before/after table against the results in DIR (e.g. the model "
        "this one was fine-tuned from, evaluated on the same tracks)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _engine_given(args: argparse.Namespace) -> list[str]:
    """Engine options given on the command line (none apply to estimate files)."""
    from demucs_rr.separate.options import ApplyOptions

    default = ApplyOptions()
    given = {
        "--shifts": args.shifts != default.shifts,
        "--seed": args.seed is not None,
        "--segment": args.segment is not None,
        "--overlap": args.overlap is not None,
        "--no-split": args.no_split,
        "--batch-size": args.batch_size != default.batch_size,
        "--precision": args.precision != default.precision,
        "--repo": args.repo is not None,
    }
    return [name for name, yes in given.items() if yes]


def _check_options(args: argparse.Namespace) -> None:
    """Refuse contradictory options in one line, then fill in the ``None`` sentinel defaults."""
    from demucs_rr.hub.catalogue import DEFAULT_MODEL

    museval = args.backend == "museval"
    why = "the museval backend computes every metric its own way"
    files = "--estimates scores existing files: nothing is separated"
    engine = _engine_given(args) if args.estimates else []
    argtypes.refuse_conflicts(
        [
            (
                museval and args.solver is not None,
                argtypes.not_with("--solver", "--backend museval", why),
            ),
            (museval and args.sdr_only, argtypes.not_with("--sdr-only", "--backend museval", why)),
            (bool(args.folder) and args.is_wav, argtypes.only_with("--is-wav", "--musdb")),
            (
                args.stems is not None and not args.estimates,
                argtypes.only_with("--stems", "--estimates"),
            ),
            (bool(engine), argtypes.not_with(engine[0] if engine else "", "--estimates", files)),
            *argtypes.chunking_conflicts(args),
            (
                args.seed is not None and args.shifts == 0,
                argtypes.only_with("--seed", "--shifts N") + " (it seeds the random shifts)",
            ),
        ]
    )
    argtypes.fill_defaults(args, {"solver": "levinson"})
    if args.name is None and not args.estimates:
        args.name = DEFAULT_MODEL


def _trackset(args: argparse.Namespace) -> TrackSet:
    from demucs_rr.data.trackset import open_tracks

    if args.musdb:
        kind, root = ("musdb-hq" if args.is_wav else "musdb"), args.musdb
    else:
        kind, root = "folder", args.folder
    return open_tracks(kind, root, args.subset, args.tracks)


def _options(args: argparse.Namespace, out: Path, device: str) -> EvalOptions:
    from demucs_rr.evaluate.options import EvalOptions
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
        estimates=Path(args.estimates) if args.estimates else None,
        stems=args.stems,
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``demucs-rr evaluate``; returns 0, or 1 when some tracks failed.

    Under ``torchrun`` every rank scores its share of the tracks; rank 0 reports for all and
    every rank returns the same code.
    """
    from demucs_rr.distributed import Group, process_group
    from demucs_rr.evaluate.results import default_out
    from demucs_rr.evaluate.run import run_evaluation
    from demucs_rr.evaluate.summary import require_matplotlib

    _check_options(args)
    if args.before and not Path(args.before).is_dir():
        raise ConfigError(f"--before {args.before}: no such results folder")
    if not args.no_plot:
        require_matplotlib()
    group = Group.from_env(args.device)
    trackset = _trackset(args)
    out = Path(args.out) if args.out else None
    options = _options(args, out or Path("."), str(group.device))
    label = options.label
    options.out = out or default_out(label, trackset)
    with process_group(group):
        result = run_evaluation(
            trackset,
            options,
            group=group,
            progress=not args.quiet and sys.stderr.isatty() and group.is_main,
            notify=_stderr if group.is_main else None,
        )
        for name, error in sorted(result.failed.items()) if group.is_main else ():
            _stderr(f"failed: {name}: {error}")
        if not result.count:  # known on every rank
            raise ConfigError(f"no track could be scored; results folder {options.out}")
        if group.is_main:
            _report(result.scores, options.out, f"{label} on {trackset.label}", args)
            if args.before:
                from demucs_rr.evaluate.before_after import before_after_table

                print(before_after_table(args.before, options.out), end="")
        group.barrier()  # no rank exits (torchrun stops the others) before rank 0 has reported
    return 1 if result.failed else 0


def _report(scores: list[TrackScores], out: Path, title: str, args: argparse.Namespace) -> None:
    """Write the summary files and print the table and where the results are."""
    from demucs_rr.evaluate.conventions import legend
    from demucs_rr.evaluate.summary import summary_table, write_summary
    from demucs_rr.evaluate.tables import markdown

    agg, conv = args.tracks_agg, args.global_sdr
    paths = write_summary(scores, out, title, not args.no_plot, agg, conv)
    print(markdown(*summary_table(scores, agg, conv)) + f"\n{legend(agg, conv)}\n")
    print(
        f"results: {out} ({len(scores)} tracks; summary: {paths['markdown'].name}, "
        f"{paths['csv'].name}, {paths['json'].name}"
        + (f", {paths['plot'].name})" if "plot" in paths else ")")
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
        "--compare",
        action="store_true",
        help="`--compare A B`: compare two result folders track by track (differences and a "
        "Wilcoxon signed-rank test) instead of ranking",
    )
    _add_definitions(p)
    p.add_argument(
        "--sort", choices=("museval", "global"), default="museval", help="rank by (default museval)"
    )
    p.add_argument(
        "--rank-contaminated",
        action="store_true",
        help="also rank models trained with evaluated tracks (still marked)",
    )
    p.add_argument(
        "--rank-incomplete",
        action="store_true",
        help="also rank rows scored on fewer tracks than their dataset has (still marked)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="leave out the published reference rows"
    )
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG: per stem, one box per model")


def _groups(dirs: list[str]) -> list[ResultGroup]:
    from demucs_rr.evaluate.groups import load_results

    groups: list[ResultGroup] = []
    seen = set()
    for folder in dirs:
        for group in load_results(folder):
            key = (group.folder.resolve(), group.dataset)
            if key not in seen:
                seen.add(key)
                groups.append(group)
    return groups


def run_leaderboard(args: argparse.Namespace) -> int:
    """Run ``demucs-rr leaderboard``: print the merged table, ranked within each dataset, or
    with ``--compare`` the paired comparison of two result folders."""
    if args.compare:
        if len(args.dirs) != 2:
            raise ConfigError(f"--compare takes two result folders, got {len(args.dirs)}")
        return _run_compare(args)
    from demucs_rr.evaluate.conventions import legend
    from demucs_rr.evaluate.leaderboard import (
        REFERENCE_SOURCE,
        entries_json,
        entry_from,
        label_entries,
        leaderboard,
        plot_stems,
        reference_entries,
    )
    from demucs_rr.evaluate.tables import markdown, to_csv

    agg, conv = args.tracks_agg, args.global_sdr
    groups = _groups(args.dirs)
    entries = label_entries([entry_from(g, agg, conv) for g in groups])
    names = [e.name for e in entries]
    if not args.no_reference:
        entries += reference_entries()
    header, rows, notes = leaderboard(
        entries,
        agg,
        conv,
        sort=args.sort,
        rank_contaminated=args.rank_contaminated,
        rank_incomplete=args.rank_incomplete,
    )
    lines = [*notes, legend(agg, conv)]
    if not args.no_reference:
        lines.append(f"[published]: {REFERENCE_SOURCE}.")
    text = markdown(header, rows) + "\n" + "\n\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.csv:
        Path(args.csv).write_text(to_csv(header, rows))
    if args.json:
        data = {"definitions": legend(agg, conv), "notes": notes, "rows": entries_json(entries)}
        Path(args.json).write_text(json.dumps(data, indent=2, allow_nan=True))
    if args.plot:
        plot_stems(groups, names, Path(args.plot), "per-track SDR by stem")
    return 0


def _one_group(folder: str) -> ResultGroup:
    groups = _groups([folder])
    if len(groups) != 1:
        raise ConfigError(f"{folder} holds {len(groups)} result groups; name one result folder")
    return groups[0]


def _run_compare(args: argparse.Namespace) -> int:
    from demucs_rr.evaluate.compare import compare, comparison_tables
    from demucs_rr.evaluate.conventions import legend
    from demucs_rr.evaluate.tables import markdown, to_csv

    a, b = (_one_group(f) for f in args.dirs)
    cmp = compare(a, b, args.global_sdr)
    tables = comparison_tables(cmp)
    title = f"{cmp.a} (A) vs {cmp.b} (B) on {cmp.dataset}: {len(cmp.tracks)} tracks in common"
    text = (
        f"{title}\n\n"
        + markdown(*tables["summary"])
        + "\n"
        + markdown(*tables["tracks"])
        + "\n"
        + "\n".join([*cmp.notes, legend(args.tracks_agg, args.global_sdr)])
        + "\n"
    )
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.csv:
        Path(args.csv).write_text(to_csv(*tables["summary"]))
    if args.json:
        data = {
            "a": cmp.a,
            "b": cmp.b,
            "dataset": cmp.dataset,
            "tracks": cmp.tracks,
            "scores": cmp.scores,
            "notes": cmp.notes,
        }
        Path(args.json).write_text(json.dumps(data, indent=2, allow_nan=True))
    return 0
