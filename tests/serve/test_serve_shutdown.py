"""Every way ``demucs-rr serve`` is stopped ends within a bounded time, with exit status 130
(SIGINT) or 143 (SIGTERM), leaves no process behind and releases its jobs folder, whatever its
workers are doing: idle, dead (killed with SIGKILL), busy with a job (which goes back to the
queue) or stuck (stopped with SIGSTOP: it answers nothing but SIGKILL), with an event stream
open (it ends with the shutdown, without a traceback). The signal goes to the
server alone (``kill``) or to its whole process group (Ctrl-C in a terminal, ``timeout``,
systemd). And SIGKILL of the server leaves no worker or forkserver running."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.serve.store import JobStore
from tests.helpers.serve import make_package, write_song
from tests.helpers.serve_process import Server, start_server, wait_gone

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

STOP_BOUND = 15.0
"""Seconds a stop may take: uvicorn's 3 s for open connections, the pool's 5 s wait for its
workers and 2 x 2 s after SIGTERM and SIGKILL, plus start-up noise."""
STATES = {"dead": ("dead",), "all": ("dead", "busy", "stuck", "idle")}
"""Worker sets: one dead worker (the case that hung), and one worker of each kind at once."""
STOPS = {
    "SIGINT-server": (signal.SIGINT, False),
    "SIGTERM-server": (signal.SIGTERM, False),
    "SIGINT-group": (signal.SIGINT, True),
    "SIGTERM-group": (signal.SIGTERM, True),
}


@pytest.fixture(scope="module")
def slow_package(tmp_path_factory) -> Path:
    """A model that needs ~1 s per 10 s of audio (64-sample chunks)."""
    return make_package(tmp_path_factory.mktemp("models") / "slow.safetensors", segment_length=64)


@pytest.fixture(scope="module")
def long_song(tmp_path_factory) -> Path:
    return write_song(tmp_path_factory.mktemp("songs") / "long.wav", seconds=30.0)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def start(package: Path, workers: int, jobs: str = "jobs") -> Server:
        server = start_server(package, tmp_path / jobs, workers)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None or any(os.path.exists(f"/proc/{p}") for p in server.known):
            server.kill()


def run_busy_job(server: Server, song: Path) -> str:
    """Upload a long job and wait until a worker runs it; returns its id."""
    status, job = server.upload(song, shifts="10")
    assert status == 201, job
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = server.request("GET", f"/api/jobs/{job['id']}")[1]
        if state["state"] == "running" and state["progress"] > 0.05:
            return str(job["id"])
        time.sleep(0.05)
    raise AssertionError(f"the job did not start: {state}")


def worker_of(server: Server, job_id: str) -> int:
    job = JobStore(server.jobs).get(job_id)
    assert job is not None and job.worker is not None
    return job.worker


def lock_is_free(jobs: Path) -> bool:
    with open(jobs / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


def _cases() -> list[object]:
    """Every worker set with every stop. With all four kinds of worker a stop takes its full
    bound (the stuck worker is waited for, then killed): the default run keeps that set for one
    stop of each signal and each target, the other two run with ``-m slow``."""
    slow = {("all", "SIGINT-server"), ("all", "SIGTERM-group")}
    return [
        pytest.param(states, stop, marks=[pytest.mark.slow] if (states, stop) in slow else [])
        for states in STATES
        for stop in STOPS
    ]


@pytest.mark.parametrize(("states", "stop"), _cases())
def test_every_stop_ends_in_bounded_time(
    server_factory, slow_package: Path, long_song: Path, stop: str, states: str
) -> None:
    kinds = STATES[states]
    server = server_factory(slow_package, len(kinds))
    workers = server.wait_workers(len(kinds))
    busy: list[str] = []
    for kind in kinds:  # busy workers first: the queue gives the job to any idle worker
        if kind in ("busy", "stuck"):
            busy.append(run_busy_job(server, long_song))
            if kind == "stuck":
                os.kill(worker_of(server, busy[-1]), signal.SIGSTOP)
    taken = {worker_of(server, job_id) for job_id in busy}
    free = [p for p in workers if p not in taken]
    time.sleep(1.5)  # idle workers are now waiting for work: killed there, they hung the stop
    for pid in free[: kinds.count("dead")]:
        os.kill(pid, signal.SIGKILL)
    assert wait_gone(set(free[: kinds.count("dead")]), 2.0) == set()
    stream = socket.create_connection(("127.0.0.1", server.port))  # a page left open
    stream.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert stream.recv(100).startswith(b"HTTP/1.1 200")
    signum, group = STOPS[stop]
    code, took = server.stop_with(signum, group)
    stream.close()
    assert code == (130 if signum == signal.SIGINT else 143), server.log.read_text()
    assert took < STOP_BOUND, f"stopping took {took:.1f} s"
    assert wait_gone(server.known, 5.0) == set(), "processes left behind"
    assert lock_is_free(server.jobs)
    store = JobStore(server.jobs)
    jobs = [store.get(job_id) for job_id in busy]
    states = [(job.state, job.error) for job in jobs if job is not None]
    assert states == [("queued", None)] * len(busy), (states, server.log.read_text()[-3000:])
    log = server.log.read_text()
    assert "Traceback" not in log, log


def test_sigkill_of_the_server_leaves_no_process(
    server_factory, slow_package: Path, long_song: Path
) -> None:
    server = server_factory(slow_package, 2)
    server.wait_workers(2)
    job_id = run_busy_job(server, long_song)
    assert len(server.tree()) >= 3  # resource tracker, forkserver, workers
    server.proc.kill()
    server.proc.wait(5)
    assert wait_gone(server.known, 5.0) == set(), "orphans of the killed server still run"
    assert lock_is_free(server.jobs)
    store = JobStore(server.jobs)
    assert store.get(job_id).state == "running"  # type: ignore[union-attr]  # until the next start
    left = [p.name for p in (server.jobs / ".tmp").iterdir()]  # emptied by the next start
    assert [name[:5] for name in left] == ["pymp-"]  # not in the system's temporary folder
