"""Server-sent events: one reader of the job store for every stream, the whole list once per
stream, then only what changed; a cap on streams per client address; and 100 open streams
add less than 50 ms to a request (``tools/bench_serve_events.py``, run here)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.serve import events
from demucs_rr.serve.events import MAX_STREAMS_PER_CLIENT, JobFeed
from demucs_rr.serve.store import Job, JobStore
from demucs_rr.serve.upload import HTTPProblem

REPO = Path(__file__).resolve().parents[2]


def add(store: JobStore, number: int) -> str:
    job_id = f"{number:032x}"
    store.add(Job(job_id, f"song {number}.wav", "input.wav", {"model": "m"}, created=number))
    return job_id


def test_a_stream_gets_the_list_once_then_only_the_changes(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    ids = [add(store, n) for n in range(1, 101)]

    async def scenario() -> None:
        feed = JobFeed(store)
        jobs, queue = await feed.subscribe("127.0.0.1")
        assert [j["id"] for j in jobs] == ids  # the snapshot, oldest first
        await feed.poll()
        assert queue.empty()  # nothing changed: nothing sent
        claimed = store.claim(worker=42)
        assert claimed is not None and claimed.id == ids[0]
        store.set_progress(ids[0], 0.5)
        store.delete(ids[1])
        new = add(store, 999)
        await feed.poll()
        changed, deleted, text = queue.get_nowait()
        assert sorted(j["id"] for j in changed) == sorted([ids[0], new])
        assert deleted == [ids[1]]
        assert json.loads(text) == {"jobs": changed, "deleted": deleted}
        assert len(text) < 2000  # two jobs, not a hundred
        assert next(j for j in changed if j["id"] == ids[0])["progress"] == 0.5
        assert queue.empty()
        feed.unsubscribe("127.0.0.1", queue)
        feed.close()

    asyncio.run(scenario())


def test_streams_per_client_are_capped(tmp_path: Path) -> None:
    feed = JobFeed(JobStore(tmp_path))

    async def scenario() -> None:
        queues = []
        for _ in range(MAX_STREAMS_PER_CLIENT):
            feed.admit("10.0.0.1")
            queues.append((await feed.subscribe("10.0.0.1"))[1])
        with pytest.raises(HTTPProblem) as refused:
            feed.admit("10.0.0.1")
        assert refused.value.status == 429
        feed.admit("10.0.0.2")  # another client still may
        feed.unsubscribe("10.0.0.1", queues.pop())
        feed.admit("10.0.0.1")  # one closed: one more allowed
        feed.close()

    asyncio.run(scenario())


def test_a_stalled_stream_is_ended_not_buffered(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(events, "QUEUE_SIZE", 3)
    store = JobStore(tmp_path)
    job_id = add(store, 1)
    store.claim(worker=1)

    async def scenario() -> None:
        feed = JobFeed(store)
        _, queue = await feed.subscribe("x")
        for step in range(10):  # never read
            store.set_progress(job_id, step / 10)
            await feed.poll()
        items = [queue.get_nowait() for _ in range(queue.qsize())]
        assert items[-1] is None and len(items) == 3  # ended; memory stays bounded
        feed.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_100_open_streams_add_less_than_50_ms_to_a_request(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "tools" / "bench_serve_events.py"), "--streams", "100"]
    cmd += ["--requests", "40", "--interval", "0.02", "--settle", "0.5", "--out", str(out)]
    started = time.monotonic()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["streams_closed_early"] == 0 and result["stream_bytes"] > 100 * 100_000
    assert result["added_ms"] < 50, out.read_text()
    assert time.monotonic() - started < 120


def test_a_stream_opening_while_the_server_stops_ends_at_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    add(store, 1)

    async def scenario() -> None:
        feed = JobFeed(store)
        opening = asyncio.ensure_future(feed.subscribe("x"))
        await asyncio.sleep(0)  # it is reading the jobs
        feed.close()  # the shutdown begins meanwhile
        jobs, queue = await opening
        assert await asyncio.wait_for(queue.get(), 1.0) is None  # ended, not left open

    asyncio.run(scenario())
