"""Settings of a ``demucs-rr serve`` server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from demucs_rr.separate.options import ApplyOptions
from demucs_rr.serve.limits import Limits
from demucs_rr.serve.worker import WorkerConfig

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """Settings of a server.

    Attributes:
        jobs_dir: folder of the job database and the job folders.
        model: the default model (pretrained name or model file).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        repo: folder searched first for model files.
        workers: worker processes (0: jobs are queued, none runs).
        threads: torch CPU threads per worker (None: torch's default).
        engine: how workers apply models (segment, overlap, batch, precision); each job
            chooses its shifts.
        max_upload_mb: largest accepted upload in MiB.
        token: required on every API request when set (``Authorization: Bearer`` or cookie).
        allowed_hosts: accepted ``Host`` header names (None: any), against DNS rebinding.
        limits: audio length, queue, disk quota and expiry (:mod:`demucs_rr.serve.limits`).
    """

    jobs_dir: Path
    model: str
    device: str = "auto"
    repo: str | None = None
    workers: int = 1
    threads: int | None = None
    engine: ApplyOptions = field(default_factory=ApplyOptions)
    max_upload_mb: float = 500.0
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)

    def worker_config(self) -> WorkerConfig:
        """What each worker process needs."""
        minutes = self.limits.max_audio_minutes
        return WorkerConfig(
            self.jobs_dir,
            self.model,
            self.device,
            self.repo,
            self.threads,
            self.engine,
            max_seconds=None if minutes is None else minutes * 60,
        )
