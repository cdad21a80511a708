"""Property-based fuzzing of the audio readers (:func:`load_for_model` over :func:`read_audio`,
and :func:`read_blocks`, both converting to 2 channels at 44.1 kHz as ``separate`` does): random
bytes and mutated valid wav/flac/ogg/mp3 files (byte flips, truncations, insertions, header
fields overwritten) give finite audio or a one-line :class:`AudioIOError` naming the file (and at
most one warning record), never another exception, never a hang, never decoder text on file
descriptor 2; and both readers agree on which files fail.

Most examples run without ffmpeg on PATH (the in-process libsndfile path is the one that can
crash, hang or print); a few run with the ffmpeg fallback. ``FUZZ_EXAMPLES=300`` runs more.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demucs_rr.audio.blocks import read_blocks
from demucs_rr.audio.io import ffmpeg_available, load_for_model
from demucs_rr.errors import AudioIOError
from tests.helpers.audio import mutate
from tests.helpers.bad_audio import valid_files
from tests.helpers.checks import alarm

SECONDS_PER_EXAMPLE = 10
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FORMATS = ["wav", "flac", "ogg", "mp3"]
SUFFIXES = [".wav", ".flac", ".ogg", ".mp3", ".aiff"]

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # hangs are caught by the alarm instead
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Values written over header fields: zero, one, odd widths, the largest counts.
FIELD_VALUES = [0, 1, 7, 12, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.integers(0, 2**16), st.integers(1, 64)),
    st.tuples(st.just("field16"), st.integers(0, 63), st.sampled_from(FIELD_VALUES)),
    st.tuples(st.just("field32"), st.integers(0, 63), st.sampled_from(FIELD_VALUES)),
)


def read_both(path: Path) -> list[str]:
    """Run both readers on ``path``; returns each one's outcome, ``ok`` or the error line."""
    outcomes = []
    for reader in ("memory", "blocks"):
        try:
            with alarm(SECONDS_PER_EXAMPLE):
                if reader == "memory":
                    wav, _ = load_for_model(path, 44100, 2)
                else:
                    wav = torch.cat(list(read_blocks(path, 2, 44100)[1]), -1)
        except AudioIOError as exc:
            message = str(exc)
            assert "\n" not in message and path.name in message, message
            outcomes.append(message)
            continue
        assert wav.shape[-1] > 0 and bool(torch.isfinite(wav).all())
        outcomes.append("ok")
    return outcomes


def check(path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Both readers on ``path``: clean outcomes, the same verdict, silence on fd 2, and at
    most one warning record per read, naming the file."""
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        outcomes = read_both(path)
    assert (outcomes[0] == "ok") == (outcomes[1] == "ok"), outcomes
    assert capfd.readouterr().err == ""
    records = [r.getMessage() for r in caplog.records]
    assert len(records) <= 2 and all(path.name in r and "\n" not in r for r in records), records


@pytest.fixture
def no_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide ffmpeg: every example then stays in-process (and fast)."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))


@pytest.mark.parametrize("fmt", FORMATS)
@_SETTINGS
@given(steps=st.lists(mutation, min_size=1, max_size=4), suffix=st.sampled_from(SUFFIXES))
def test_mutated_files_fail_cleanly(
    fmt: str,
    steps: list[tuple[str, int, int]],
    suffix: str,
    no_ffmpeg: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(mutate(valid_files()[fmt], steps))
    check(path, capfd, caplog)


@_SETTINGS
@given(data=st.binary(min_size=1, max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_fail_cleanly(
    data: bytes,
    suffix: str,
    no_ffmpeg: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    check(path, capfd, caplog)


@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg not installed")
@settings(_SETTINGS, max_examples=max(EXAMPLES // 4, 3))
@given(
    fmt=st.sampled_from(FORMATS),
    steps=st.lists(mutation, min_size=1, max_size=4),
    suffix=st.sampled_from([*SUFFIXES, ".m4a"]),
)
def test_mutated_files_with_the_ffmpeg_fallback(
    fmt: str,
    steps: list[tuple[str, int, int]],
    suffix: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(mutate(valid_files()[fmt], steps))
    check(path, capfd, caplog)
