"""``demucs-rr serve``: the HTTP API in-process (TestClient) with real worker processes, on a
fixed-fraction model package: stems equal the command line's, errors are one line, uploads are
limited while they stream, jobs survive a restart, concurrent uploads stay apart."""

from __future__ import annotations

import io
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="needs the [serve] extra")
pytest.importorskip("httpx", reason="needs the [serve] extra")

from demucs_rr.audio import ffmpeg_available, load_for_model
from demucs_rr.cli import main
from demucs_rr.errors import AudioIOError
from demucs_rr.serve.store import JobStore
from tests.helpers.serve import (
    DEADLINE,
    SOURCES,
    TestClient,
    make_client,
    make_package,
    upload,
    wait,
    write_song,
)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return write_song(tmp_path_factory.mktemp("songs") / "my song.wav")


@pytest.fixture(scope="module")
def client(package, tmp_path_factory) -> Iterator[TestClient]:
    """One server with two worker processes for the module."""
    with make_client(package, tmp_path_factory.mktemp("jobs"), workers=2) as test_client:
        yield test_client


def cli_stems(package: Path, song: Path, out: Path, *options: str) -> Path:
    assert main(["separate", "-q", str(song), "-n", str(package), "-o", str(out), *options]) == 0
    return out / "frac" / song.stem


def test_upload_gives_the_cli_stems_byte_for_byte(client, package, song, tmp_path):
    job = upload(client, song)
    assert job["state"] == "queued" and job["name"] == "my song.wav"
    job = wait(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert job["progress"] == 1 and job["device"] == "cpu"
    assert [s["name"] for s in job["stems"]] == SOURCES
    cli = cli_stems(package, song, tmp_path / "cli")
    for stem in job["stems"]:
        response = client.get(stem["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert response.content == (cli / f"{stem['name']}.wav").read_bytes(), stem["name"]
        png = client.get(stem["waveform"]).content
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    download = client.get(job["stems"][0]["download"])
    disposition = download.headers["content-disposition"]
    assert disposition == "attachment; filename*=utf-8''my%20song-drums.wav"
    archive = zipfile.ZipFile(io.BytesIO(client.get(job["zip"]).content))
    assert sorted(archive.namelist()) == sorted(f"my song/{s}.wav" for s in SOURCES)
    assert archive.read("my song/vocals.wav") == (cli / "vocals.wav").read_bytes()


def test_stems_support_range_requests(client, song):
    job = wait(client, upload(client, song)["id"])
    url = job["stems"][3]["url"]
    full = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == full[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(full)}"


def test_options_match_the_cli_options(client, package, song, tmp_path):
    job = upload(client, song, two_stems="vocals", format="flac", shifts="1")
    job = wait(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert [s["name"] for s in job["stems"]] == ["vocals", "no_vocals"]
    cli = cli_stems(
        package, song, tmp_path / "cli", "--two-stems", "vocals", "--flac", "--shifts", "1"
    )
    for stem in job["stems"]:
        response = client.get(stem["url"])
        assert response.headers["content-type"] == "audio/flac"
        assert response.content == (cli / f"{stem['name']}.flac").read_bytes()


def test_events_stream_ends_with_the_final_state(client, song):
    job = upload(client, song, stems="bass,drums")
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"state": "done"' in events[-1] and '"name": "bass"' in events[-1]


def test_a_non_audio_upload_fails_with_the_reader_message(client, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not samples\n" * 20)
    job = wait(client, upload(client, notes)["id"])
    assert job["state"] == "failed"
    with pytest.raises(AudioIOError) as reader:
        load_for_model(notes, 44100, 2)
    assert job["error"] == str(reader.value).replace(str(notes), "notes.txt")
    assert "\n" not in job["error"] and "Traceback" not in job["error"]
    assert client.get(f"/api/jobs/{job['id']}/zip").status_code == 404


@pytest.mark.integration
@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not on PATH")
def test_a_playlist_upload_reads_nothing_of_the_server(client, song, tmp_path):
    secret = tmp_path / "private" / "server-only.mp3"
    secret.parent.mkdir()
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(song), str(secret)]
    subprocess.run(cmd, check=True)
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    job = wait(client, upload(client, playlist)["id"])
    assert job["state"] == "failed" and job["stems"] == []
    assert job["error"].startswith("cannot decode list.m3u8: ")
    assert "private" not in job["error"] and "/" not in job["error"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"format": "ogg"}, "unknown format 'ogg'"),
        ({"shifts": "99"}, "shifts must be within 0..10"),
        ({"model": "/etc/passwd"}, "unknown model '/etc/passwd'"),
        ({"colour": "red"}, "unknown form field(s) colour"),
        ({"stems": "../x"}, "bad stem name '../x'"),
    ],
)
def test_bad_options_are_refused_before_a_job_exists(client, song, fields, words):
    before = len(client.get("/api/jobs").json()["jobs"])
    response = client.post("/api/jobs", files={"file": ("a.wav", song.read_bytes())}, data=fields)
    assert response.status_code == 400 and words in response.json()["detail"]
    assert len(client.get("/api/jobs").json()["jobs"]) == before


def test_requests_without_a_file_or_for_unknown_jobs_are_one_line_errors(client):
    assert client.post("/api/jobs", data={"format": "wav"}).status_code == 415
    response = client.post("/api/jobs", data={"format": "wav"}, files={"a": ("x", b"")})
    assert response.status_code == 400 and "send the song as 'file'" in response.json()["detail"]
    body = b'--b\r\nContent-Disposition: form-data; name="format"\r\n\r\nwav\r\n--b--\r\n'
    headers = {"content-type": "multipart/form-data; boundary=b"}
    response = client.post("/api/jobs", content=body, headers=headers)
    assert response.status_code == 400 and "form field 'file'" in response.json()["detail"]
    for path in ("/api/jobs/0123", f"/api/jobs/{'a' * 32}/zip", "/api/jobs/..%2f..%2fetc"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["detail"]


def test_concurrent_uploads_each_get_their_own_stems(client, tmp_path):
    songs = [write_song(tmp_path / f"song{i}.wav", seconds=1 + 0.25 * i) for i in range(4)]
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda p=p: ids.append(upload(client, p)["id"])) for p in songs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(set(ids)) == 4
    for job_id in ids:
        job = wait(client, job_id)
        assert job["state"] == "done", job["error"]
        mix, _ = sf.read(tmp_path / job["name"], dtype="float32")
        vocals, _ = sf.read(io.BytesIO(client.get(job["stems"][3]["url"]).content), dtype="float32")
        assert vocals.shape == mix.shape
        assert np.abs(vocals - 0.4 * mix).max() < 3 / 32767


def test_oversize_uploads_get_413_before_anything_is_stored(package, tmp_path):
    jobs = tmp_path / "jobs"
    big = b"\0" * 200_000
    with make_client(package, jobs, workers=0, max_upload_mb=0.05) as client:
        response = client.post("/api/jobs", files={"file": ("big.wav", big)})
        assert response.status_code == 413 and "limit of 0.05 MB" in response.json()["detail"]
        assert not (jobs / ".incoming").exists()  # refused on Content-Length, body never read

        def chunks() -> Iterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
            for _ in range(50):
                yield big[:10_000]

        headers = {"content-type": "multipart/form-data; boundary=b"}
        response = client.post("/api/jobs", content=chunks(), headers=headers)
        assert response.status_code == 413
        assert list((jobs / ".incoming").iterdir()) == []  # the partial file is gone
        assert client.get("/api/jobs").json()["jobs"] == []


def test_jobs_survive_a_restart(package, song, tmp_path):
    jobs = tmp_path / "jobs"
    with make_client(package, jobs, workers=0) as client:
        first, second = (upload(client, song)["id"] for _ in range(2))
        assert JobStore(jobs).claim(worker=999_999).id == first  # as if a worker died mid-job
    with make_client(package, jobs, workers=1) as client:
        listed = [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
        assert listed == [first, second]
        assert all(wait(client, i)["state"] == "done" for i in listed)
    with make_client(package, jobs, workers=0) as client:
        done = client.get("/api/jobs").json()["jobs"]
        assert [j["state"] for j in done] == ["done", "done"]
        assert client.get(done[0]["stems"][0]["url"]).status_code == 200
        assert client.delete(f"/api/jobs/{first}").status_code == 204
        assert not (jobs / first).exists()
        assert client.get(f"/api/jobs/{first}").status_code == 404
        assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [second]


def test_token_host_and_origin_checks(package, tmp_path):
    with make_client(package, tmp_path / "a", workers=0, token="s3cret") as client:
        response = client.get("/api/jobs")
        assert response.status_code == 401 and "token" in response.json()["detail"]
        assert (
            client.get("/api/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        redirect = client.get("/?token=s3cret", follow_redirects=False)
        assert redirect.status_code == 303 and "httponly" in redirect.headers["set-cookie"].lower()
        assert client.get("/api/jobs").status_code == 200  # the cookie now carries the token
    local = ("127.0.0.1", "localhost")
    with make_client(package, tmp_path / "b", workers=0, allowed_hosts=local) as client:
        assert client.get("/api/info").status_code == 400  # Host: testserver (DNS rebinding)
        client.base_url = client.base_url.copy_with(host="127.0.0.1")
        assert client.get("/api/info").status_code == 200
        evil = {"Origin": "http://evil.example"}
        assert client.delete(f"/api/jobs/{'a' * 32}", headers=evil).status_code == 403


def test_page_and_info_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text
    info = client.get("/api/info").json()
    assert info["model"] == "frac" and info["models"][0] == "frac" and info["device"] == "cpu"
    assert info["sources"] == SOURCES and info["workers_alive"] == 2
    assert "/tmp" not in str(info)
    assert "/static/docs.js" in client.get("/docs").text
    for asset in ("app.js", "docs.js", "style.css"):
        text = client.get(f"/static/{asset}").text
        assert "http://" not in text and "https://" not in text  # nothing from a CDN
    post = client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and "two_stems" in form["properties"]


def test_serve_command_refuses_unsafe_or_unknown_settings(capsys, tmp_path):
    jobs = str(tmp_path / "jobs")
    assert main(["serve", "--host", "0.0.0.0", "--jobs-dir", jobs]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "-n", "no_such_model", "--jobs-dir", jobs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no_such_model'") and err.count("\n") == 1


def test_the_page_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["demucs_rr.serve"]
    static = repo / "demucs_rr" / "serve" / "static"
    shipped = {p for pattern in patterns for p in static.parent.glob(pattern)}
    assert set(static.iterdir()) == shipped and (static / "index.html") in shipped
    assert "serve" in project["project"]["optional-dependencies"]


def test_waveform_of_a_stem_file_is_read_in_blocks(tmp_path: Path) -> None:
    """The envelope does not depend on the block size and follows the signal's shape."""
    from demucs_rr.serve.waveform import draw, file_envelope

    t = np.arange(44100 * 2) / 44100
    wav = np.stack([np.sin(2 * np.pi * 3 * t) * t, 0.5 * np.sin(2 * np.pi * 5 * t)], 1)
    sf.write(tmp_path / "stem.wav", wav.astype(np.float32), 44100, subtype="FLOAT")
    lows, highs = file_envelope(tmp_path / "stem.wav", 50)
    lows2, highs2 = file_envelope(tmp_path / "stem.wav", 50, block=777)
    np.testing.assert_array_equal(lows, lows2)
    np.testing.assert_array_equal(highs, highs2)
    centred = wav - wav.mean(axis=0)
    assert highs.max() == pytest.approx(centred.max(), abs=1e-6)
    assert lows.min() == pytest.approx(centred.min(), abs=1e-6)
    assert highs[-10:].max() > 3 * highs[:10].max()  # the first channel grows louder
    image = draw(lows, highs)
    assert image.shape == (64, 50, 4) and image[..., 3].any()
