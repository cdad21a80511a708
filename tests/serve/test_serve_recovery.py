"""``demucs-rr serve`` recovers from a full disk and from dead workers: the watcher thread
survives errors of the job database and fails a dead worker's job once it can (removing what
the worker was writing); dead workers
are replaced after a growing delay; a worker that cannot write the database ends with its own
status; uploads are refused with 503 while no worker runs, and with 507 (one JSON line, nothing
left on disk) while the disk is full."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.serve import pool as pool_module
from demucs_rr.serve import upload as upload_module
from demucs_rr.serve.jobs import JOB_ID
from demucs_rr.serve.pool import WorkerPool, death_reason
from demucs_rr.serve.store import JobStore, StoreUnavailable
from demucs_rr.serve.worker import STORE_EXIT, WorkerConfig, run_worker
from demucs_rr.staging import HOST
from tests.helpers.serve import DEADLINE, make_client, make_package, upload, write_song

FULL = StoreUnavailable("no space left on the disk of the job database", disk_full=True)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "frac.safetensors")


def until(condition, what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def running_job(jobs: Path, worker: int) -> str:
    """A job left running by ``worker`` (inserted as such: no worker can claim it first)."""
    JobStore(jobs)
    job_id = "ab" * 16
    with sqlite3.connect(jobs / "jobs.sqlite3") as db:
        db.execute(
            "INSERT INTO jobs (id, name, input, options, state, worker, created) "
            "VALUES (?, 'song.wav', 'input.wav', '{}', 'running', ?, ?)",
            (job_id, worker, time.time()),
        )
    return job_id


@pytest.mark.integration
def test_watcher_outlives_a_full_disk_and_fails_the_dead_workers_job(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "WATCH_INTERVAL", 0.05)
    monkeypatch.setattr(pool_module, "RESPAWN_DELAY", 0.2)
    jobs = tmp_path / "jobs"
    pool = WorkerPool(WorkerConfig(jobs, str(package), "cpu", threads=1), 1)
    pool.start()
    try:
        (victim,) = pool.pids()
        job_id = running_job(jobs, victim)
        stems = jobs / job_id / "stems"  # what the worker was writing when it was killed
        stems.mkdir(parents=True)
        staged = [
            stems / f".vocals.wav.{HOST}-{victim}-0badf00d.{kind}" for kind in ("part", "f32")
        ]
        for path in staged:
            path.write_bytes(b"\0" * 1000)
        calls: list[int] = []
        real = pool.store.fail_worker

        def full_then_real(worker: int, error: str) -> int:
            calls.append(worker)
            if len(calls) <= 3:
                raise FULL
            return real(worker, error)

        monkeypatch.setattr(pool.store, "fail_worker", full_then_real)
        os.kill(victim, signal.SIGKILL)
        until(lambda: JobStore(jobs).get(job_id).state == "failed", "the job was never failed")  # type: ignore[union-attr]
        assert calls == [victim] * 4  # three refusals, then the write that worked
        assert JobStore(jobs).get(job_id).error == death_reason(-9)  # type: ignore[union-attr]
        assert [p for p in staged if p.exists()] == []  # removed with the failure, not at restart
        until(lambda: pool.alive() == 1 and pool.pids() != [victim], "no new worker")
        assert pool._thread is not None and pool._thread.is_alive()
    finally:
        pool.stop()
    assert death_reason(-9) == (
        "the worker process stopped unexpectedly (killed by SIGKILL: out of memory?); "
        "the job was not finished"
    )
    assert "could not write the job database: is the disk full?" in death_reason(STORE_EXIT)


def test_dead_workers_come_back_after_a_growing_delay() -> None:
    slot = pool_module._Slot(proc=None, pipe=None, started=0.0)  # type: ignore[arg-type]
    delays = []
    for failures in range(1, 10):
        slot.failures = failures
        delays.append(slot.delay())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_worker_that_cannot_write_the_database_ends(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    store_claim = JobStore.claim

    def full(self: JobStore, worker: int) -> None:
        raise FULL

    monkeypatch.setattr(JobStore, "claim", full)
    stop = threading.Event()
    with pytest.raises(StoreUnavailable, match="no space left"):
        run_worker(WorkerConfig(jobs, str(package), "cpu", threads=1), stop)
    monkeypatch.setattr(JobStore, "claim", store_claim)


@pytest.mark.integration
def test_uploads_get_503_while_no_worker_runs(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "RESPAWN_DELAY", 3600.0)
    song = write_song(tmp_path / "song.wav")
    with make_client(package, tmp_path / "jobs", workers=1) as client:
        pool = client.app.state.serve.pool  # type: ignore[attr-defined]
        os.kill(pool.pids()[0], signal.SIGKILL)
        until(lambda: pool.alive() == 0, "the worker did not die")
        response = client.post("/api/jobs", files={"file": ("a.wav", song.read_bytes())})
        assert response.status_code == 503
        assert response.json() == {
            "detail": "no worker is running (restarting after a failure); try again in a minute"
        }
        assert client.get("/api/jobs").json()["jobs"] == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (ENOSPC on write)")
def test_a_full_disk_gives_507_and_keeps_nothing(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    song = write_song(tmp_path / "song.wav")
    with make_client(package, jobs, workers=0) as client:
        full_disk = Path("/dev/full")  # every write fails with ENOSPC
        monkeypatch.setattr(upload_module, "_open_part", lambda path: full_disk.open("wb", 0))
        response = client.post("/api/jobs", files={"file": ("a.wav", song.read_bytes())})
        assert response.status_code == 507, response.text
        assert response.json() == {"detail": "no space left on the server's disk; try again later"}
        monkeypatch.undo()
        store = client.app.state.serve.store  # type: ignore[attr-defined]

        def full(job: object) -> None:
            raise FULL

        monkeypatch.setattr(store, "add", full)
        response = client.post("/api/jobs", files={"file": ("a.wav", song.read_bytes())})
        assert response.status_code == 507
        monkeypatch.undo()
        assert [p for p in jobs.iterdir() if JOB_ID.fullmatch(p.name)] == []  # no job folder
        assert list((jobs / ".incoming").iterdir()) == []
        job = upload(client, song)  # space is back: uploads work again
        assert job["state"] == "queued"
