"""The job routes of ``demucs-rr serve``: upload (with every limit checked), list, get, delete."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from demucs_rr.separate.outputs import select_stems
from demucs_rr.serve.jobs import (
    UPLOAD_FORM,
    JobOptions,
    display_name,
    input_extension,
    job_dir,
    new_job_id,
)
from demucs_rr.serve.state import ServeState, job_json
from demucs_rr.serve.store import Job
from demucs_rr.serve.upload import HTTPProblem, Upload, receive_upload
from demucs_rr.sources import MUSDB_SOURCES

__all__ = ["add_job_routes"]


async def _receive(request: Request, state: ServeState) -> tuple[Upload, int]:
    """Check the workers, the queue and the space, then receive the upload; returns it with the
    space that was left before it."""
    if not state.pool.can_run():
        raise HTTPProblem(
            503, "no worker is running (restarting after a failure); try again in a minute"
        )
    keeping = state.housekeeping
    await run_in_threadpool(keeping.check_queue)
    left = await run_in_threadpool(keeping.space_left)
    most = int(state.config.max_upload_mb * 2**20)
    try:
        upload = await receive_upload(request, state.config.jobs_dir / ".incoming", min(most, left))
    except HTTPProblem as exc:
        if exc.status == 413 and left < most:  # cut at the space left, not at the size limit
            raise HTTPProblem(507, keeping.full_message()) from None
        raise
    return upload, left


def _stem_count(options: JobOptions, sources: list[str] | None) -> int:
    """How many stems the job writes; stems the model does not have are refused (the check of
    ``separate``) when its stems are known before loading it."""
    if sources is None:
        return 2 if options.two_stems else len(options.stems or MUSDB_SOURCES)
    return len(select_stems(sources, options.stems, options.two_stems, "add"))


async def _create(request: Request, state: ServeState) -> Job:
    upload, left = await _receive(request, state)
    assert upload.path is not None
    folder: Path | None = None
    try:
        options = JobOptions.from_form(upload.fields, state.info["models"])
        job_id = new_job_id()
        folder = job_dir(state.config.jobs_dir, job_id)
        folder.mkdir()
        stored = folder / f"input.{input_extension(upload.head, upload.filename)}"
        upload.path.replace(stored)
        job = Job(job_id, display_name(upload.filename), stored.name, options.to_json())
        stems = _stem_count(options, state.sources(options.model))
        job.reserve = await run_in_threadpool(state.housekeeping.check_job, stored, stems, left)
        job.model_id = await run_in_threadpool(state.model_identity, options.model)
        return await run_in_threadpool(state.store.add, job)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        upload.path.unlink(missing_ok=True)


def add_job_routes(app: FastAPI, state: ServeState) -> None:
    """``POST /api/jobs``, ``GET /api/jobs``, ``GET`` and ``DELETE /api/jobs/{id}``."""

    @app.post(
        "/api/jobs",
        status_code=201,
        summary="Upload a song and queue a separation job",
        openapi_extra={"requestBody": UPLOAD_FORM},
    )
    async def create_job(request: Request) -> dict[str, Any]:
        return job_json(await _create(request, state))

    @app.get("/api/jobs", summary="Every job, oldest first")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [job_json(j) for j in state.store.jobs()]}

    @app.get("/api/jobs/{job_id}", summary="State, progress (0-1) and error of a job")
    def get_job(job_id: str) -> dict[str, Any]:
        return job_json(state.job(job_id))

    @app.delete("/api/jobs/{job_id}", status_code=204, summary="Delete a job and its files")
    def delete_job(job_id: str) -> Response:
        job = state.job(job_id)
        state.store.delete(job.id)
        shutil.rmtree(job_dir(state.config.jobs_dir, job.id), ignore_errors=True)
        return Response(status_code=204)
