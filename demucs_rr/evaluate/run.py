"""Evaluate a model on a dataset: separate each track with the one engine, score it, write
museval-format JSON per track and, on rank 0, gather every result of the folder for the summary.

Tracks come from the data layer (:func:`demucs_rr.data.open_tracks`); results are laid out and
checked for reuse by :mod:`demucs_rr.evaluate.results` (a folder never mixes datasets or
settings).

Parallelism: ``jobs`` worker processes per rank (each with its own :class:`Separator`), and
``torchrun`` ranks (one machine or several sharing ``out``; :mod:`demucs_rr.distributed`) that
each take every ``world_size``-th track; after every rank has finished (a collective, no marker
files), rank 0 merges the track JSONs of the folder.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from demucs_rr.audio import convert_audio
from demucs_rr.data.tracks import Track, load_track
from demucs_rr.data.trackset import TrackSet
from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.evaluate.metrics import TrackScores, read_track_json, score_track, write_track_json
from demucs_rr.evaluate.results import (
    RunRecord,
    check_reuse,
    model_label,
    model_signature,
    result_files,
    result_path,
)
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.options import ApplyOptions

if TYPE_CHECKING:
    from demucs_rr.distributed import Group
    from demucs_rr.separate.api import Separator

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """How to separate and score.

    Attributes:
        model: pretrained name, package/model file, or a built model.
        out: results folder (``<out>/<subset>/<track>.json`` + summary files).
        repo: folder searched first for model files.
        device: separation device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).
        engine: how the engine applies the model (chunks, overlap, shifts, precision).
        sdr_only: score SDR only (milliseconds per track) instead of SDR/ISR/SIR/SAR.
        backend: ``torch`` or ``museval`` (reference implementation, slow).
        solver: normal-equation solver of the torch backend (levinson, cholesky, lu).
        jobs: worker processes on this rank.
        overwrite: re-score tracks whose JSON already exists.
    """

    model: str | Path | SeparationModel
    out: Path
    repo: Path | None = None
    device: str = "auto"
    engine: ApplyOptions = field(default_factory=ApplyOptions)
    sdr_only: bool = False
    backend: str = "torch"
    solver: str = "levinson"
    jobs: int = 1
    overwrite: bool = False


def training_tracks(model: str | Path | SeparationModel, repo: Path | None = None) -> set[str]:
    """Track names the model's package records as its training split (empty when unknown)."""
    from demucs_rr.hub.package import read_package_metadata

    if not isinstance(model, (str, Path)):
        return set()
    candidates = [Path(model).expanduser()]
    if repo is not None:
        candidates.append(Path(repo).expanduser() / f"{model}.safetensors")
    for path in candidates:
        if path.is_file() and path.suffix == ".safetensors":
            training = read_package_metadata(path).get("training") or {}
            return set(training.get("train_tracks") or ())
    return set()


def check_not_training(tracks: Sequence[Track], options: EvalOptions) -> None:
    """Refuse to score tracks of the model's recorded training split."""
    seen = training_tracks(options.model, options.repo)
    overlap = sorted(t.name for t in tracks if t.name in seen)
    if overlap:
        more = f" and {len(overlap) - 3} more" if len(overlap) > 3 else ""
        raise ConfigError(
            f"refusing to score {len(overlap)} track(s) the model was trained on "
            f"({', '.join(overlap[:3])}{more}): evaluate on held-out tracks"
        )


def make_separator(options: EvalOptions) -> Separator:
    """The engine the CLI uses (a :class:`Separator`), configured from ``options``."""
    from demucs_rr.separate.api import Separator

    return Separator(
        options.model, device=options.device, repo=options.repo, options=options.engine
    )


def run_record(trackset: TrackSet, options: EvalOptions, separator: Separator) -> RunRecord:
    """Dataset and number-changing settings of this run (engine values after defaults)."""
    apply = separator.options
    segment = apply.segment_samples(separator.samplerate) or separator.model.segment_length
    settings = {
        "model": model_label(options.model),
        "model_signature": model_signature(separator.model),
        "segment": int(segment),
        "overlap": float(
            separator.model.chunking.overlap if apply.overlap is None else apply.overlap
        ),
        "split": bool(apply.split),
        "shifts": int(apply.shifts),
        "seed": int(apply.seed),
        "transition_power": float(apply.transition_power),
        "precision": apply.precision,
        "sdr_only": bool(options.sdr_only),
    }
    return RunRecord(trackset.describe(), settings)


def _metrics_device(separator: Separator) -> torch.device:
    """float64 metrics run on CUDA when separation does, else on the CPU (MPS has no float64)."""
    return separator.device if separator.device.type == "cuda" else torch.device("cpu")


def evaluate_track(
    track: Track, separator: Separator, options: EvalOptions, record: RunRecord
) -> TrackScores:
    """Separate and score one track (estimates converted back to the references' rate).

    The references are every stem of the track the model also outputs; the mixture is the
    track's mixture file, or the sum of all its stems.
    """
    start = time.perf_counter()
    targets = [s for s in separator.sources if s in track.stems]
    if not targets:
        raise ConfigError(
            f"the model's sources {separator.sources} match none of "
            f"the track's stems {sorted(track.stems)}"
        )
    mixture, stems = load_track(track, list(track.stems))  # (C, T), (S, C, T)
    estimates = separator.separate_tensor(mixture, track.samplerate)
    device = _metrics_device(separator)
    names = list(track.stems)
    refs = stems[[names.index(t) for t in targets]].to(device)
    ests = torch.stack(
        [
            convert_audio(
                estimates[t].float().cpu(), separator.samplerate, track.samplerate, track.channels
            )
            for t in targets
        ]
    ).to(device)
    scores = score_track(
        track.name,
        targets,
        refs,
        ests,
        track.samplerate,
        sdr_only=options.sdr_only,
        backend=options.backend,
        solver=options.solver,
    )
    scores.extra = {
        "model": record.settings["model"],
        "dataset": record.dataset,
        "settings": record.settings,
        "samplerate": track.samplerate,
        "seconds_audio": refs.shape[-1] / track.samplerate,
        "seconds_wall": round(time.perf_counter() - start, 3),
        "metrics": "SDR" if options.sdr_only else "SDR/ISR/SIR/SAR",
        "backend": options.backend,
        "solver": options.solver,
        "batch_size": int(separator.options.batch_size),
        "device": str(separator.device),
    }
    return scores


@dataclass(frozen=True)
class _Job:
    """What every worker needs besides the track."""

    options: EvalOptions
    record: RunRecord
    subset: str


def _score_and_write(track: Track, separator: Separator, job: _Job) -> None:
    scores = evaluate_track(track, separator, job.options, job.record)
    write_track_json(scores, result_path(job.options.out, job.subset, track.name))


_WORKER: dict = {}


def _init_worker(job: _Job, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["job"] = job
    _WORKER["separator"] = make_separator(job.options)


def _work(track: Track) -> tuple[str, str | None]:
    try:
        _score_and_write(track, _WORKER["separator"], _WORKER["job"])
        return track.name, None
    except DemucsRRError as exc:
        return track.name, str(exc)


def _run_serial(
    tracks: list[Track], separator: Separator, job: _Job, report: Callable[[str, str | None], None]
) -> None:
    for track in tracks:
        try:
            _score_and_write(track, separator, job)
            report(track.name, None)
        except DemucsRRError as exc:
            report(track.name, str(exc))


def _run_pool(tracks: list[Track], job: _Job, report: Callable[[str, str | None], None]) -> None:
    jobs = job.options.jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(job, threads)
    ) as pool:
        futures = [pool.submit(_work, t) for t in tracks]
        for future in as_completed(futures):
            report(*future.result())


@dataclass
class RunResult:
    """Outcome of :func:`run_evaluation` on one rank.

    Attributes:
        scores: every track result of the folder (rank 0; empty on other ranks), earlier
            results of the same dataset and settings included.
        failed: track name -> error message, for the tracks of every rank.
        skipped: this rank's tracks whose JSON already existed (not scored again).
        reused: names of the earlier results in ``scores`` (computed by earlier runs).
        count: number of track results in the folder after the run (on every rank).
    """

    scores: list[TrackScores]
    failed: dict[str, str]
    skipped: list[str]
    reused: list[str] = field(default_factory=list)
    count: int = 0


def _check_run(options: EvalOptions) -> None:
    if options.jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {options.jobs}")


def run_evaluation(
    trackset: TrackSet,
    options: EvalOptions,
    *,
    group: Group | None = None,
    progress: bool = False,
    notify: Callable[[str], None] | None = None,
) -> RunResult:
    """Evaluate the tracks of ``trackset`` (this rank's share), then gather on rank 0.

    Earlier results in ``options.out`` are reused (``notify`` is told how many) when they
    record the same dataset and settings; ``options.overwrite`` scores the tracks again.
    With a ``group`` of several ranks (:func:`demucs_rr.distributed.process_group`), each
    scores every ``world_size``-th track and every rank waits for all before rank 0 reads
    the results; without one, this process scores every track.

    Raises:
        ConfigError: a track is in the model's training split, bad options, or earlier
            results in ``options.out`` made from another dataset or with other settings.
    """
    _check_run(options)
    check_not_training(trackset.tracks, options)
    options = replace(options, out=Path(options.out))
    separator = make_separator(options)
    job = _Job(options, run_record(trackset, options, separator), trackset.subset)
    earlier = {p.stem for p in check_reuse(options.out, job.record)}
    kept = set() if options.overwrite else earlier
    reused = sorted(earlier - {t.name for t in trackset.tracks if t.name not in kept})
    if reused and notify is not None:
        notify(f"reusing {len(reused)} earlier results from {options.out}")
    mine = list(trackset.tracks) if group is None else group.shard(trackset.tracks)
    skipped = [t.name for t in mine if t.name in kept]
    todo = [t for t in mine if t.name not in kept]
    failed = _run_tracks(todo, separator, job, progress)
    if group is not None:  # every rank waits here until all have written their results
        failed = {name: error for part in group.gather(failed) for name, error in part.items()}
    files = result_files(options.out)
    if group is not None and not group.is_main:
        return RunResult([], failed, skipped, reused, count=len(files))
    scores = [read_track_json(p) for p in files]
    return RunResult(scores, failed, skipped, reused, count=len(scores))


def _run_tracks(
    todo: list[Track], separator: Separator, job: _Job, progress: bool
) -> dict[str, str]:
    """Score ``todo`` serially or in worker processes; returns name -> error of failures."""
    failed: dict[str, str] = {}
    bar = _progress_bar(len(todo), progress)

    def report(name: str, error: str | None) -> None:
        if error is not None:
            failed[name] = error
            logger.error("%s: %s", name, error)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(name[:30])

    try:
        if job.options.jobs > 1 and len(todo) > 1:
            _run_pool(todo, job, report)
        elif todo:
            _run_serial(todo, separator, job, report)
    finally:
        if bar is not None:
            bar.close()
    return failed


def _progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar counting tracks, or None."""
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="track",
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
    )
