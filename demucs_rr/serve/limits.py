"""What keeps a ``demucs-rr serve`` left running within bounds: audio length, queue length, disk
quota, expiry of finished jobs, and the cleanup of what killed processes left.

Checks of an upload, in order (each refusal is one JSON line):

1. before the body is read: the queue (429 at ``--max-queued-jobs`` queued jobs) and the disk
   (507 when the jobs folder is at its quota, ``--max-disk-gb``, or the disk is nearly full);
   the body is cut at the space left under the quota;
2. once stored, before the job is queued: its length by header or ``ffprobe`` (413 above
   ``--max-audio-minutes``), and the space it will take at its peak (507 when the folder, plus
   what queued and running jobs will still write, plus this job, would pass the quota or the
   free space). The peak of a job is its stems staged as float32 while they are rescaled,
   beside the 16-bit files: :data:`PEAK_BYTES_PER_SECOND` per stem and second of audio;
3. while a worker decodes it: the length again, as the samples arrive (a header may lie), before
   anything is staged (the job fails in one line).

Finished jobs older than ``--keep-hours`` are deleted with their files every few minutes. At
start, the partial uploads of ``.incoming/``, the staged files of killed workers and the job
folders without a job are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from demucs_rr.audio.io import probe_seconds
from demucs_rr.cli import TEMP_FOLDER
from demucs_rr.serve.jobs import JOB_ID, clean_job_folder, job_dir
from demucs_rr.serve.store import JobStore
from demucs_rr.serve.upload import HTTPProblem
from demucs_rr.staging import clean_stale

__all__ = ["PEAK_BYTES_PER_SECOND", "Housekeeping", "Limits", "folder_bytes"]

logger = logging.getLogger(__name__)

PEAK_BYTES_PER_SECOND = 44100 * 2 * (4 + 2)
"""Bytes one stem of one second of stereo 44.1 kHz audio takes at its peak: float32 staging and
the 16-bit file."""
FREE_MARGIN = 256 * 2**20
"""Bytes of the disk an upload must leave free (the database, logs, other programs)."""
GB = 1e9


@dataclass(frozen=True)
class Limits:
    """A server's limits; None: no limit.

    Attributes:
        max_audio_minutes: longest accepted audio.
        max_queued_jobs: queued jobs beyond which uploads are refused.
        max_disk_gb: quota of the jobs folder, in GB (10^9 bytes).
        keep_hours: finished jobs are deleted this long after they finished.
    """

    max_audio_minutes: float | None = 60.0
    max_queued_jobs: int | None = 50
    max_disk_gb: float | None = 20.0
    keep_hours: float | None = 72.0


def folder_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` hold (symbolic links not followed)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Housekeeping:
    """The checks and cleanups of :mod:`demucs_rr.serve.limits` for one jobs folder."""

    def __init__(self, jobs_dir: Path, store: JobStore, limits: Limits) -> None:
        self.jobs_dir, self.store, self.limits = jobs_dir, store, limits

    # ---------------------------------------------------------------- before the body

    def check_queue(self) -> None:
        """429 when the queue is full."""
        most = self.limits.max_queued_jobs
        if most is not None and self.store.count("queued") >= most:
            raise HTTPProblem(429, f"the queue is full ({most} jobs waiting); try again later")

    def space_left(self) -> int:
        """Bytes the jobs folder may still grow by (quota, free disk, reservations).

        Raises:
            HTTPProblem: 507 when there is none.
        """
        reserved = self.store.reserved()
        free = shutil.disk_usage(self.jobs_dir).free - FREE_MARGIN - reserved
        left = free
        if self.limits.max_disk_gb is not None:
            quota = int(self.limits.max_disk_gb * GB)
            left = min(left, quota - folder_bytes(self.jobs_dir) - reserved)
        if left <= 0:
            raise HTTPProblem(507, self.full_message())
        return left

    def full_message(self) -> str:
        """The 507 detail."""
        quota = self.limits.max_disk_gb
        which = f"the {quota:g} GB quota" if quota is not None else "the disk"
        return f"the server's job storage is full ({which}); delete finished jobs or try later"

    # ---------------------------------------------------------------- once stored

    def check_job(self, path: Path, stems: int, left: int) -> int:
        """Check a stored upload of ``stems`` stems; returns the bytes to reserve for it.

        Args:
            path: the stored upload.
            stems: how many stems the job writes.
            left: :meth:`space_left` before the upload, which already takes it.

        Raises:
            HTTPProblem: 413 too long, 507 its stems would not fit.
        """
        seconds = probe_seconds(path)
        most = self.limits.max_audio_minutes
        if most is not None and seconds is not None and seconds > most * 60:
            raise HTTPProblem(
                413,
                f"the audio lasts {seconds / 60:.1f} minutes, more than this server's limit "
                f"of {most:g} minutes",
            )
        reserve = int((seconds or 0.0) * PEAK_BYTES_PER_SECOND * max(1, stems))
        if reserve > left - path.stat().st_size:
            raise HTTPProblem(507, self.full_message())
        return reserve

    # ---------------------------------------------------------------- expiry and cleanup

    def expire(self) -> int:
        """Delete the finished jobs older than ``keep_hours`` with their files; how many."""
        if self.limits.keep_hours is None:
            return 0
        cutoff = time.time() - self.limits.keep_hours * 3600
        gone = 0
        for job_id in self.store.finished_before(cutoff):
            if self.store.delete(job_id):
                shutil.rmtree(job_dir(self.jobs_dir, job_id), ignore_errors=True)
                gone += 1
        if gone:
            logger.info(
                "deleted %d finished job(s) older than %g hours", gone, self.limits.keep_hours
            )
        return gone

    def clean_start(self) -> None:
        """Remove what killed processes left: partial uploads, temporary files, staged files of
        dead workers, job folders without a job (a server killed while it created one)."""
        incoming = self.jobs_dir / ".incoming"
        if incoming.is_dir():
            for entry in incoming.iterdir():
                with contextlib.suppress(OSError):
                    entry.unlink()
        temp = self.jobs_dir / TEMP_FOLDER  # the temporary files of killed servers
        if temp.is_dir():
            for entry in temp.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
        clean_stale(self.jobs_dir)
        known = set(self.store.ids())
        for entry in self.jobs_dir.iterdir():
            if not (JOB_ID.fullmatch(entry.name) and entry.is_dir()):
                continue
            if entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)
            else:
                clean_job_folder(entry)
