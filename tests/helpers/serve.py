"""Helpers of the ``demucs-rr serve`` tests: a fixed-fraction model package, songs, an
in-process client with real worker processes, uploads and waits."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import soundfile as sf

with warnings.catch_warnings():  # new Starlette prefers httpx2 to httpx; both work
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from demucs_rr.serve.app import ServeConfig, create_app
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]
FRACTIONS = [0.1, 0.2, 0.3, 0.4]
DEADLINE = 60.0


def make_package(
    path: Path, fractions: list[float] = FRACTIONS, segment_length: int = 20000
) -> Path:
    """A fixed-fraction model package (stems are ``fraction * mix``); a short segment makes
    a slow model (one model call per ``segment_length`` samples)."""
    model = FractionModel(SOURCES, fractions, segment_length=segment_length, crop=13)
    return save_package(model, path)


def write_song(path: Path, seconds: float = 1.5, channels: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, make_tone_mix(seconds, channels=channels).T.numpy(), 44100, subtype="PCM_16")
    return path


def make_client(package: Path, jobs: Path, workers: int, **kwargs: Any) -> TestClient:
    config = ServeConfig(jobs, str(package), workers=workers, threads=1, **kwargs)
    return TestClient(create_app(config), raise_server_exceptions=False)


def upload(client: TestClient, path: Path, name: str | None = None, **fields: str) -> dict:
    files = {"file": (name or path.name, path.read_bytes())}
    response = client.post("/api/jobs", files=files, data=fields)
    assert response.status_code == 201, response.text
    return response.json()


def wait(client: TestClient, job_id: str, states: tuple[str, ...] = ("done", "failed")) -> dict:
    deadline = time.monotonic() + DEADLINE
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.get('state')} after {DEADLINE} s")
