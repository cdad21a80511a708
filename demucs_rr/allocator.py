"""Keep freed memory in the process so that large tensors are not page-faulted in again.

glibc's ``malloc`` serves every request above 32 MiB (the most its dynamic threshold reaches)
with a fresh ``mmap`` and gives it back to the kernel on ``free``. A separation model allocates
and frees many such tensors per chunk (the first HT Demucs levels hold 66 MB activations), so
each chunk page-faults about 2.4 GB of zeroed pages in again: measured here, 600,000 minor
faults and 1.1-1.5 s of kernel time per 7.8 s HT Demucs segment on 2 threads, a quarter of the
forward pass. :func:`reuse_freed_memory` turns ``mmap`` off for ``malloc`` (``M_MMAP_MAX = 0``)
and keeps up to 2 GiB of freed memory at the top of the heap (``M_TRIM_THRESHOLD``), so after
the first chunk or two the same pages are reused: 0-30,000 faults per segment.

Peak memory is unchanged (the freed blocks are reused, not added); what changes is that the
process keeps its peak resident until it exits. The command-line tools call it for the commands
that run models; the Python API leaves the process's allocator alone unless the caller opts in.
``DEMUCS_RR_MALLOC=system`` turns it off. Only glibc on Linux; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["reuse_freed_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # mallopt takes a C int


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
