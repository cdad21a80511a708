"""CLI-side reliability: broken pipes, file modes, checksum state in listings, doctor, and the
causal Conv-TasNet config check."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from demucs_rr import cli, doctor
from demucs_rr.hub.catalogue import PRETRAINED, cached_path
from demucs_rr.hub.fetch import checksum_state
from demucs_rr.hub.loader import list_models
from tests.helpers.untrusted_files import write_package


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(folder))
    return folder


@pytest.mark.integration
def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    """``demucs-rr models list | head`` when the reader is gone: no traceback, exit 141."""
    env = {**os.environ, "DEMUCS_RR_CACHE": str(tmp_path)}
    read, write = os.pipe()
    os.close(read)  # the reader went away before anything was written
    done = subprocess.run(
        [sys.executable, "-m", "demucs_rr", "models", "list"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
    )
    os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_broken_pipe_in_main(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_run", broken)
    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)
    assert cli.main(["models", "list"]) == 141


def test_renamed_files_get_the_umask_mode(tmp_path: Path) -> None:
    """Packages, checkpoints and evaluation JSON (temp file + rename) are 0644 under umask
    022, like every other file, not mkstemp's 0600."""
    import numpy as np

    from demucs_rr.evaluate.metrics import METRICS, TrackScores
    from demucs_rr.evaluate.trackjson import write_track_json
    from demucs_rr.train.checkpoint import save_checkpoint

    scores = TrackScores("t", ["a"], {m: np.zeros((1, 1)) for m in METRICS}, {"a": 1.0})
    old = os.umask(0o022)
    try:
        written = [
            write_package(tmp_path / "p.safetensors"),
            save_checkpoint(tmp_path / "checkpoint.th", {"x": 1}),
            write_track_json(scores, tmp_path / "t.json"),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_bad_checksum_is_not_cached(cache: Path) -> None:
    info = PRETRAINED["demucs"]
    target = cached_path(info)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the real file")
    assert checksum_state(target, info.sha256_prefix) == "bad checksum"
    row = {row["name"]: row for row in list_models()}["demucs"]
    assert not row["cached"] and "bad checksum" in row["description"]
    good = b"good"
    prefix = hashlib.sha256(good).hexdigest()[:8]
    target.write_bytes(good)
    assert checksum_state(target, prefix) == "ok"
    assert checksum_state(cache / "missing.th", prefix) == "missing"


def test_doctor_report(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = PRETRAINED["demucs"]
    cache.mkdir()
    cached_path(info).write_bytes(b"damaged")
    (cache / "mine.safetensors").write_bytes(b"x")
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("demucs_rr:", "torch:", "numpy:", "libsndfile:", "julius:", "lameenc:"):
        assert f"\n{key}" in f"\n{out}", key
    for key in ("cpu bf16:", "ffmpeg:", "soundstretch:", f"cache: {cache} (2 model files)"):
        assert key in out, key
    assert f"{cached_path(info).name}: 0.0 MiB, bad checksum" in out
    assert "mine.safetensors: 0.0 MiB, not a known download" in out


def test_doctor_without_tools_or_cache(tmp_path: Path) -> None:
    lines = doctor.tool_lines(which=lambda name: None)
    assert lines == ["ffmpeg: not found", "soundstretch: not found"]
    assert "does not exist yet" in doctor.cache_lines(tmp_path / "none")[0]
