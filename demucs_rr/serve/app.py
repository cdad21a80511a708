"""The ASGI app of ``demucs-rr serve``: the page, the REST API and server-sent progress events.

Build it with :func:`create_app`; the worker processes start and stop with the app's lifespan.
Every error reaches the client as JSON ``{"detail": "<one line>"}``, never as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from demucs_rr import __version__
from demucs_rr.audio.options import FORMATS
from demucs_rr.errors import DemucsRRError, one_line
from demucs_rr.serve import job_files
from demucs_rr.serve.config import ServeConfig
from demucs_rr.serve.events import JobFeed, add_event_routes
from demucs_rr.serve.jobs import MAX_SHIFTS
from demucs_rr.serve.routes import add_job_routes
from demucs_rr.serve.security import COOKIE, guard, same_token
from demucs_rr.serve.state import ServeState, job_json
from demucs_rr.serve.store import StoreUnavailable
from demucs_rr.serve.upload import HTTPProblem
from demucs_rr.staging import is_disk_full

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
EXPIRE_INTERVAL = 300.0
"""Seconds between two looks for expired jobs."""


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


async def _expire(state: ServeState) -> None:
    """Delete expired jobs (a failure is logged in one line: the next round tries again)."""
    try:
        await run_in_threadpool(state.housekeeping.expire)
    except Exception as exc:  # a full disk, a locked database
        logger.warning("cannot delete expired jobs: %s", one_line(exc, typed=True))


async def _expire_forever(state: ServeState) -> None:
    """Delete expired jobs every :data:`EXPIRE_INTERVAL` seconds."""
    while True:
        await asyncio.sleep(EXPIRE_INTERVAL)
        await _expire(state)


def _add_page_routes(app: FastAPI, state: ServeState) -> None:
    """The page, the API list and ``/api/info``."""
    config = state.config

    @app.get("/", include_in_schema=False)
    def index(token: str | None = None) -> Response:
        if token and config.token and same_token(token, config.token):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/api/info", summary="Server facts: version, model, device, options")
    def info() -> dict[str, Any]:
        facts = job_files.loaded_model_facts(config)
        alive = state.pool.alive()
        limits = asdict(config.limits)
        return {**state.info, **facts, **limits, "workers_alive": alive, "formats": list(FORMATS)}


def create_app(config: ServeConfig) -> FastAPI:
    """The app; its lifespan re-queues interrupted jobs and runs the worker processes."""
    state = ServeState(config)
    feed = JobFeed(state.store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.housekeeping.clean_start()
        requeued = state.store.requeue_running()
        if requeued:
            logger.warning("%d interrupted job(s) put back in the queue", requeued)
        await _expire(state)
        state.pool.start()
        tasks = [asyncio.create_task(_expire_forever(state)), asyncio.create_task(feed.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            feed.close()
            await run_in_threadpool(state.pool.stop)

    app = FastAPI(
        title="demucs_rr",
        version=__version__,
        description="Music source separation jobs: upload a song, follow it, fetch its stems.",
        lifespan=lifespan,
        docs_url=None,  # /docs below is served locally; FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.middleware("http")(guard(config))
    _add_error_handlers(app, config.jobs_dir)

    _add_page_routes(app, state)
    add_job_routes(app, state)
    add_event_routes(app, state, feed)
    job_files.add_file_routes(app, state.job, config.jobs_dir)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.serve = state
    app.state.end_streams = feed.close  # called when the server begins to stop
    return app


__all__ = ["MAX_SHIFTS", "ServeConfig", "create_app", "job_json"]
