"""Worker processes of ``demucs-rr serve``: claim queued jobs and separate them.

A worker loads its model once (a :class:`~demucs_rr.separate.api.Separator`, kept across jobs)
and runs each job exactly as ``separate`` does, through the streaming
:meth:`Separator.separate_file_to` (blocks in, stem blocks out, all-or-nothing rename), so the
stems are byte for byte those of the command line for the same file and options.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from demucs_rr.audio import WriteOptions
from demucs_rr.errors import DemucsRRError, DownloadError
from demucs_rr.hub.identity import model_identity
from demucs_rr.separate.api import Separator
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.outputs import (
    InputFile,
    output_path,
    select_stems,
)
from demucs_rr.serve.jobs import JobOptions, job_dir, model_label
from demucs_rr.serve.store import Job, JobStore, StoreUnavailable
from demucs_rr.serve.waveform import write_waveform_file
from demucs_rr.staging import atomic_write

logger = logging.getLogger(__name__)

MODEL_FACTS = "model.json"
"""File in the jobs folder where a worker records the server model's stems and device."""
MODELS_KEPT = 2
"""Separators a worker keeps loaded (the server's model and the last other one asked for)."""
STORE_EXIT = 75
"""Exit status of a worker that cannot use the job database (EX_TEMPFAIL): its server starts
another one after a delay, and fails the job it was running once the database works again."""


class StopFlag(Protocol):
    """What a worker needs of its stop signal (a :class:`StopPipe`, or a ``threading.Event``)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class StopPipe:
    """A worker's end of its stop pipe, watched by a thread.

    The server writes to the pipe to ask the worker to stop (the running job goes back to the
    queue at its next progress step). The server holds the only write end, so the pipe reaches
    end-of-file when the server process ends, however it ends: the worker then exits at once,
    whatever it is doing (a job it was running stays ``running`` until the next server puts
    it back in the queue). No lock is shared with the server, so a worker killed at any moment
    cannot block the server's stop.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._event = threading.Event()
        threading.Thread(target=self._watch, name="demucs-rr-stop", daemon=True).start()

    def _watch(self) -> None:
        try:
            while True:
                self._conn.recv_bytes()
                self._event.set()
        except (EOFError, OSError):
            os._exit(0)  # the server is gone: no one is left to report to

    def is_set(self) -> bool:
        """Whether the server asked this worker to stop."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a stop request; returns :meth:`is_set`."""
        return self._event.wait(timeout)


@dataclass(frozen=True)
class WorkerConfig:
    """Settings shared by every worker of a server.

    Attributes:
        jobs_dir: the jobs folder (database and job folders).
        model: the server's model (loaded when the worker starts).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        repo: folder searched first for model files.
        threads: torch CPU threads per worker (None: torch's default).
        engine: how models are applied (segment, overlap, batch, precision); each job
            sets its shifts.
        poll_interval: seconds between looks at an empty queue.
        max_seconds: longest audio a job may have (checked while decoding; None: any).
    """

    jobs_dir: Path
    model: str
    device: str = "auto"
    repo: str | None = None
    threads: int | None = None
    engine: ApplyOptions = field(default_factory=ApplyOptions)
    poll_interval: float = 0.2
    max_seconds: float | None = None


class _Stopped(Exception):
    """The server is stopping: the job goes back to the queue."""


class _Deleted(Exception):
    """The job was deleted while it ran."""


class ModelChangedError(DemucsRRError):
    """The model a job was submitted for is no longer the one its name designates."""


class ModelCache:
    """Separators by model name, loaded on first use, the least recently used dropped; each
    with the identity (:func:`~demucs_rr.hub.identity.model_identity`) of what was loaded."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._items: OrderedDict[str, tuple[Separator, str | None]] = OrderedDict()

    def get(self, name: str, expected: str | None = None) -> Separator:
        """The separator of ``name``, a pretrained name or the server model's label.

        Args:
            name: the model's name.
            expected: the identity a job was submitted for; a model loaded earlier under
                another identity (its file was replaced since) is loaded again.

        Raises:
            ModelChangedError: ``name`` designates another model than ``expected`` now.
        """
        if name == model_label(self.config.model):
            name = self.config.model
        cached = self._items.get(name)
        if cached is not None and expected in (None, cached[1]):
            self._items.move_to_end(name)
            return cached[0]
        identity = self._identity(name)
        if None not in (expected, identity) and identity != expected:
            raise ModelChangedError(
                f"the model {model_label(name)!r} was replaced on the server after this job was "
                "submitted; upload the song again to separate it with the new model"
            )
        sep = Separator(
            name, device=self.config.device, repo=self.config.repo, options=self.config.engine
        )
        self._items[name] = (sep, identity)
        self._items.move_to_end(name)
        while len(self._items) > MODELS_KEPT:
            self._items.popitem(last=False)
        return sep

    def _identity(self, name: str) -> str | None:
        """The identity of ``name`` now (None when it cannot be read: loading will say why)."""
        try:
            return model_identity(name, self.config.repo)
        except (DemucsRRError, OSError):
            return None


class _Progress:
    """Engine progress callback: stores the job's progress (at most 5 times a second)."""

    def __init__(self, store: JobStore, job_id: str, total: int, stop: StopFlag) -> None:
        self.store, self.job_id, self.total, self.stop = store, job_id, max(1, total), stop
        self.done = 0
        self.last = 0.0

    def set(self, fraction: float, device: str | None = None) -> None:
        """Store ``fraction`` (0-1); raises when the job was deleted or the server stops."""
        if self.stop.is_set():
            raise _Stopped
        if not self.store.set_progress(self.job_id, round(fraction, 4), device):
            raise _Deleted
        self.last = time.monotonic()

    def __call__(self, samples: int) -> None:
        self.done += samples
        if time.monotonic() - self.last >= 0.2 or self.stop.is_set():
            self.set(0.05 + 0.85 * min(1.0, self.done / self.total))


def separate_job(
    job: Job, folder: Path, sep: Separator, progress: _Progress, max_seconds: float | None = None
) -> list[dict[str, str]]:
    """Separate a job's upload into its stems and their waveforms; returns the stem list.

    The upload streams through :meth:`Separator.separate_file_to`, the path of ``separate``,
    so memory does not grow with the length of the upload.
    """
    opts = JobOptions.from_json(job.options)
    sep.options = replace(sep.options, shifts=opts.shifts)
    names = select_stems(sep.sources, opts.stems, opts.two_stems, "add")
    progress.set(0.02, str(sep.device))
    path = folder / job.input
    wopts = WriteOptions(format=opts.format)
    track = InputFile(path, "input", path.suffix.lstrip("."))
    out = folder / "stems"
    out.mkdir(exist_ok=True)
    paths = {
        name: output_path(out, "{stem}.{ext}", track, name, wopts.format, sep.model_name)
        for name in names
    }

    def start(total: int) -> None:
        progress.total = max(1, total)

    sep.separate_file_to(
        path, paths, wopts, "add", callback=progress, on_start=start, max_seconds=max_seconds
    )
    progress.set(0.92)
    for name, stem in paths.items():
        write_waveform_file(stem, folder / "waveforms" / f"{name}.png")
    return [{"name": name, "file": paths[name].name} for name in names]


_SERVER_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^\s/'\"(),;]+)+/?")
"""An absolute path (not inside a URL), as it appears in error messages."""


def _one_line(message: str, job: Job, folder: Path) -> str:
    """An error for the client: one line, the upload named by its display name, and no server
    path (any other absolute path is cut to its last part: ``.../cache/x.th`` -> ``x.th``)."""
    message = message.replace(str(folder / job.input), job.name).replace(f"{folder}{os.sep}", "")
    message = _SERVER_PATH.sub(lambda m: Path(m.group()).name or "/", message)
    return " ".join(message.split())[:500]


def _download_reason(err: DownloadError) -> str:
    """Why a model could not be downloaded, without the server's paths."""
    text = str(err)
    if "checksum mismatch" in text:
        return "its download failed the checksum (see the server log)"
    return "it could not be downloaded (see the server log)"


def run_job(job: Job, store: JobStore, models: ModelCache, stop: StopFlag) -> None:
    """Run one claimed job to done or failed (or back to the queue when stopping)."""
    folder = job_dir(store.path.parent, job.id)
    progress = _Progress(store, job.id, 1, stop)
    try:
        sep = models.get(JobOptions.from_json(job.options).model, job.model_id)
        stems = separate_job(job, folder, sep, progress, models.config.max_seconds)
    except (_Stopped, KeyboardInterrupt) as exc:  # KeyboardInterrupt: SIGTERM (Terminated)
        store.requeue(job.id)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return
    except StoreUnavailable:  # not the job's fault: the worker ends, its server handles it
        raise
    except _Deleted:
        shutil.rmtree(folder, ignore_errors=True)
        return
    except DownloadError as exc:  # the remedy is the operator's: the whole text goes to the log
        logger.warning("job %s: %s", job.id, exc)
        label = JobOptions.from_json(job.options).model
        error = f"the model {label!r} is not available on this server: {_download_reason(exc)}"
    except DemucsRRError as exc:
        error = _one_line(str(exc), job, folder)
    except Exception as exc:  # a bug or an engine failure: logged here, one line to the client
        logger.exception("job %s failed", job.id)
        error = _one_line(f"internal error: {type(exc).__name__}: {exc}", job, folder)
    else:
        if not store.finish(job.id, stems):
            shutil.rmtree(folder, ignore_errors=True)  # deleted meanwhile
        return
    if not store.fail(job.id, error):
        shutil.rmtree(folder, ignore_errors=True)


def report_model(sep: Separator, config: WorkerConfig) -> None:
    """Write what the loaded server model really is (``model.json``) for ``GET /api/info``."""
    facts = {"for": config.model, "sources": sep.sources, "device": str(sep.device)}
    with atomic_write(config.jobs_dir / MODEL_FACTS) as tmp:
        tmp.write_text(json.dumps(facts))


def worker_main(config: WorkerConfig, stop: Connection | StopFlag) -> None:
    """Process entry point: load the model, then run queued jobs until stopped.

    Args:
        config: the workers' settings.
        stop: the read end of this worker's stop pipe (see :class:`StopPipe`), or a stop flag
            (a worker run in a thread).

    SIGTERM (a process-group SIGTERM, or the server's escalation) puts the running job back in
    the queue and ends the worker; SIGINT is ignored (the server stops its workers); the
    worker gets SIGTERM when its parent process ends.
    """
    from demucs_rr.process import configure_process

    configure_process(
        threads=config.threads,
        keep_freed_memory=True,
        signals=True,
        ignore_interrupt=True,
        parent_death=True,
        verbose=False,
    )
    flag = StopPipe(stop) if isinstance(stop, Connection) else stop
    try:
        run_worker(config, flag)
    except KeyboardInterrupt:  # SIGTERM: the running job is back in the queue
        return
    except StoreUnavailable as exc:
        logger.error("worker %d: %s; exiting", os.getpid(), exc)
        sys.exit(STORE_EXIT)


def run_worker(config: WorkerConfig, stop: StopFlag) -> None:
    """Load the server model, then claim and run queued jobs until ``stop`` is set."""
    store = JobStore(config.jobs_dir)
    models = ModelCache(config)
    try:
        report_model(models.get(config.model), config)
    except StoreUnavailable:
        raise
    except (DemucsRRError, OSError) as exc:  # reported again by every job that needs it
        logger.warning("worker %d: cannot load model %s: %s", os.getpid(), config.model, exc)
    while not stop.is_set():
        job = store.claim(os.getpid())
        if job is None:
            stop.wait(config.poll_interval)
            continue
        run_job(job, store, models, stop)
