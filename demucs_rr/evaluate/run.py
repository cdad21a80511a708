"""Evaluate a dataset subset: separate each track with the one engine (or read another tool's
stems), score it, write museval-format JSON per track and, on rank 0, gather every result of
the folder for the summary.

Tracks come from the data layer (:func:`demucs_rr.data.open_tracks`); estimates from a
:mod:`~demucs_rr.evaluate.producers` producer; results are laid out and checked for reuse by
:mod:`demucs_rr.evaluate.results` (a folder never mixes datasets or settings). Tracks a model
was trained with are scored, marked (``training_overlap``) and said so once
(:mod:`demucs_rr.evaluate.contamination`).

Parallelism: ``jobs`` worker processes per rank (each with its own producer: a
:class:`Separator`, or the estimate files), and ``torchrun`` ranks (one machine or several
sharing ``out``; :mod:`demucs_rr.distributed`) that each take every ``world_size``-th track;
after every rank has finished (a collective, no marker files), rank 0 merges the track JSONs of
the folder.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from demucs_rr.data.tracks import Track
from demucs_rr.data.trackset import TrackSet
from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.evaluate.contamination import training_overlap, training_summary
from demucs_rr.evaluate.metrics import TrackScores, score_track
from demucs_rr.evaluate.options import EvalOptions
from demucs_rr.evaluate.producers import Producer, make_producer
from demucs_rr.evaluate.results import (
    RunRecord,
    check_reuse,
    read_record,
    result_files,
    result_path,
)
from demucs_rr.evaluate.trackjson import read_track_json, write_track_json

if TYPE_CHECKING:
    from demucs_rr.distributed import Group
    from demucs_rr.evaluate.estimates import EstimateFolder

logger = logging.getLogger(__name__)

Report = Callable[[str, "str | None", "list[str]"], None]


def evaluate_track(
    track: Track, producer: Producer, options: EvalOptions, record: RunRecord
) -> tuple[TrackScores, list[str]]:
    """Produce and score one track; returns the scores and the notes of the producer."""
    start = time.perf_counter()
    item = producer.produce(track)
    dev = producer.device
    scores = score_track(
        track.name,
        item.targets,
        item.refs.to(dev),
        item.ests.to(dev),
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
        "seconds_audio": item.refs.shape[-1] / track.samplerate,
        "seconds_wall": round(time.perf_counter() - start, 3),
        "metrics": "SDR" if options.sdr_only else "SDR/ISR/SIR/SAR",
        "backend": options.backend,
        "solver": options.solver,
        **item.extra,
    }
    return scores, item.notes


@dataclass(frozen=True)
class _Job:
    """What every worker needs besides the track."""

    options: EvalOptions
    record: RunRecord
    subset: str
    folder: EstimateFolder | None
    overlap: dict[str, str]
    training: str
    dataset_tracks: int


def _score_and_write(track: Track, producer: Producer, job: _Job) -> list[str]:
    scores, notes = evaluate_track(track, producer, job.options, job.record)
    scores.extra["training_data"] = job.training
    scores.extra["dataset_tracks"] = job.dataset_tracks
    if track.name in job.overlap:
        scores.extra["training_overlap"] = job.overlap[track.name]
    write_track_json(scores, result_path(job.options.out, job.subset, track.name))
    return notes


_WORKER: dict[str, Any] = {}


def _init_worker(job: _Job, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["job"] = job
    _WORKER["producer"] = make_producer(job.options, job.record.settings["model"], job.folder)


def _work(track: Track) -> tuple[str, str | None, list[str]]:
    try:
        notes = _score_and_write(track, _WORKER["producer"], _WORKER["job"])
        return track.name, None, notes
    except DemucsRRError as exc:
        return track.name, str(exc), []


def _run_serial(tracks: list[Track], producer: Producer, job: _Job, report: Report) -> None:
    for track in tracks:
        try:
            report(track.name, None, _score_and_write(track, producer, job))
        except DemucsRRError as exc:
            report(track.name, str(exc), [])


def _run_pool(tracks: list[Track], job: _Job, jobs: int, report: Report) -> None:
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
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {options.jobs}")
    if options.model is None and options.estimates is None:
        raise ConfigError("nothing to evaluate: give a model, or a folder of estimates")


def _open_folder(
    trackset: TrackSet, options: EvalOptions, notify: Callable[[str], None] | None
) -> EstimateFolder | None:
    if options.estimates is None:
        return None
    from demucs_rr.evaluate.estimates import open_estimates

    folder, notes = open_estimates(options.estimates, trackset, options.stems)
    if notify is not None:
        for note in notes:
            notify(note)
    return folder


def _kept(
    earlier: list[Path], trackset: TrackSet, options: EvalOptions, folder: EstimateFolder | None
) -> set[str]:
    """Earlier results not scored again: all unless overwriting; for estimate files, those
    whose files did not change since."""
    if options.overwrite:
        return set()
    kept = {p.stem for p in earlier}
    if folder is None:
        return kept
    names = {t.name for t in trackset.tracks}
    for path in earlier:
        if path.stem in names:
            try:
                same = read_record(path).get("estimate_files") == folder.signature(path.stem)
            except DemucsRRError:  # the files are gone: the track will fail with its reason
                same = False
            if not same:
                kept.discard(path.stem)
    return kept


def _make_job(
    trackset: TrackSet,
    options: EvalOptions,
    folder: EstimateFolder | None,
    producer: Producer,
    notify: Callable[[str], None] | None,
) -> _Job:
    """The run's record and what it knows of the model's training data (said once)."""
    if options.estimates is None:
        overlap = training_overlap(options.model, trackset, options.repo)
        training = training_summary(options.model, options.repo)
    else:  # the files go by their label (named after a release: its training data counts)
        overlap = training_overlap(None, trackset, label=options.label)
        training = training_summary(options.label)
    if overlap is not None and notify is not None:
        notify(f"note: {overlap.reason}; their scores are marked and left out of rankings")
    return _Job(
        options,
        RunRecord(trackset.describe(), producer.settings()),
        trackset.subset,
        folder,
        {} if overlap is None else dict.fromkeys(overlap.tracks, overlap.reason),
        training,
        len(trackset.tracks),
    )


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
    the results; without one, this process scores every track. ``notify`` also gets one line
    per note: tracks the model was trained with, estimates of another length, estimate
    folders that match no track.

    Raises:
        ConfigError: bad options, no estimate named like a reference stem, or earlier results
            in ``options.out`` made from another dataset or with other settings.
    """
    _check_run(options)
    options = replace(options, out=Path(options.out))
    folder = _open_folder(trackset, options, notify)
    producer = make_producer(options, options.label, folder)
    job = _make_job(trackset, options, folder, producer, notify)
    earlier = check_reuse(options.out, job.record)
    kept = _kept(earlier, trackset, options, folder)
    reused = sorted({p.stem for p in earlier} & kept)
    if reused and notify is not None:
        notify(f"reusing {len(reused)} earlier results from {options.out}")
    mine = list(trackset.tracks) if group is None else group.shard(trackset.tracks)
    skipped = [t.name for t in mine if t.name in kept]
    todo = [t for t in mine if t.name not in kept]
    ranks = 1 if group is None else group.world_size
    failed = _run_tracks(todo, producer, job, job.options.worker_count(ranks), progress, notify)
    if group is not None:  # every rank waits here until all have written their results
        failed = {name: error for part in group.gather(failed) for name, error in part.items()}
    files = result_files(options.out)
    if group is not None and not group.is_main:
        return RunResult([], failed, skipped, reused, count=len(files))
    scores = [read_track_json(p) for p in files]
    return RunResult(scores, failed, skipped, reused, count=len(scores))


def _run_tracks(
    todo: list[Track],
    producer: Producer,
    job: _Job,
    workers: int,
    progress: bool,
    notify: Callable[[str], None] | None,
) -> dict[str, str]:
    """Score ``todo`` serially or in worker processes; returns name -> error of failures."""
    failed: dict[str, str] = {}
    bar = _progress_bar(len(todo), progress)

    def report(name: str, error: str | None, notes: list[str]) -> None:
        if error is not None:
            failed[name] = error
            logger.error("%s: %s", name, error)
        if notify is not None:
            for note in notes:
                notify(f"{name}: {note}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(name[:30])

    jobs = min(workers, len(todo))
    try:
        if jobs > 1:
            _run_pool(todo, job, jobs, report)
        elif todo:
            _run_serial(todo, producer, job, report)
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
