"""Start, watch and stop the worker processes of ``demucs-rr serve``.

Workers are forked from a ``forkserver`` that has imported torch and the worker code once (a
clean single-threaded parent, so new workers start in a fraction of a second and are safe next
to the server's threads); where there is no ``forkserver`` (Windows) they are spawned.

Each worker gets the read end of its own stop pipe (:class:`~demucs_rr.serve.worker.StopPipe`);
the server keeps the write end. Nothing else is shared, so a worker that died, even while
waiting, cannot block the server. When the server process ends in any way (SIGKILL included),
the pipes reach end-of-file and the workers exit; they also get SIGTERM when their parent (the
forkserver) ends. The forkserver itself exits once the server and every worker are gone.

A watcher thread replaces a worker that died, after a delay that doubles with each worker that
dies young (1 s, 2 s, 4 s ... up to a minute), and fails the job the dead worker was running
with a one-line reason; when the job database cannot be written (a full disk), the failure is
retried on every round until it can. An error in the watcher itself is logged in one line and
retried with the same backoff: the watcher never dies.
:meth:`WorkerPool.stop` ends within a bounded time whatever the workers do: it asks, waits,
sends SIGTERM (the job goes back to the queue), then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from demucs_rr.errors import one_line
from demucs_rr.serve.jobs import clean_job_folder, job_dir
from demucs_rr.serve.store import JobStore
from demucs_rr.serve.worker import STORE_EXIT, WorkerConfig, worker_main

logger = logging.getLogger(__name__)

RESPAWN_DELAY = 1.0
"""Seconds before a dead worker is replaced; doubled for each worker in a row that died within
:data:`STABLE_AFTER` seconds of its start (no tight crash loops), up to :data:`MAX_DELAY`."""
MAX_DELAY = 60.0
STABLE_AFTER = 60.0
"""A worker that ran this long resets the backoff."""
WATCH_INTERVAL = 1.0
"""Seconds between the watcher's rounds; doubled after each failed round, up to a minute."""
TERM_GRACE = 2.0
"""Seconds a worker has to exit after SIGTERM before it is killed."""


def _context() -> Any:
    """``forkserver`` preloaded with the worker module, else ``spawn`` (typed ``Any``: typeshed
    gives the two contexts no common type that has ``Process``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["demucs_rr.serve.worker"])
    return context


def _pid_exists(pid: int | None) -> bool:
    """Whether a process ``pid`` exists (a worker orphaned by a dead forkserver is not our
    child: ``Process.is_alive`` cannot see it)."""
    if pid is None or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _signal(pid: int | None, signum: int) -> None:
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def death_reason(exitcode: int) -> str:
    """Why a worker process ended, for the job it was running (one line)."""
    if exitcode == STORE_EXIT:
        why = "it could not write the job database: is the disk full?"
    elif exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else "?"
        why = f"killed by {name}" + (": out of memory?" if exitcode == -9 else "")
    else:
        why = f"exit code {exitcode}"
    return f"the worker process stopped unexpectedly ({why}); the job was not finished"


@dataclass
class _Slot:
    """One worker process, the write end of its stop pipe, when it started, when it was seen
    dead, and how many workers of this slot in a row died young."""

    proc: BaseProcess
    pipe: Connection
    started: float
    died: float | None = None
    failures: int = 0

    def delay(self) -> float:
        """Seconds to wait before replacing this dead worker."""
        return min(MAX_DELAY, RESPAWN_DELAY * 2.0 ** max(0, self.failures - 1))

    def ask_to_stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a dead worker: nothing to ask
            self.pipe.send_bytes(b"stop")

    def running(self) -> bool:
        """Whether the process may still run (alive as a child, or still existing)."""
        return self.proc.is_alive() or _pid_exists(self.proc.pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.close()


class WorkerPool:
    """``count`` worker processes.

    Args:
        config: the workers' settings.
        count: number of processes (0: jobs are accepted but none runs).
    """

    def __init__(self, config: WorkerConfig, count: int) -> None:
        self.config = config
        self.count = count
        self.store = JobStore(config.jobs_dir)
        self._ctx = _context()
        self._slots: list[_Slot] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreported: dict[int, str] = {}  # dead worker pid -> reason, to fail its jobs

    def _spawn(self, failures: int = 0) -> _Slot:
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main, args=(self.config, reader), name="demucs-rr-worker", daemon=True
        )
        try:
            proc.start()
        finally:
            reader.close()  # the worker has its own copy; EOF must mean "server gone"
        return _Slot(proc, writer, time.monotonic(), failures=failures)

    def start(self) -> None:
        """Start the workers and the watcher thread."""
        for _ in range(self.count):
            self._slots.append(self._spawn())
        if self.count:
            self._thread = threading.Thread(target=self._watch, name="demucs-rr-pool", daemon=True)
            self._thread.start()

    def alive(self) -> int:
        """Number of live worker processes."""
        return sum(slot.proc.is_alive() for slot in self._slots)

    def can_run(self) -> bool:
        """Whether jobs can run now: a worker is alive, or the pool has none by design."""
        return self.count == 0 or self.alive() > 0

    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [slot.proc.pid for slot in self._slots if slot.proc.pid is not None]

    def _watch(self) -> None:
        errors = 0
        while not self._stopping.wait(min(MAX_DELAY, WATCH_INTERVAL * 2.0**errors)):
            try:
                self.check()
            except Exception as exc:  # never let the watcher die: log, back off, retry
                errors = min(errors + 1, 6)
                logger.warning("worker watcher: %s; retrying", one_line(exc, typed=True))
            else:
                errors = 0

    def check(self) -> None:
        """Replace dead workers (after their backoff delay) and fail their running jobs."""
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            proc = slot.proc
            if proc.exitcode is None or self._stopping.is_set():
                continue
            if _pid_exists(proc.pid):  # a dead forkserver reports 255 for a worker that still
                continue  # exists (e.g. a stopped one): it is dead once the process is gone
            if slot.died is None:
                slot.died = now
                young = now - slot.started < STABLE_AFTER
                slot.failures = slot.failures + 1 if young else 1
                self._unreported[proc.pid or -1] = death_reason(proc.exitcode)
                logger.warning(
                    "worker %s stopped (exit code %s); a new one starts in %.3g s",
                    proc.pid,
                    proc.exitcode,
                    slot.delay(),
                )
            if now - slot.died >= slot.delay():
                slot.close()
                self._slots[i] = self._spawn(slot.failures)
        for pid, reason in list(self._unreported.items()):
            failed = self.store.fail_worker(pid, reason)  # raises while the disk is full
            del self._unreported[pid]
            for job_id in failed:  # the dead worker's staged stems go now, not at next start
                clean_job_folder(job_dir(self.config.jobs_dir, job_id))
            if failed:
                logger.warning("%d job(s) of worker %s failed: %s", len(failed), pid, reason)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers within ``timeout + 2 * TERM_GRACE`` seconds at most: ask them, wait
        up to ``timeout``, then SIGTERM (a job goes back to the queue), then SIGKILL. Jobs a
        killed worker left ``running`` go back to the queue."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)  # its check() takes milliseconds; never wait longer
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.ask_to_stop()
        self._wait(slots, timeout)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            late = [slot for slot in slots if slot.running()]
            for slot in late:
                logger.warning(
                    "worker %s did not stop in time; sending %s",
                    slot.proc.pid,
                    signal.Signals(signum).name,
                )
                _signal(slot.proc.pid, signum)
            self._wait(late, TERM_GRACE)
        for slot in slots:
            slot.close()
        self._requeue([slot.proc.pid for slot in slots if slot.proc.pid is not None])

    @staticmethod
    def _wait(slots: list[_Slot], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for slot in slots:
            slot.proc.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(slot.running() for slot in slots):
            time.sleep(0.05)  # orphans of a dead forkserver: not joinable, only observable

    def _requeue(self, pids: list[int]) -> None:
        """Put the jobs of stopped workers back in the queue (best effort: a store that cannot
        be written is fixed by the next start, which re-queues every running job)."""
        try:
            count = sum(self.store.requeue_worker(pid) for pid in pids)
        except Exception as exc:  # the server is stopping: one line, no traceback
            logger.warning("cannot put the stopped workers' jobs back in the queue: %s", exc)
            return
        if count:
            logger.warning("%d interrupted job(s) put back in the queue", count)
