"""Process-wide state, owned by the entry points: threads, the allocator, signals, logging.

Nothing in the library changes process-wide settings; the console scripts (``demucs-rr``,
``separate``), ``python -m demucs_rr`` and the start of a ``serve`` worker call
:func:`configure_process` once, before any model runs. A program that uses the Python API owns
its process and may call it too.

What it sets:

* threads: torch's intra-op (and, while still allowed, inter-op) thread count, and how idle
  OpenMP workers wait (:func:`set_wait_policy`, set before torch starts its thread pool);
* freed memory kept in the process (:func:`reuse_freed_memory`): glibc's ``malloc`` serves every
  request above 32 MiB (the most its dynamic threshold reaches) with a fresh ``mmap`` and gives it
  back to the kernel on ``free``. A separation model allocates and frees many such tensors per
  chunk (the first HT Demucs levels hold 66 MB activations), so each chunk page-faults about
  2.4 GB of zeroed pages in again: measured here, 600,000 minor faults and 1.1-1.5 s of kernel
  time per 7.8 s HT Demucs segment on 2 threads, a quarter of the forward pass. Turning ``mmap``
  off for ``malloc`` (``M_MMAP_MAX = 0``) and keeping up to 2 GiB of freed memory at the top of the
  heap (``M_TRIM_THRESHOLD``) reuses the same pages after the first chunk or two: 0-30,000 faults
  per segment. Peak memory is unchanged; the process keeps its peak resident until it exits.
  ``DEMUCS_RR_MALLOC=system`` turns it off. Only glibc on Linux; elsewhere it does nothing;
* signals: SIGTERM unwinds like Ctrl-C (:class:`Terminated`, exit 143), so that staged files are
  removed on the way out; a serve worker ignores SIGINT (its server stops it);
* parent death: a serve worker asks the kernel for SIGTERM when its parent process ends
  (``prctl(PR_SET_PDEATHSIG)``, Linux only; :func:`die_with_parent`);
* temporary files: ``serve`` puts its own and its children's (multiprocessing's folder, decoder
  scratch files) under its jobs folder, which it empties at start: a server killed with SIGKILL
  leaves nothing in the system's temporary folder;
* logging: the root logger's level and format for the command line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import NoReturn

__all__ = [
    "WAIT_POLICY_ENV",
    "Terminated",
    "configure_process",
    "die_with_parent",
    "reuse_freed_memory",
    "set_threads",
    "set_wait_policy",
]

WAIT_POLICY_ENV = "DEMUCS_RR_WAIT_POLICY"
"""``passive`` (default): idle OpenMP workers sleep; ``torch``: OpenMP's own default."""

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # mallopt takes a C int
_PR_SET_PDEATHSIG = 1


def _glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # musl and others do not know the name
        return False


def reuse_freed_memory() -> bool:
    """Make glibc ``malloc`` keep and reuse freed memory; returns whether it now does.

    Process-wide and not undone; ``DEMUCS_RR_MALLOC=system`` in the environment skips it.
    Entry points call it through :func:`configure_process`.
    """
    if os.environ.get("DEMUCS_RR_MALLOC", "").strip().lower() == "system" or not _glibc():
        return False
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(_M_MMAP_MAX, 0) == 1
        done = done and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    except (OSError, AttributeError):
        return False
    logger.debug("malloc keeps freed memory: %s", done)
    return done


def set_wait_policy() -> bool:
    """Make idle OpenMP workers sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``); returns
    whether the policy is now passive.

    libgomp's default makes a worker that waits at a barrier spin for 300,000 rounds first. On a
    machine where another process holds a core, the spinning workers take turns with the one
    that has work, and a separation runs 8-20x slower than on one thread (see
    docs/performance.md). Only effective before torch is imported (it starts the pool then);
    left alone when the environment already says how OpenMP should wait (``OMP_WAIT_POLICY``,
    ``GOMP_SPINCOUNT``) or when ``DEMUCS_RR_WAIT_POLICY=torch``.
    """
    if os.environ.get(WAIT_POLICY_ENV, "passive").strip().lower() == "torch":
        return False
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"
    if "torch" in sys.modules:
        logger.debug("torch is imported already: OpenMP keeps its wait policy")
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_threads(threads: int) -> None:
    """Intra-op threads, and inter-op threads while torch still allows it."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable once, before any inter-op work has started
        logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` to this process when its parent ends; returns whether it
    will (Linux only: ``prctl(PR_SET_PDEATHSIG)``).

    The kernel does not notice a parent that ended before the call: a process already
    re-parented to init (parent id 1), or whose parent changed during the call, sends itself
    the signal.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that staged files are removed on the way out."""


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Terminated


def configure_process(
    *,
    threads: int | None = None,
    keep_freed_memory: bool = False,
    signals: bool = False,
    ignore_interrupt: bool = False,
    parent_death: bool = False,
    temp_dir: os.PathLike[str] | str | None = None,
    verbose: bool | None = None,
) -> None:
    """Set the process-wide state of an entry point (see the module docstring).

    Args:
        threads: torch CPU threads; None leaves torch's default (one per core). Idle OpenMP
            workers sleep instead of spinning in any case (:func:`set_wait_policy`).
        keep_freed_memory: keep freed memory for reuse (:func:`reuse_freed_memory`).
        signals: SIGTERM raises :class:`Terminated` in the main thread.
        ignore_interrupt: ignore SIGINT (a worker process stopped by its parent).
        parent_death: SIGTERM when the parent process ends (:func:`die_with_parent`).
        temp_dir: folder (created) for the temporary files of this process and its children
            (``tempfile.tempdir`` and ``$TMPDIR``).
        verbose: configure command-line logging, DEBUG when True, WARNING when False;
            None leaves logging alone.
    """
    if verbose is not None:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING,
            format="%(levelname)s: %(message)s",
        )
    set_wait_policy()  # first: before anything imports torch
    if keep_freed_memory:
        reuse_freed_memory()
    if threads is not None:
        set_threads(threads)
    if signals:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_death:
        die_with_parent(signal.SIGTERM)
    if temp_dir is not None:
        import tempfile

        os.makedirs(temp_dir, exist_ok=True)
        os.environ["TMPDIR"] = tempfile.tempdir = os.path.abspath(temp_dir)
