"""Server-sent events of ``demucs-rr serve``: one reader of the job store for every stream, and
only what changed on the wire.

A single :class:`JobFeed` task looks at the database every :data:`INTERVAL` seconds while any
stream is open (a look at an unchanged database is one SQLite statement), turns the jobs that
changed into one JSON text and hands that same text to every stream. A stream starts with the
whole list (event ``snapshot``), then gets ``change`` events: ``{"jobs": [changed jobs],
"deleted": [ids]}``. The cost of a stream is therefore a queue and a socket write per change,
whatever the number of jobs; one client address may hold :data:`MAX_STREAMS_PER_CLIENT` streams
at once and the server :data:`MAX_STREAMS` (429 beyond). A stream ends after
:data:`STREAM_SECONDS` (browsers reconnect by themselves) or when it falls
:data:`QUEUE_SIZE` changes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from demucs_rr.errors import one_line
from demucs_rr.serve.state import ServeState, job_json
from demucs_rr.serve.store import TERMINAL, Job, JobStore
from demucs_rr.serve.upload import HTTPProblem

__all__ = ["MAX_STREAMS", "MAX_STREAMS_PER_CLIENT", "JobFeed", "add_event_routes"]

logger = logging.getLogger(__name__)

INTERVAL = 0.25
"""Seconds between two looks at the job database while streams are open."""
STREAM_SECONDS = 300.0
PING_SECONDS = 15.0
QUEUE_SIZE = 256
MAX_STREAMS_PER_CLIENT = 10
MAX_STREAMS = 200

_Change = tuple[list[dict[str, Any]], list[str], str]  # changed jobs, deleted ids, event text


class JobFeed:
    """The jobs as last read, and the queues of the open streams.

    Args:
        store: the job store.
    """

    def __init__(self, store: JobStore) -> None:
        self._reader = store.changes()
        self._rows: dict[str, tuple[Any, ...]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queues: set[asyncio.Queue[_Change | None]] = set()
        self._clients: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self._closed = False

    def _diff(self) -> _Change | None:
        """Read the jobs if the database changed; what changed since the last read."""
        rows = self._reader.read()
        if rows is None:
            return None
        fresh = {row[0]: row for row in rows}
        changed = [job_id for job_id, row in fresh.items() if self._rows.get(job_id) != row]
        deleted = [job_id for job_id in self._rows if job_id not in fresh]
        self._rows = fresh
        for job_id in deleted:
            self._jobs.pop(job_id, None)
        jobs = []
        for job_id in changed:
            self._jobs[job_id] = job_json(Job.from_row(fresh[job_id]))
            jobs.append(self._jobs[job_id])
        if not changed and not deleted:
            return None
        return jobs, deleted, json.dumps({"jobs": jobs, "deleted": deleted})

    async def poll(self) -> None:
        """Read once and hand what changed to every stream."""
        async with self._lock:
            change = await run_in_threadpool(self._diff)
            if change is None:
                return
            for queue in list(self._queues):
                try:
                    queue.put_nowait(change)
                except asyncio.QueueFull:  # a stalled client: end its stream, it reconnects
                    self._queues.discard(queue)
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.get_nowait()
                        queue.put_nowait(None)

    async def run(self) -> None:
        """Poll while streams are open, until cancelled."""
        while True:
            if self._queues:
                try:
                    await self.poll()
                except Exception as exc:  # a locked or full database: next round
                    logger.warning("event feed: %s", one_line(exc, typed=True))
            await asyncio.sleep(INTERVAL)

    def admit(self, client: str) -> None:
        """Check that ``client`` may open one more stream.

        Raises:
            HTTPProblem: 429, too many streams from this client or in all.
        """
        if self._clients[client] >= MAX_STREAMS_PER_CLIENT:
            raise HTTPProblem(
                429,
                f"too many open event streams from one address (at most "
                f"{MAX_STREAMS_PER_CLIENT}); close some",
            )
        if len(self._queues) >= MAX_STREAMS:
            raise HTTPProblem(429, f"too many open event streams (at most {MAX_STREAMS})")

    async def subscribe(
        self, client: str
    ) -> tuple[list[dict[str, Any]], asyncio.Queue[_Change | None]]:
        """Open a stream for ``client``: the current jobs (oldest first) and the queue of the
        changes that follow (ended at once when the feed is closed)."""
        queue: asyncio.Queue[_Change | None] = asyncio.Queue(QUEUE_SIZE)
        if not self._closed:
            await self.poll()  # the list is current: later changes come through the queue
        if self._closed:  # also when it closed while this stream waited for the poll
            queue.put_nowait(None)
            return [], queue
        self._queues.add(queue)
        self._clients[client] += 1
        return list(self._jobs.values()), queue

    def unsubscribe(self, client: str, queue: asyncio.Queue[_Change | None]) -> None:
        """Close a stream."""
        self._queues.discard(queue)
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    def close(self) -> None:
        """End every stream and refuse new ones (the server stops: the streams must not keep
        its graceful shutdown waiting)."""
        self._closed = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()
        self._reader.close()


async def _changes(queue: asyncio.Queue[_Change | None]) -> AsyncIterator[_Change | None]:
    """The changes of a stream, None for a ping, until the stream's time is up or it ends."""
    deadline = time.monotonic() + STREAM_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        try:
            change = await asyncio.wait_for(queue.get(), min(PING_SECONDS, left))
        except asyncio.TimeoutError:
            yield None
            continue
        if change is None:
            return
        yield change


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _sse(stream: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _all_jobs(feed: JobFeed, client: str) -> AsyncIterator[str]:
    """The body of ``/api/events``: a ``snapshot`` event, then ``change`` events."""
    jobs, queue = await feed.subscribe(client)  # here: a stream never run holds none
    try:
        yield "retry: 1000\n\n" + _event("snapshot", {"jobs": jobs})
        async for change in _changes(queue):
            yield ": ping\n\n" if change is None else f"event: change\ndata: {change[2]}\n\n"
    finally:
        feed.unsubscribe(client, queue)


async def _one_job(feed: JobFeed, client: str, job_id: str) -> AsyncIterator[str]:
    """The body of ``/api/jobs/{id}/events``: the job whenever it changes, until it ends."""
    jobs, queue = await feed.subscribe(client)
    gone = {"id": job_id, "state": "deleted"}
    current = next((j for j in jobs if j["id"] == job_id), gone)
    try:
        yield f"retry: 1000\n\ndata: {json.dumps(current)}\n\n"
        if current["state"] in (*TERMINAL, "deleted"):
            return
        async for change in _changes(queue):
            if change is None:
                yield ": ping\n\n"
                continue
            changed, deleted, _ = change
            job = (
                gone if job_id in deleted else next((j for j in changed if j["id"] == job_id), None)
            )
            if job is not None:
                yield f"data: {json.dumps(job)}\n\n"
                if job["state"] in (*TERMINAL, "deleted"):
                    return
    finally:
        feed.unsubscribe(client, queue)


def add_event_routes(app: FastAPI, state: ServeState, feed: JobFeed) -> None:
    """``GET /api/events`` (every job) and ``GET /api/jobs/{id}/events`` (one job)."""

    def admitted(request: Request) -> str:
        client = request.client.host if request.client else "?"
        feed.admit(client)
        return client

    @app.get("/api/events", summary="Every job, then their changes, as server-sent events")
    async def all_events(request: Request) -> StreamingResponse:
        return _sse(_all_jobs(feed, admitted(request)))

    @app.get("/api/jobs/{job_id}/events", summary="Progress of a job as server-sent events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        state.job(job_id)
        return _sse(_one_job(feed, admitted(request), job_id))
