"""Interrupting `separate` (SIGTERM, Ctrl-C) leaves no staged or half-written stem, and no
folder it created, behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel

SOURCES = ["drums", "bass", "other", "vocals"]


def _default_sigint() -> None:
    """A shell without job control starts background commands (``cmd &``) with SIGINT ignored,
    and Python then keeps ignoring it (no KeyboardInterrupt): give the child the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.integration
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_while_writing_leaves_nothing(tmp_path: Path, sig: int, code: int) -> None:
    package = save_package(FractionModel(SOURCES, crop=3), tmp_path / "frac.safetensors")
    song = tmp_path / "song.wav"
    rng = np.random.default_rng(0)
    sf.write(song, 0.1 * rng.standard_normal((60 * 44100, 2)).astype(np.float32), 44100)
    for attempt in range(3):  # a run that ends before the signal could be sent is redone
        out = tmp_path / f"out{attempt}"
        argv = [sys.executable, "-m", "demucs_rr", "separate", "-q", str(song), "-n", str(package)]
        argv += ["-o", str(out), "--segment", "0.005", "--threads", "1"]  # many chunks: slow
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
        deadline = time.monotonic() + 60
        while not any(p.suffix in (".part", ".f32") for p in out.rglob(".*")):  # staged stems
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no staged stem appeared"
            time.sleep(0.02)
        if proc.poll() is None:
            break
        proc.communicate()
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"error: {'terminated' if code == 143 else 'interrupted'}"]
    assert not out.exists(), list(out.rglob("*"))  # the folders it made go with the stems
