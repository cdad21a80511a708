"""Evaluate a model on a dataset: separate each track with the one engine, score it, write
museval-format JSON per track and, on rank 0, the summary (Markdown, CSV, box plot).

Parallelism: ``jobs`` worker processes per rank (each with its own :class:`Separator`), and
``world_size`` ranks (``torchrun`` or several machines sharing ``out``) that each take every
``world_size``-th track; rank 0 waits for the others' done markers and merges.
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

import torch
from torch import nn

from demucs_rr.audio import convert_audio
from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.evaluate.datasets import Track
from demucs_rr.evaluate.metrics import TrackScores, read_track_json, score_track, write_track_json

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """How to separate and score.

    Attributes:
        model: pretrained name, package/model file, or a built model.
        out: results folder (``<out>/<subset>/<track>.json`` + summary files).
        repo: folder searched first for model files.
        device: separation device (``auto``, ``cpu``, ``cuda``, ...).
        separator: extra :class:`Separator` keywords (shifts, overlap, segment, split, ...).
        sdr_only: score SDR only (milliseconds per track) instead of SDR/ISR/SIR/SAR.
        backend: ``torch`` or ``museval`` (reference implementation, slow).
        solver: normal-equation solver of the torch backend (levinson, cholesky, lu).
        jobs: worker processes on this rank.
        overwrite: re-score tracks whose JSON already exists.
        wait_timeout: seconds rank 0 waits for the other ranks.
    """

    model: str | Path | nn.Module
    out: Path
    repo: Path | None = None
    device: str = "auto"
    separator: dict = field(default_factory=dict)
    sdr_only: bool = False
    backend: str = "torch"
    solver: str = "levinson"
    jobs: int = 1
    overwrite: bool = False
    wait_timeout: float = 24 * 3600.0


def training_tracks(model: str | Path | nn.Module, repo: Path | None = None) -> set[str]:
    """Track names the model's package records as its training split (empty when unknown)."""
    from demucs_rr.models.package import read_package_metadata

    if isinstance(model, nn.Module):
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
        raise ConfigError(f"refusing to score {len(overlap)} track(s) the model was trained on "
                          f"({', '.join(overlap[:3])}{more}): evaluate on held-out tracks")


def result_path(out: Path, track: Track) -> Path:
    """museval layout: ``<out>/<subset>/<track name>.json``."""
    return Path(out) / track.subset / f"{track.name}.json"


def make_separator(options: EvalOptions):  # noqa: ANN201 - Separator (imported lazily)
    """The engine the CLI uses, configured from ``options``."""
    from demucs_rr.separate.api import Separator

    return Separator(options.model, device=options.device, repo=options.repo,
                     **options.separator)


def _metrics_device(separator) -> torch.device:  # noqa: ANN001
    """float64 metrics run on CUDA when separation does, else on the CPU (MPS has no float64)."""
    return separator.device if separator.device.type == "cuda" else torch.device("cpu")


def evaluate_track(track: Track, separator, options: EvalOptions) -> TrackScores:  # noqa: ANN001
    """Separate and score one track (estimates converted back to the references' rate)."""
    start = time.perf_counter()
    audio = track.load()
    targets = [s for s in separator.sources if s in audio.stems]
    if not targets:
        raise ConfigError(f"{track.name}: the model's sources {separator.sources} match none of "
                          f"the track's stems {sorted(audio.stems)}")
    estimates = separator.separate_tensor(audio.mixture, audio.samplerate)
    channels = audio.mixture.shape[0]
    device = _metrics_device(separator)
    refs = torch.stack([audio.stems[t] for t in targets]).to(device)
    ests = torch.stack([convert_audio(estimates[t].float().cpu(), separator.samplerate,
                                      audio.samplerate, channels) for t in targets]).to(device)
    scores = score_track(track.name, targets, refs, ests, audio.samplerate,
                         sdr_only=options.sdr_only, backend=options.backend,
                         solver=options.solver)
    scores.extra = {"model": _model_name(options.model, separator), "subset": track.subset,
                    "samplerate": audio.samplerate, "seconds_audio": refs.shape[-1] /
                    audio.samplerate, "seconds_wall": round(time.perf_counter() - start, 3),
                    "metrics": "SDR" if options.sdr_only else "SDR/ISR/SIR/SAR",
                    "backend": options.backend, **_jsonable(options.separator)}
    return scores


def _model_name(model: object, separator) -> str:  # noqa: ANN001
    return str(getattr(separator, "model_name", None) or model)


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, type(None)))}


_WORKER: dict = {}


def _init_worker(options: EvalOptions, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["options"] = options
    _WORKER["separator"] = make_separator(options)


def _work(track: Track) -> tuple[str, TrackScores | None, str | None]:
    options = _WORKER["options"]
    try:
        scores = evaluate_track(track, _WORKER["separator"], options)
        write_track_json(scores, result_path(options.out, track))
        return track.name, scores, None
    except DemucsRRError as exc:
        return track.name, None, str(exc)


def _run_serial(tracks: list[Track], options: EvalOptions,
                report: Callable[[str, str | None], None]) -> None:
    separator = make_separator(options)
    for track in tracks:
        try:
            scores = evaluate_track(track, separator, options)
            write_track_json(scores, result_path(options.out, track))
            report(track.name, None)
        except DemucsRRError as exc:
            report(track.name, str(exc))


def _run_pool(tracks: list[Track], options: EvalOptions,
              report: Callable[[str, str | None], None]) -> None:
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
    with ProcessPoolExecutor(options.jobs, mp_context=context, initializer=_init_worker,
                             initargs=(options, threads)) as pool:
        futures = [pool.submit(_work, t) for t in tracks]
        for future in as_completed(futures):
            name, _, error = future.result()
            report(name, error)


@dataclass
class RunResult:
    """Outcome of :func:`run_evaluation` on one rank.

    Attributes:
        scores: every track's scores found in ``out`` (rank 0; empty on other ranks).
        failed: track name -> error message, for this rank's tracks.
        skipped: tracks whose JSON already existed.
    """

    scores: list[TrackScores]
    failed: dict[str, str]
    skipped: list[str]


def run_evaluation(tracks: Sequence[Track], options: EvalOptions, *, rank: int = 0,
                   world_size: int = 1, progress: bool = False) -> RunResult:
    """Evaluate ``tracks`` (this rank's share), then on rank 0 gather every rank's results.

    Raises:
        ConfigError: a track is in the model's training split, or bad options.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    if options.jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {options.jobs}")
    check_not_training(tracks, options)
    options = replace(options, out=Path(options.out))
    mine = list(tracks)[rank::world_size]
    skipped = [t.name for t in mine
               if not options.overwrite and result_path(options.out, t).is_file()]
    todo = [t for t in mine if t.name not in skipped]
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
        if todo:
            (_run_pool if options.jobs > 1 and len(todo) > 1 else _run_serial)(
                todo, options, report)
    finally:
        if bar is not None:
            bar.close()
    _mark_done(options.out, rank, world_size)
    if rank != 0:
        return RunResult(scores=[], failed=failed, skipped=skipped)
    _wait_for_ranks(options.out, world_size, options.wait_timeout)
    found = [result_path(options.out, t) for t in tracks]
    scores = [read_track_json(p) for p in found if p.is_file()]
    return RunResult(scores=scores, failed=failed, skipped=skipped)


def _progress_bar(total: int, enabled: bool):  # noqa: ANN202 - tqdm or None
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="track", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def _marker(out: Path, rank: int, world_size: int) -> Path:
    return out / f".done-rank{rank}-of-{world_size}"


def _mark_done(out: Path, rank: int, world_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _marker(out, rank, world_size).write_text(str(time.time()))


def _wait_for_ranks(out: Path, world_size: int, timeout: float) -> None:
    """Rank 0 polls the other ranks' done markers (shared filesystem)."""
    deadline = time.monotonic() + timeout
    pending = [r for r in range(1, world_size) if not _marker(out, r, world_size).is_file()]
    while pending:
        if time.monotonic() > deadline:
            raise DemucsRRError(f"ranks {pending} did not finish within {timeout:.0f} s; rerun "
                                "rank 0 later to merge (finished tracks are kept)")
        time.sleep(2.0)
        pending = [r for r in pending if not _marker(out, r, world_size).is_file()]
