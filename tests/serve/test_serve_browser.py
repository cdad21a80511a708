"""``demucs-rr serve`` in a real browser: Debian's headless chromium, driven by Playwright,
against the server started as a user would (``python -m demucs_rr serve``) on 127.0.0.1.

Upload a generated song through the page, wait for it to finish, check the players, waveforms
and download links, download a stem, then upload a text file and read the error. A screenshot
of the finished page goes to ``$DEMUCS_RR_ARTIFACTS`` (default ``build/test-artifacts/``);
``DEMUCS_RR_UPDATE_SCREENSHOT=1`` also copies it to ``docs/serve.png`` for the README.

Without Playwright or chromium the test is skipped with the reason, except in CI (``$CI`` set),
where it fails instead.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.hub.package import save_package

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["drums", "bass", "other", "vocals"]
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
]
TIMEOUT_MS = 60_000


def unavailable(reason: str) -> None:
    """Skip with the reason; in CI, where the browser must run, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(reason)


def demo_song(path: Path, seconds: float = 6.0, rate: int = 44100) -> Path:
    """A short stereo groove: kick, hi-hat, bass line, chords and a melody."""
    t = np.arange(int(seconds * rate)) / rate
    beat = t % 0.5
    kick = np.sin(2 * math.pi * 55 * beat) * np.exp(-beat * 18)
    hat = np.random.default_rng(0).standard_normal(t.size) * np.exp(-(t % 0.25) * 60) * 0.15
    bass_notes = np.array([55.0, 55.0, 65.4, 49.0])[(t // 1.0).astype(int) % 4]
    bass = 0.35 * np.sign(np.sin(2 * math.pi * bass_notes * t)) * np.exp(-(t % 1.0) * 2)
    chords = sum(0.08 * np.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6))
    melody_notes = np.array([440.0, 494.0, 554.4, 659.3, 554.4, 494.0])
    melody = 0.2 * np.sin(2 * math.pi * melody_notes[(t // 0.5).astype(int) % 6] * t)
    melody *= np.clip(np.sin(math.pi * (t % 0.5) / 0.5), 0, 1)
    left = 0.5 * kick + hat + bass + chords + 0.8 * melody
    right = 0.5 * kick + 0.7 * hat + bass + chords * 1.2 + 0.5 * melody
    mix = np.stack([left, right], 1)
    sf.write(path, (0.8 * mix / np.abs(mix).max()).astype(np.float32), rate, subtype="PCM_16")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    """``python -m demucs_rr serve`` with a tiny Demucs package, one worker, on 127.0.0.1."""
    from demucs_rr.models.demucs_v2 import Demucs

    torch.manual_seed(0)
    model = Demucs(sources=SOURCES, channels=4, depth=4, segment_length=44100)
    package = save_package(model, tmp_path / "tiny-demucs.safetensors", name="tiny-demucs")
    port = free_port()
    command = [sys.executable, "-m", "demucs_rr", "--threads", "1", "serve", "--port", str(port)]
    command += ["-n", str(package), "--jobs-dir", str(tmp_path / "jobs"), "--workers", "1"]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                get(f"{url}/api/info")
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the server did not start: {(tmp_path / 'server.log').read_text()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert "Traceback" not in output, output


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium (the system's, e.g. Debian's ``chromium``) through Playwright."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install playwright)")
    executable = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    if executable is None:
        unavailable("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_FLAGS
            )
        except Error as exc:
            unavailable(f"chromium does not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


def save_screenshot(page: Any) -> Path:
    folder = Path(os.environ.get("DEMUCS_RR_ARTIFACTS", REPO / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DEMUCS_RR_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "serve.png")
    return shot


def test_separate_a_song_in_the_browser(browser, server, tmp_path):
    song = demo_song(tmp_path / "demo song.wav")
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []  # a Content-Security-Policy refusal shows here
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.goto(server)
    page.wait_for_selector("#server:has-text('model tiny-demucs on cpu')")
    page.set_input_files("#file", str(song))
    done = page.wait_for_selector(".job[data-state=done]")
    assert done.query_selector(".name").inner_text() == "demo song.wav"
    stems = [s.inner_text() for s in done.query_selector_all(".stem-name")]
    assert stems == SOURCES
    assert len(done.query_selector_all("audio")) == 4
    assert len(done.query_selector_all("a.download")) == 4
    assert done.query_selector("a.zip") is not None
    page.wait_for_function(
        "() => [...document.querySelectorAll('audio')].every(a => a.duration > 5.9)"
        " && [...document.querySelectorAll('img.wave')].every(i => i.naturalWidth > 0)"
    )
    with page.expect_download() as info:
        done.query_selector_all("a.download")[3].click()
    download = info.value
    assert download.suggested_filename == "demo song-vocals.wav"
    served = get(server + done.query_selector_all("audio")[3].get_attribute("src"))
    assert Path(download.path()).read_bytes() == served
    vocals, rate = sf.read(download.path())
    assert rate == 44100 and vocals.shape == (6 * 44100, 2)
    shot = save_screenshot(page)
    assert shot.stat().st_size > 10_000

    notes = tmp_path / "notes.txt"
    notes.write_text("not a song\n")
    page.set_input_files("#file", str(notes))
    failed = page.wait_for_selector(".job[data-state=failed]")
    assert failed.query_selector(".error").inner_text().startswith("cannot decode notes.txt")
    page.once("dialog", lambda dialog: dialog.dismiss())  # Delete asks first: "no" keeps it
    failed.query_selector("button.delete").click()
    page.wait_for_timeout(500)
    assert page.query_selector(".job[data-state=failed]") is not None
    page.once("dialog", lambda dialog: dialog.accept())
    failed.query_selector("button.delete").click()
    page.wait_for_selector(".job[data-state=failed]", state="detached")

    page.goto(f"{server}/docs")  # the API list, rendered locally from /openapi.json
    upload_doc = page.locator("li", has_text="POST /api/jobs").first.inner_text()
    assert "multipart form: file, model, two_stems" in upload_doc
    assert [m for m in console if "Content Security Policy" in m] == []
    page.close()
