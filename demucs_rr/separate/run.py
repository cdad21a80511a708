"""The ``separate`` and ``models list`` commands: argument handling around the engine."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from demucs_rr.audio import WriteOptions, load_for_model, resample
from demucs_rr.distributed import Group, process_group, torchrun_ranks
from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.separate.api import Separator
from demucs_rr.separate.model_labels import check_label, model_identity, record_label
from demucs_rr.separate.options import check_separate_options, engine_options
from demucs_rr.separate.outputs import (
    InputFile,
    check_template,
    collect_tracks,
    compose_stems,
    output_path,
    select_stems,
    write_track,
)

logger = logging.getLogger(__name__)


def _write_options(args: argparse.Namespace) -> WriteOptions:
    fmt = "mp3" if args.mp3 else "flac" if args.flac else "wav"
    encoding = "int24" if args.int24 else "float32" if args.float32 else "int16"
    if fmt == "flac" and encoding == "float32":
        raise DemucsRRError("flac cannot store float32 samples: use --int24 or wav --float32")
    return WriteOptions(
        format=fmt,
        encoding=encoding,
        clip_mode=args.clip_mode,
        mp3_bitrate=args.mp3_bitrate,
        mp3_preset=args.mp3_preset,
    )


def _check_out_dir(out: Path) -> None:
    """Fail early when the output root cannot be created or written, without creating it: the
    folders of a track appear with its stems (a run that writes nothing leaves nothing)."""
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        probe = existing / f".demucs_rr_write_test_{os.getpid()}_{time.monotonic_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise DemucsRRError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


def _separate_track(
    sep: Separator,
    track: InputFile,
    args: argparse.Namespace,
    paths: dict[str, Path],
    wopts: WriteOptions,
) -> list[Path]:
    """Separate one track and write its stems (stem name -> file); returns the written paths.

    The default path streams the file block by block into the stem files
    (:meth:`Separator.separate_file_to`); ``--stream`` runs a causal model with low latency.
    """
    names = list(paths)
    if not args.stream:
        return sep.separate_file_to(
            track.path, paths, wopts, args.other_method, args.keep_sample_rate
        )
    mix, input_sr = load_for_model(track.path, sep.samplerate, sep.audio_channels)
    outputs = compose_stems(_stream(sep, mix, args.block_size), mix, names, args.other_method)
    rate = sep.samplerate
    if args.keep_sample_rate and input_sr != rate:
        outputs = {k: resample(v, rate, input_sr) for k, v in outputs.items()}
        rate = input_sr
    write_track({paths[name]: wav for name, wav in outputs.items()}, rate, wopts)
    return list(paths.values())


def _stream(sep: Separator, mix: torch.Tensor, block_size: int) -> dict[str, torch.Tensor]:
    """Separate (C, T) block by block with a causal model; reports latency on stderr."""
    from demucs_rr.separate.causal import stream_separate

    out, report = stream_separate(sep.model, mix, block_size)
    block_ms = 1000 * block_size / sep.samplerate
    print(
        f"streaming: algorithmic latency {report.latency_samples} samples "
        f"({report.latency_ms:.2f} ms) + {block_size}-sample blocks ({block_ms:.1f} ms); "
        f"real-time factor {report.rtf:.2f}",
        file=sys.stderr,
    )
    return {name: out[i] for i, name in enumerate(sep.sources)}


def _check_distinct_outputs(
    tracks: list[InputFile],
    template: str,
    names: list[str],
    wopts: WriteOptions,
    out: Path,
    model: str,
) -> None:
    """Refuse, before anything is separated, a batch in which two inputs (e.g. ``a/song.ogg``
    and ``b/song.ogg``) would write the same stem file, or a template that leaves ``--out``."""
    owner: dict[Path, InputFile] = {}
    for track in tracks:
        for name in names:
            path = output_path(out, template, track, name, wopts.format, model)
            first = owner.setdefault(path, track)
            if first is not track:
                raise ConfigError(
                    f"{first.path} and {track.path} would both write {path}; separate them in "
                    "two runs with different --out, or use -r on a common parent folder so "
                    "{track} keeps their sub-folders"
                )


@dataclass
class _Tally:
    """What one rank did with its tracks."""

    done: int = 0
    skipped: int = 0
    failed: int = 0


def run_separate(args: argparse.Namespace) -> int:
    """Separate every input; per-track errors are reported and the batch goes on.

    Under ``torchrun`` every rank collects the same inputs, sorts them and separates every
    ``world_size``-th one (:mod:`demucs_rr.distributed`); rank 0 prints the summary of all.
    Every rank returns the same exit code.
    """
    check_separate_options(args)  # contradictions first: before anything is read or loaded
    check_template(args.filename)
    wopts = _write_options(args)
    rank = torchrun_ranks()[0]
    tracks, errors = collect_tracks(args.tracks, args.recursive)
    if not tracks:
        for line in errors if rank == 0 else []:
            print(f"error: {line}", file=sys.stderr)
        return 2
    out = Path(args.out)
    _check_out_dir(out)
    with process_group(Group.from_env(args.device)) as group:
        tally = _separate_all(args, tracks, wopts, out, group)
        return _finish(group, tally, errors)


def _separate_all(
    args: argparse.Namespace,
    tracks: list[InputFile],
    wopts: WriteOptions,
    out: Path,
    group: Group,
) -> _Tally:
    """Load the model, check the whole batch, then separate this rank's share of ``tracks``."""
    sep = Separator(
        args.name,
        device=str(group.device),
        options=engine_options(args),
        repo=args.repo,
        model_config=args.model_config,
        progress=not args.quiet and not group.distributed,  # one bar per terminal
    )
    names = select_stems(sep.sources, args.stems, args.two_stems, args.other_method)
    _check_distinct_outputs(tracks, args.filename, names, wopts, out, sep.model_name)
    identity = model_identity(args.name, args.repo)
    check_label(out, args.filename, sep.model_name, identity)
    if group.distributed:
        tracks = group.shard(sorted(tracks, key=lambda t: (t.name, t.path.as_posix())))
    prefix = f"[rank {group.rank}] " if group.distributed else ""
    tally = _Tally()
    for track in tracks:
        start = time.perf_counter()
        paths = {
            name: output_path(out, args.filename, track, name, wopts.format, sep.model_name)
            for name in names
        }
        try:
            if _keep_existing(paths, args):
                tally.skipped += 1
                if not args.quiet:
                    print(f"{prefix}{track.path}: skipped, its stems exist", file=sys.stderr)
                continue
            written = _separate_track(sep, track, args, paths, wopts)
        except DemucsRRError as exc:
            tally.failed += 1
            text = str(exc)  # audio errors already name the file
            where = "" if str(track.path) in text else f"{track.path}: "
            print(f"error: {where}{text}", file=sys.stderr)
            continue
        if not tally.done:
            record_label(out, args.filename, sep.model_name, identity)
        tally.done += 1
        if not args.quiet:
            took = time.perf_counter() - start
            print(f"{prefix}{track.path} -> {written[0].parent} ({took:.1f} s)", file=sys.stderr)
    return tally


def _keep_existing(paths: dict[str, Path], args: argparse.Namespace) -> bool:
    """Whether to skip a track because its stems exist (``--skip-existing`` and every stem
    file is there); a track with only some of them is separated again.

    Raises:
        ConfigError: a stem file exists and neither ``--overwrite`` nor ``--skip-existing``
            was given.
    """
    if args.overwrite:
        return False
    existing = [p for p in paths.values() if os.path.lexists(p)]
    if not existing:
        return False
    if args.skip_existing:
        return len(existing) == len(paths)
    raise ConfigError(
        f"{existing[0]} exists; pass --overwrite to replace or --skip-existing to keep"
    )


def _finish(group: Group, tally: _Tally, errors: list[str]) -> int:
    """Add up every rank's tally (waiting for every rank to finish), report on rank 0 and
    return the exit code of the whole batch on every rank: 0, 1 some inputs failed, 2 all
    failed."""
    tallies = group.gather(tally)
    done = sum(t.done for t in tallies)
    skipped = sum(t.skipped for t in tallies)
    failed = sum(t.failed for t in tallies) + len(errors)  # the same errors on every rank
    total = done + skipped + failed
    if group.is_main:
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        if total > 1 or skipped or group.distributed:  # one input: its own line says it all
            ranks = f" on {group.world_size} ranks" if group.distributed else ""
            print(
                f"{done} separated, {skipped} skipped, {failed} of {total} inputs failed{ranks}",
                file=sys.stderr,
            )
    group.barrier()  # no rank exits (torchrun stops the others) before rank 0 has reported
    if not failed:
        return 0
    return 1 if failed < total else 2


def run_models_list(args: argparse.Namespace) -> int:
    """Print the known pretrained models and local model files.

    Two score columns keep the numbers apart: ``test SDR`` is the published MUSDB18 test SDR of
    a pretrained model; ``valid nSDR`` is the validation nSDR that ``demucs-rr export`` recorded
    in a package trained here (on that run's validation tracks, not the MUSDB18 test set).
    """
    from demucs_rr.hub.loader import list_models

    rows = list_models(repo=Path(args.repo) if getattr(args, "repo", None) else None)
    width = max([18, *(len(row["name"]) for row in rows)])
    print(
        f"{'name':<{width}} {'class':<16} {'test SDR':>8} {'valid nSDR':>10}  {'cached':<12} "
        "description"
    )
    for row in rows:
        sdr = _score(row["sdr"])
        nsdr = _score(row["valid_nsdr"])
        cached = row["cache_state"]  # yes, no, bad checksum, unreadable
        print(
            f"{row['name']:<{width}} {row['class'] or '?':<16} {sdr:>8} {nsdr:>10}  "
            f"{cached:<12} {row['description']}"
        )
    return 0


def run_models_convert(args: argparse.Namespace) -> int:
    """Convert ``args.src`` into the package ``args.dst`` and say what was written."""
    from demucs_rr.hub.convert import convert_model

    done = convert_model(
        args.src,
        args.dst,
        repo=Path(args.repo) if args.repo else None,
        name=args.name,
        config=args.model_config,
    )
    kind = "model" if done.members == 1 else f"bag of {done.members} models"
    precision = "float16 (exact)" if done.half else "float32"
    print(f"wrote {done.path} ({kind}, {precision} weights); use it with -n {done.path}")
    return 0


def _score(value: float | None) -> str:
    """A dB score with 2 decimals, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.2f}"
