"""A job runs with the model it was submitted for, or fails saying so: the job records the
model's identity (sha256 of its file) and the worker checks it. A model file replaced under the
same path is loaded again; a worker whose name resolves to another model (a worker of another
server sharing the jobs folder) never gives its stems."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.hub.identity import model_identity
from demucs_rr.serve.store import JobStore
from demucs_rr.serve.worker import WorkerConfig, run_worker
from tests.helpers.serve import DEADLINE, make_client, make_package, upload, wait, write_song

REVERSED = [0.4, 0.3, 0.2, 0.1]


def vocals_gain(client, job: dict, song: Path) -> float:
    mix, _ = sf.read(song, dtype="float32")
    vocals, _ = sf.read(io.BytesIO(client.get(job["stems"][3]["url"]).content), dtype="float32")
    return round(float((vocals * mix).sum() / (mix * mix).sum()), 3)


@pytest.mark.integration
def test_a_model_file_replaced_in_place_is_loaded_again(tmp_path: Path) -> None:
    package = make_package(tmp_path / "models" / "frac.safetensors")
    song = write_song(tmp_path / "song.wav")
    with make_client(package, tmp_path / "jobs", workers=1) as client:
        first = wait(client, upload(client, song)["id"])
        assert first["state"] == "done" and vocals_gain(client, first, song) == 0.4
        before = model_identity(package)
        time.sleep(0.01)  # a new mtime even on coarse clocks
        make_package(package, REVERSED)  # the operator replaces the file
        assert model_identity(package) != before
        second = wait(client, upload(client, song)["id"])
        assert second["state"] == "done" and vocals_gain(client, second, song) == 0.1


def test_a_worker_with_another_model_of_the_same_name_fails_the_job(tmp_path: Path) -> None:
    ours = make_package(tmp_path / "new" / "frac.safetensors", REVERSED)
    theirs = make_package(tmp_path / "old" / "frac.safetensors")
    song = write_song(tmp_path / "song.wav")
    jobs = tmp_path / "jobs"
    with make_client(ours, jobs, workers=0) as client:
        job_id = upload(client, song)["id"]
    assert JobStore(jobs).get(job_id).model_id == model_identity(ours)  # type: ignore[union-attr]
    stop = threading.Event()
    stale = threading.Thread(target=run_worker, args=(WorkerConfig(jobs, str(theirs), "cpu"), stop))
    stale.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while (job := JobStore(jobs).get(job_id)) is not None and job.state in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, "the job was never taken"
            time.sleep(0.05)
    finally:
        stop.set()
        stale.join(DEADLINE)
    assert job is not None and job.state == "failed" and job.stems == []
    assert job.error == (
        "the model 'frac' was replaced on the server after this job was submitted; "
        "upload the song again to separate it with the new model"
    )


def test_identity_follows_the_lookup_order(tmp_path: Path) -> None:
    package = make_package(tmp_path / "repo" / "mine.safetensors")
    assert model_identity("mine", tmp_path / "repo") == model_identity(package)
    assert model_identity(package).startswith("sha256:")
    assert model_identity("htdemucs") == "htdemucs:8726e21a"  # the sha256 prefix of its file
    assert model_identity("mdx") == "mdx:0f06f20e,70f50cc9,fe698775,3d5dd56b"
    assert model_identity("tasnet") == "tasnet:beb46fac"
