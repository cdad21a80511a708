"""Start, watch and stop the worker processes of ``demucs-rr serve``.

Workers are forked from a ``forkserver`` that has imported torch and the worker code once (a
clean single-threaded parent, so new workers start in a fraction of a second and are safe next
to the server's threads); where there is no ``forkserver`` (Windows) they are spawned.

Each worker gets the read end of its own stop pipe (:class:`~demucs_rr.serve.worker.StopPipe`);
the server keeps the write end. Nothing else is shared, so a worker that died, even while
waiting, cannot block the server. When the server process ends in any way (SIGKILL included),
the pipes reach end-of-file and the workers exit; they also get SIGTERM when their parent (the
forkserver) ends. The forkserver itself exits once the server and every worker are gone.

A watcher thread replaces a worker that died (its running job fails with a one-line reason).
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

from demucs_rr.serve.store import JobStore
from demucs_rr.serve.worker import WorkerConfig, worker_main

logger = logging.getLogger(__name__)

RESPAWN_DELAY = 5.0
"""Seconds a slot waits after a worker's start before replacing it (no tight crash loops)."""
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


@dataclass
class _Slot:
    """One worker process, the write end of its stop pipe and when it started."""

    proc: BaseProcess
    pipe: Connection
    started: float

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

    def _spawn(self) -> _Slot:
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main, args=(self.config, reader), name="demucs-rr-worker", daemon=True
        )
        try:
            proc.start()
        finally:
            reader.close()  # the worker has its own copy; EOF must mean "server gone"
        return _Slot(proc, writer, time.monotonic())

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

    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [slot.proc.pid for slot in self._slots if slot.proc.pid is not None]

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            self.check()

    def check(self) -> None:
        """Replace dead workers; their running jobs fail with the reason."""
        for i, slot in enumerate(self._slots):
            proc = slot.proc
            if proc.exitcode is None or self._stopping.is_set():
                continue
            if time.monotonic() - slot.started < RESPAWN_DELAY:
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
            slot.close()
            self._slots[i] = self._spawn()

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
