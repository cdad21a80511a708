"""The ASGI app of ``demucs-rr serve``: the page, the REST API and server-sent progress events.

Build it with :func:`create_app`; the worker processes start and stop with the app's lifespan.
Every error reaches the client as JSON ``{"detail": "<one line>"}``, never as a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from demucs_rr import __version__
from demucs_rr.errors import DemucsRRError, one_line
from demucs_rr.hub.identity import model_identity
from demucs_rr.serve import files
from demucs_rr.serve.config import ServeConfig
from demucs_rr.serve.jobs import (
    FORMATS,
    JOB_ID,
    MAX_SHIFTS,
    UPLOAD_FORM,
    JobOptions,
    display_name,
    input_extension,
    job_dir,
    model_label,
    new_job_id,
)
from demucs_rr.serve.pool import WorkerPool
from demucs_rr.serve.store import TERMINAL, Job, JobStore, StoreUnavailable
from demucs_rr.serve.upload import HTTPProblem, receive_upload
from demucs_rr.staging import is_disk_full

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "demucs_rr_token"
EVENT_INTERVAL = 0.25
STREAM_SECONDS = 60.0
"""A server-sent event stream ends after this long; browsers reconnect on their own."""


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


class _State:
    """What the routes share: config, store, workers and the server's facts."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.pool = WorkerPool(config.worker_config(), config.workers)
        self.info = files.server_info(config, __version__)

    def model_identity(self, label: str) -> str | None:
        """Identity of the model a job for ``label`` gets now (None: it cannot be read; the
        worker will report why)."""
        name = self.config.model if label == model_label(self.config.model) else label
        try:
            return model_identity(name, self.config.repo)
        except (DemucsRRError, OSError):
            return None

    def job(self, job_id: str) -> Job:
        """The job with this id; 404 when there is none."""
        job = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPProblem(404, f"no job {job_id[:40]!r} (deleted, or never existed)")
        return job


def _authorized(request: Request, token: str | None) -> bool:
    """Whether the request carries the server's token (always, when there is none)."""
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
    return hmac.compare_digest((given or "").encode(), token.encode())


def _guard(config: ServeConfig) -> Callable[[Request, Any], Awaitable[Response]]:
    """Middleware: Host allow-list, same-origin writes, and the token on ``/api``."""

    async def guard(request: Request, call_next: Any) -> Response:
        host = request.headers.get("host", "")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if config.allowed_hosts is not None and hostname not in config.allowed_hosts:
            return JSONResponse({"detail": f"host {host!r} is not served here"}, 400)
        origin = request.headers.get("origin")
        cross = origin not in (None, "null") and origin.split("://", 1)[-1] != host
        if request.method not in ("GET", "HEAD") and cross:
            return JSONResponse({"detail": "cross-origin requests are refused"}, 403)
        if request.url.path.startswith("/api/") and not _authorized(request, config.token):
            detail = "missing or wrong token: send 'Authorization: Bearer TOKEN'"
            return JSONResponse({"detail": detail}, 401)
        response: Response = await call_next(request)
        return response

    return guard


def _problem(exc: Exception, jobs_dir: Path) -> tuple[int, str]:
    """HTTP status and one-line detail of an exception a route raised (no server path)."""
    if isinstance(exc, HTTPProblem):
        return exc.status, str(exc)
    if isinstance(exc, ClientDisconnect):
        logger.info("a client went away before its upload was complete")
        return 400, "the upload was interrupted"
    if isinstance(exc, StoreUnavailable) and not exc.disk_full:
        logger.warning("%s", exc)
        return 503, "the job database cannot be used now (see the server log); try again later"
    if isinstance(exc, StoreUnavailable) or is_disk_full(exc, jobs_dir):
        logger.warning("no space left on the disk of %s", jobs_dir)
        return 507, "no space left on the server's disk; try again later"
    if isinstance(exc, DemucsRRError):
        return 400, str(exc)
    if isinstance(exc, OSError):
        logger.error("%s", one_line(exc, typed=True))
    return 500, f"internal error: {type(exc).__name__} (see the log)"  # uvicorn logs the rest


def _add_error_handlers(app: FastAPI, jobs_dir: Path) -> None:
    async def problem(_: Request, exc: Exception) -> Response:
        status, detail = _problem(exc, jobs_dir)
        return JSONResponse({"detail": detail}, status)

    async def invalid(_: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"bad request: {where}: {first.get('msg', exc)}"}, 422)

    # these classes are handled where they are raised; ``Exception`` (anything else) is answered
    # with 500, then re-raised by Starlette so that uvicorn logs its traceback once
    for kind in (DemucsRRError, OSError, ClientDisconnect):
        app.add_exception_handler(kind, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, problem)


async def _event_stream(
    request: Request, snapshot: Callable[[], Any], done: Callable[[Any], bool]
) -> AsyncIterator[str]:
    """Server-sent events: ``snapshot()`` as JSON whenever it changes, until ``done`` or timeout."""
    yield "retry: 1000\n\n"
    last, ping = "", time.monotonic()
    deadline = time.monotonic() + STREAM_SECONDS
    while time.monotonic() < deadline and not await request.is_disconnected():
        data = await run_in_threadpool(snapshot)
        text = json.dumps(data)
        if text != last:
            last, ping = text, time.monotonic()
            yield f"data: {text}\n\n"
        elif time.monotonic() - ping > 15:
            ping = time.monotonic()
            yield ": ping\n\n"
        if done(data):
            return
        await asyncio.sleep(EVENT_INTERVAL)


def _sse(stream: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def _add_job_routes(app: FastAPI, state: _State) -> None:
    @app.post(
        "/api/jobs",
        status_code=201,
        summary="Upload a song and queue a separation job",
        openapi_extra={"requestBody": UPLOAD_FORM},
    )
    async def create_job(request: Request) -> dict[str, Any]:
        root = state.config.jobs_dir
        if not state.pool.can_run():
            raise HTTPProblem(
                503, "no worker is running (restarting after a failure); try again in a minute"
            )
        limit = int(state.config.max_upload_mb * 2**20)
        upload = await receive_upload(request, root / ".incoming", limit)
        assert upload.path is not None
        folder: Path | None = None
        try:
            options = JobOptions.from_form(upload.fields, state.info["models"])
            job_id = new_job_id()
            folder = job_dir(root, job_id)
            folder.mkdir()
            stored = f"input.{input_extension(upload.head, upload.filename)}"
            upload.path.replace(folder / stored)
            job = Job(job_id, display_name(upload.filename), stored, options.to_json())
            job.model_id = await run_in_threadpool(state.model_identity, options.model)
            added = await run_in_threadpool(state.store.add, job)
        except BaseException:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            upload.path.unlink(missing_ok=True)
        return job_json(added)

    @app.get("/api/jobs", summary="List every job, oldest first")
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


def _add_event_routes(app: FastAPI, state: _State) -> None:
    @app.get("/api/jobs/{job_id}/events", summary="Progress of a job as server-sent events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        state.job(job_id)

        def snapshot() -> dict[str, Any]:
            job = state.store.get(job_id)
            return job_json(job) if job else {"id": job_id, "state": "deleted"}

        def done(data: dict[str, Any]) -> bool:
            return data["state"] in (*TERMINAL, "deleted")

        return _sse(_event_stream(request, snapshot, done))

    @app.get("/api/events", summary="Every job as server-sent events (the page's queue)")
    async def all_events(request: Request) -> StreamingResponse:
        def snapshot() -> list[dict[str, Any]]:
            return [job_json(j) for j in state.store.jobs()]

        return _sse(_event_stream(request, snapshot, lambda _: False))


def create_app(config: ServeConfig) -> FastAPI:
    """The app; its lifespan re-queues interrupted jobs and runs the worker processes."""
    state = _State(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        requeued = state.store.requeue_running()
        if requeued:
            logger.warning("%d interrupted job(s) put back in the queue", requeued)
        state.pool.start()
        try:
            yield
        finally:
            await run_in_threadpool(state.pool.stop)

    app = FastAPI(
        title="demucs_rr",
        version=__version__,
        description="Music source separation jobs: upload a song, follow it, fetch its stems.",
        lifespan=lifespan,
        docs_url=None,  # /docs below is served locally; FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.middleware("http")(_guard(config))
    _add_error_handlers(app, config.jobs_dir)

    @app.get("/", include_in_schema=False)
    def index(token: str | None = None) -> Response:
        if token and config.token and hmac.compare_digest(token.encode(), config.token.encode()):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/api/info", summary="Server facts: version, model, device, options")
    def info() -> dict[str, Any]:
        facts = files.loaded_model_facts(config)
        alive = state.pool.alive()
        return {**state.info, **facts, "workers_alive": alive, "formats": list(FORMATS)}

    _add_job_routes(app, state)
    _add_event_routes(app, state)
    files.add_file_routes(app, state.job, config.jobs_dir)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.serve = state
    return app


__all__ = ["MAX_SHIFTS", "ServeConfig", "create_app", "job_json"]
