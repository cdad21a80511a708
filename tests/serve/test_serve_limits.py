"""The limits of a server left running: audio length (by header on upload, and while decoding
when the header lies, before anything is staged), queue length, disk quota, expiry of finished
jobs, and the cleanup at start of what killed processes left. Each refusal is one JSON line and
leaves no file behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.audio.blocks import read_blocks
from demucs_rr.audio.io import ffmpeg_available
from demucs_rr.errors import AudioIOError
from demucs_rr.serve.jobs import JOB_ID
from demucs_rr.serve.limits import PEAK_BYTES_PER_SECOND, Limits
from demucs_rr.staging import HOST
from tests.helpers.serve import make_client, make_package, upload, wait, write_song

needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not on PATH")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return write_song(tmp_path_factory.mktemp("songs") / "song.wav", seconds=1.5)


def nothing_left(jobs: Path) -> bool:
    """No job folder and no partial upload."""
    folders = [p for p in jobs.iterdir() if JOB_ID.fullmatch(p.name)]
    incoming = jobs / ".incoming"
    return folders == [] and (not incoming.exists() or list(incoming.iterdir()) == [])


@pytest.fixture(scope="module")
def lying_aac(tmp_path_factory) -> Path:
    """122 s of AAC whose first frames have a high bit rate: ffprobe estimates 17 s."""
    folder = tmp_path_factory.mktemp("lying")
    parts = []
    for seconds, rate in ((2, "320k"), (120, "24k")):
        part = folder / f"{seconds}.aac"
        source = f"sine=frequency=440:duration={seconds}:sample_rate=44100"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", source, "-ac", "2"]
        subprocess.run([*cmd, "-c:a", "aac", "-b:a", rate, str(part)], check=True)
        parts.append(part.read_bytes())
    path = folder / "long.aac"
    path.write_bytes(b"".join(parts))
    return path


def test_too_long_audio_is_refused_on_upload(package, tmp_path):
    silence = tmp_path / "silence.flac"  # 10 minutes in a few kB
    with sf.SoundFile(silence, "w", 44100, 2, format="FLAC") as handle:
        for _ in range(10):
            handle.write(np.zeros((60 * 44100, 2), dtype=np.int16))
    assert silence.stat().st_size < 200_000
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=0, limits=Limits(max_audio_minutes=1)) as client:
        response = client.post("/api/jobs", files={"file": ("long.flac", silence.read_bytes())})
        assert response.status_code == 413
        assert response.json() == {
            "detail": "the audio lasts 10.0 minutes, more than this server's limit of 1 minutes"
        }
        assert client.get("/api/jobs").json()["jobs"] == [] and nothing_left(jobs)


@needs_ffmpeg
def test_a_header_that_lies_is_caught_while_decoding(lying_aac: Path) -> None:
    decoded = 0
    with pytest.raises(AudioIOError) as err:
        for block in read_blocks(lying_aac, 2, 44100, block=44100, max_seconds=60.0)[1]:
            decoded += block.shape[-1]
    assert str(err.value) == f"cannot use {lying_aac}: it lasts more than the limit of 1 minutes"
    assert decoded <= 61 * 44100  # stopped at the limit, not after the 122 s


@needs_ffmpeg
@pytest.mark.integration
def test_a_worker_refuses_a_long_file_before_staging(package, lying_aac, tmp_path):
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=1, limits=Limits(max_audio_minutes=1)) as client:
        job = wait(client, upload(client, lying_aac)["id"])  # 17 s by its header: accepted
    assert job["state"] == "failed"
    assert job["error"] == "cannot use long.aac: it lasts more than the limit of 1 minutes"
    stems = jobs / job["id"] / "stems"
    assert not stems.exists() or list(stems.iterdir()) == []


def test_a_full_queue_gives_429(package, song, tmp_path):
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=0, limits=Limits(max_queued_jobs=3)) as client:
        ids = [upload(client, song)["id"] for _ in range(3)]
        response = client.post("/api/jobs", files={"file": ("x.wav", song.read_bytes())})
        assert response.status_code == 429
        assert response.json() == {"detail": "the queue is full (3 jobs waiting); try again later"}
        assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == ids
        assert list((jobs / ".incoming").iterdir()) == []


def test_the_disk_quota_gives_507(package, song, tmp_path):
    jobs = tmp_path / "jobs"
    peak = 1.5 * PEAK_BYTES_PER_SECOND * 4  # the stems of one job at their peak
    quota = (2.5 * peak + 2 * song.stat().st_size + 200_000) / 1e9  # two jobs fit, not three
    with make_client(package, jobs, workers=0, limits=Limits(max_disk_gb=quota)) as client:
        first, second = upload(client, song), upload(client, song)
        response = client.post("/api/jobs", files={"file": ("x.wav", song.read_bytes())})
        assert response.status_code == 507
        detail = response.json()["detail"]
        assert detail.startswith("the server's job storage is full (the ") and "quota" in detail
        assert len(client.get("/api/jobs").json()["jobs"]) == 2
        assert client.delete(first["url"]).status_code == 204  # space is freed: accepted again
        assert upload(client, song)["state"] == "queued"
        assert second["state"] == "queued"


def test_finished_jobs_expire_with_their_files(package, song, tmp_path):
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=1) as client:
        old, recent = (wait(client, upload(client, song)["id"])["id"] for _ in range(2))
        waiting = upload(client, song, shifts="0")["id"]
    with sqlite3.connect(jobs / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time() - 7200, old))
        db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (waiting,))
    with make_client(package, jobs, workers=0, limits=Limits(keep_hours=1)) as client:
        listed = [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
    assert listed == [recent, waiting]
    assert not (jobs / old).exists() and (jobs / recent / "stems").is_dir()


def test_start_removes_what_killed_processes_left(package, song, tmp_path):
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=1) as client:
        job = wait(client, upload(client, song)["id"])
    stems = jobs / job["id"] / "stems"
    dead = 2**22 + 12345  # above pid_max: no such process
    left = [
        jobs / ".incoming" / "0123456789abcdef.part",
        stems / f".vocals.wav.{HOST}-{dead}-0badc0de.part",
        stems / f".vocals.wav.{HOST}-{dead}-0badc0de.f32",
        jobs / job["id"] / f".stems.zip.{HOST}-{dead}-0badc0de.part",
        jobs / ("f" * 32) / "input.wav",  # a folder without a job
        jobs / ".tmp" / "pymp-k1lled" / "listener-0123",  # a killed server's temporary files
        jobs / ".tmp" / "tmpabcdef",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000))
    kept = sorted(p.name for p in stems.iterdir() if not p.name.startswith("."))
    with make_client(package, jobs, workers=0) as client:
        assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "done"
    assert [p for p in left if p.exists()] == []
    assert not (jobs / ("f" * 32)).exists() and list((jobs / ".tmp").iterdir()) == []
    assert (
        sorted(p.name for p in stems.iterdir())
        == kept
        == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    )


def test_limit_options_and_their_defaults(capsys):
    from demucs_rr.cli import build_parser

    args = build_parser().parse_args(["serve"])
    given = (args.max_audio_minutes, args.max_queued_jobs, args.max_disk_gb, args.keep_hours)
    defaults = Limits()
    assert (
        given
        == (60, 50, 20, 72)
        == (
            defaults.max_audio_minutes,
            defaults.max_queued_jobs,
            defaults.max_disk_gb,
            defaults.keep_hours,
        )
    )
    off = ["--max-audio-minutes", "0", "--max-queued-jobs", "0", "--max-disk-gb", "0"]
    args = build_parser().parse_args(["serve", *off, "--keep-hours", "0"])
    assert (args.max_audio_minutes, args.max_queued_jobs, args.max_disk_gb, args.keep_hours) == (
        (None,) * 4
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-queued-jobs", "2.5"])
    assert "expected a number" in capsys.readouterr().err
