"""What the routes of ``demucs-rr serve`` share: settings, job store, workers, limits, facts."""

from __future__ import annotations

from typing import Any

from demucs_rr import __version__
from demucs_rr.errors import DemucsRRError
from demucs_rr.hub.identity import model_identity
from demucs_rr.serve import job_files
from demucs_rr.serve.config import ServeConfig
from demucs_rr.serve.jobs import JOB_ID, model_label
from demucs_rr.serve.limits import Housekeeping
from demucs_rr.serve.pool import WorkerPool
from demucs_rr.serve.store import Job, JobStore
from demucs_rr.serve.upload import HTTPProblem

__all__ = ["ServeState", "job_json"]


def job_json(job: Job) -> dict[str, Any]:
    """The API view of a job (file URLs instead of paths)."""
    base = f"/api/jobs/{job.id}"
    data: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "progress": round(job.progress, 4),
        "error": job.error,
        "options": job.options,
        "device": job.device,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "url": base,
        "stems": [],
    }
    if job.state == "done":
        data["stems"] = [
            {
                "name": s["name"],
                "url": f"{base}/stems/{s['name']}",
                "download": f"{base}/stems/{s['name']}?download=1",
                "waveform": f"{base}/stems/{s['name']}/waveform.png",
            }
            for s in job.stems
        ]
        data["zip"] = f"{base}/zip"
    return data


class ServeState:
    """The server's shared objects.

    Raises:
        StoreUnavailable: the job database cannot be opened (one line).
        ConfigError: the device is unknown or not available.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.pool = WorkerPool(config.worker_config(), config.workers)
        self.housekeeping = Housekeeping(config.jobs_dir, self.store, config.limits)
        self.info = job_files.server_info(config, __version__)

    def model_name(self, label: str) -> str:
        """The name to load for a model label (the server model's label: its file)."""
        return self.config.model if label == model_label(self.config.model) else label

    def model_identity(self, label: str) -> str | None:
        """Identity of the model a job for ``label`` gets now (None: it cannot be read; the
        worker will report why)."""
        try:
            return model_identity(self.model_name(label), self.config.repo)
        except (DemucsRRError, OSError):
            return None

    def sources(self, label: str) -> list[str] | None:
        """Stem names of a model offered by this server (without loading it); None when they
        cannot be told before a worker loads it."""
        if label == model_label(self.config.model):
            loaded = job_files.loaded_model_facts(self.config).get("sources")
            if loaded:
                return list(loaded)
        return job_files.known_sources(self.model_name(label), self.config.repo)

    def job(self, job_id: str) -> Job:
        """The job with this id; 404 when there is none."""
        job = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPProblem(404, f"no job {job_id[:40]!r} (deleted, or never existed)")
        return job
