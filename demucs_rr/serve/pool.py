"""Start, watch and stop the worker processes of ``demucs-rr serve``.

Workers are forked from a ``forkserver`` that has imported torch and the worker code once (a
clean single-threaded parent, so new workers start in a fraction of a second and are safe next
to the server's threads); where there is no ``forkserver`` (Windows) they are spawned. A watcher
thread replaces a worker that died (its running job fails with a one-line reason);
:meth:`WorkerPool.stop` asks the workers to stop, and a job they were running goes back to the
queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from demucs_rr.serve.store import JobStore
from demucs_rr.serve.worker import WorkerConfig, worker_main

logger = logging.getLogger(__name__)

RESPAWN_DELAY = 5.0
"""Seconds a slot waits after a worker's start before replacing it (no tight crash loops)."""


def _context() -> Any:
    """``forkserver`` preloaded with the worker module, else ``spawn`` (typed ``Any``: typeshed
    gives the two contexts no common type that has ``Process``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["demucs_rr.serve.worker"])
    return context


class WorkerPool:
    """``count`` worker processes sharing one stop event.

    Args:
        config: the workers' settings.
        count: number of processes (0: jobs are accepted but none runs).
    """

    def __init__(self, config: WorkerConfig, count: int) -> None:
        self.config = config
        self.count = count
        self.store = JobStore(config.jobs_dir)
        self._ctx = _context()
        self._stop = self._ctx.Event()
        self._procs: list[BaseProcess] = []
        self._started: list[float] = []
        self._watching = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> BaseProcess:
        proc = self._ctx.Process(
            target=worker_main, args=(self.config, self._stop), name="demucs-rr-worker", daemon=True
        )
        proc.start()
        return proc

    def start(self) -> None:
        """Start the workers and the watcher thread."""
        for _ in range(self.count):
            self._procs.append(self._spawn())
            self._started.append(time.monotonic())
        if self.count:
            self._thread = threading.Thread(target=self._watch, name="demucs-rr-pool", daemon=True)
            self._thread.start()

    def alive(self) -> int:
        """Number of live worker processes."""
        return sum(p.is_alive() for p in self._procs)

    def _watch(self) -> None:
        while not self._watching.wait(1.0):
            self.check()

    def check(self) -> None:
        """Replace dead workers; their running jobs fail with the reason."""
        for i, proc in enumerate(self._procs):
            if proc.exitcode is None or self._stop.is_set():
                continue
            if time.monotonic() - self._started[i] < RESPAWN_DELAY:
                continue
            failed = self.store.fail_worker(
                proc.pid or -1,
                f"the worker process stopped unexpectedly (exit code {proc.exitcode}); "
                "it may have run out of memory",
            )
            logger.warning(
                "worker %s exited with code %s (%d running job(s) failed); starting a new one",
                proc.pid,
                proc.exitcode,
                failed,
            )
            self._procs[i] = self._spawn()
            self._started[i] = time.monotonic()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers: ask, wait up to ``timeout`` seconds, then terminate."""
        self._watching.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                logger.warning("worker %s did not stop in time; terminating it", proc.pid)
                proc.terminate()
                proc.join(2.0)
        self._procs.clear()
