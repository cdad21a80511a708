"""What ``demucs-rr serve`` says when things go wrong: an aborted upload logs nothing and keeps
nothing; a model download that fails tells the client without the server's paths; a damaged
job database stops the start in one line; unknown stems are refused at upload; ``HEAD`` works
on files; the DiffQ models that never load are not offered."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.cli import main
from demucs_rr.serve.store import Job, JobStore
from demucs_rr.serve.worker import ModelCache, WorkerConfig, _one_line, run_job
from tests.helpers.serve import make_client, make_package, upload, wait, write_song
from tests.helpers.serve_process import free_port, start_server


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return write_song(tmp_path_factory.mktemp("songs") / "song.wav")


@pytest.mark.integration
def test_an_aborted_upload_logs_nothing_and_keeps_nothing(package, tmp_path):
    server = start_server(package, tmp_path / "jobs", 1)
    try:
        server.wait_workers(1)
        banner = server.log.read_text()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = "multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
            sock.sendall(
                b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + head.encode()
            )
            sock.sendall(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"')
            sock.sendall(b"\r\n\r\n" + b"\0" * 200_000)
            time.sleep(0.5)  # the server is reading the body: the client goes away
        time.sleep(1.0)
        assert server.request("GET", "/api/jobs") == (200, {"jobs": []})
        assert list((server.jobs / ".incoming").iterdir()) == []
        assert server.log.read_text() == banner  # not one line
    finally:
        server.stop_with(signal.SIGTERM, False)
        server.kill()


def test_a_failed_model_download_names_no_server_path(package, song, tmp_path, monkeypatch):
    cache = tmp_path / "private-cache"
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(cache))
    monkeypatch.setenv("DEMUCS_RR_REMOTE", f"http://127.0.0.1:{free_port()}/models")  # refused
    jobs = tmp_path / "jobs"
    store = JobStore(jobs)
    options = {"model": "tasnet", "two_stems": None, "stems": None, "format": "wav", "shifts": 0}
    job = store.add(Job("c" * 32, "song.wav", "input.wav", options))
    (jobs / job.id).mkdir()
    (jobs / job.id / "input.wav").write_bytes(song.read_bytes())
    claimed = store.claim(worker=1)
    assert claimed is not None
    run_job(claimed, store, ModelCache(WorkerConfig(jobs, str(package), "cpu")), threading.Event())
    failed = store.get(job.id)
    assert failed is not None and failed.state == "failed"
    assert failed.error == (
        "the model 'tasnet' is not available on this server: it could not be downloaded "
        "(see the server log)"
    )


def test_other_errors_lose_their_server_paths(tmp_path):
    job = Job("d" * 32, "my song.mp3", "input.mp3", {})
    folder = tmp_path / "jobs" / job.id
    message = (
        f"cannot decode {folder / 'input.mp3'}: no model at /srv/private/models/big.th, see "
        "https://example.org/docs/models.html\n(retry)"
    )
    assert _one_line(message, job, folder) == (
        "cannot decode my song.mp3: no model at big.th, see https://example.org/docs/models.html "
        "(retry)"
    )


def test_a_damaged_job_database_stops_the_start_in_one_line(package, tmp_path, capsys):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "jobs.sqlite3").write_bytes(b"this is not a database\n" * 100)
    argv = ["serve", "-n", str(package), "--jobs-dir", str(jobs), "--port", str(free_port())]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: the job database {jobs.resolve() / 'jobs.sqlite3'} cannot be used: file is not a "
        "database; move it away to start with no jobs (their folders are then removed)\n"
    )
    assert main(argv) == 2  # the jobs folder was not left locked
    capsys.readouterr()


def test_unknown_stems_are_refused_at_upload(package, song, tmp_path):
    with make_client(package, tmp_path / "jobs", workers=0) as client:
        for fields in ({"stems": "guitar"}, {"two_stems": "piano"}, {"stems": "bass,flute"}):
            files = {"file": ("a.wav", song.read_bytes())}
            response = client.post("/api/jobs", files=files, data=fields)
            assert response.status_code == 400, fields
            assert response.json()["detail"].startswith("unknown stem '")
            assert response.json()["detail"].endswith(
                "': this model has drums, bass, other, vocals"
            )
        assert upload(client, song, model="htdemucs_6s", stems="guitar")["state"] == "queued"
        assert client.get("/api/jobs").json()["jobs"][0]["options"]["stems"] == ["guitar"]


def test_head_on_files_and_no_diffq_models(package, song, tmp_path):
    with make_client(package, tmp_path / "jobs", workers=1) as client:
        job = wait(client, upload(client, song)["id"])
        for url in (job["stems"][0]["url"], job["stems"][0]["waveform"], job["zip"]):
            got, head = client.get(url), client.head(url)
            assert head.status_code == 200 and head.content == b"", url
            assert head.headers["content-length"] == str(len(got.content))
            assert head.headers["content-type"] == got.headers["content-type"]
        models = client.get("/api/info").json()["models"]
        assert "mdx" in models and "mdx_extra" in models
        assert "mdx_q" not in models and "mdx_extra_q" not in models
        response = client.post(
            "/api/jobs", files={"file": ("a.wav", song.read_bytes())}, data={"model": "mdx_q"}
        )
        assert response.status_code == 400 and "unknown model 'mdx_q'" in response.json()["detail"]


def test_serving_a_diffq_model_is_refused_with_the_reason(tmp_path, capsys):
    argv = ["serve", "-n", "mdx_q", "--jobs-dir", str(tmp_path), "--port", str(free_port())]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: mdx_q is stored in DiffQ's bit-packed format")
        and err.count("\n") == 1
    )
