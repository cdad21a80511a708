"""What the ffmpeg fallback may read: the named file only.

A file soundfile rejects goes to ffmpeg only when its first bytes are those of an allowed audio or
video container, with that container's demuxer forced and only the ``file`` protocol allowed.
Playlists (HLS ``.m3u8``/``.m3u``), ``ffconcat`` scripts, SDP sessions and the like would make
ffmpeg open other files or the network: they must be refused without reading anything, by both
readers (:func:`read_audio` and :func:`read_blocks`), with an error that names only the input.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import read_audio
from demucs_rr.audio.blocks import read_blocks
from demucs_rr.audio.ffmpeg import container_of
from demucs_rr.audio.io import ffmpeg_available
from demucs_rr.errors import AudioIOError

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not on PATH")

SR = 44100


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file of the server's that no client may read: one second of a 1234 Hz tone in mp3,
    a format ffmpeg's HLS demuxer accepts as a segment."""
    folder = tmp_path / "server-secrets"
    folder.mkdir()
    t = np.arange(SR) / SR
    source = folder / "tone.wav"
    soundfile.write(source, (0.5 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32), SR)
    path = folder / "private-recording.mp3"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(source), str(path)]
    subprocess.run(cmd, check=True)
    return path


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request (none may arrive)."""
    _Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.hits
    finally:
        server.shutdown()
        server.server_close()


def hls(*urls: str) -> str:
    segments = "".join(f"#EXTINF:1.0,\n{url}\n" for url in urls)
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n{segments}#EXT-X-ENDLIST\n"


def ffconcat(path: str) -> str:
    return f"ffconcat version 1.0\nfile '{path}'\n"


def sdp(port: int) -> str:
    return (
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=audio {port} RTP/AVP 11\na=rtpmap:11 L16/44100/1\n"
    )


# name of the upload, its text given the secret's path and the web server's URL
CASES: dict[str, Callable[[str, str], str]] = {
    "playlist.m3u8": lambda secret, url: hls(secret),
    "playlist.m3u": lambda secret, url: hls(secret),
    "file-url.m3u8": lambda secret, url: hls(f"file:{secret}"),
    "http-url.m3u8": lambda secret, url: hls(f"{url}/stolen.wav"),
    "playlist-as.mp4": lambda secret, url: hls(f"file:{secret}"),
    "playlist-as.mkv": lambda secret, url: hls(secret),
    "playlist-as.wav": lambda secret, url: hls(f"file:{secret}"),
    "playlist-as.m4a": lambda secret, url: hls(f"{url}/stolen.aac"),
    "concat.ffconcat": lambda secret, url: ffconcat(secret),
    "concat-as.mp3": lambda secret, url: ffconcat(secret),
    "concat-http.txt": lambda secret, url: ffconcat(f"{url}/stolen.wav"),
    "nested.m3u8": lambda secret, url: hls(
        f"concat:{secret}|{secret}", f"subfile,,start,0,end,0,,:{secret}"
    ),
    "session.sdp": lambda secret, url: sdp(int(url.rsplit(":", 1)[1])),
}


def _readers() -> list[Callable[[Path], torch.Tensor]]:
    def whole(path: Path) -> torch.Tensor:
        return read_audio(path)[0]

    def blocks(path: Path) -> torch.Tensor:
        return torch.cat(list(read_blocks(path, 1, SR)[1]), -1)

    return [whole, blocks]


@pytest.mark.parametrize("reader", _readers(), ids=["read_audio", "read_blocks"])
@pytest.mark.parametrize("name", list(CASES))
def test_references_to_other_files_are_never_followed(
    tmp_path: Path, secret: Path, web: tuple[str, list[str]], name: str, reader: Callable
) -> None:
    url, hits = web
    upload = tmp_path / "uploads" / name
    upload.parent.mkdir()
    upload.write_text(CASES[name](str(secret), url))
    with pytest.raises(AudioIOError) as err:
        reader(upload)
    message = str(err.value)
    assert str(upload) in message and "\n" not in message
    rest = message.replace(str(upload), "")
    assert "server-secrets" not in rest and "private-recording" not in rest and "/" not in rest
    assert "127.0.0.1" not in rest
    assert hits == []


def test_an_allowed_container_still_decodes_through_ffmpeg(tmp_path: Path) -> None:
    """A Matroska file of PCM (soundfile cannot open it) decodes to the exact samples."""
    t = np.arange(SR // 2) / SR
    wav = np.stack([0.25 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)], 1)
    source = tmp_path / "source.wav"
    soundfile.write(source, wav.astype(np.float32), SR, subtype="PCM_16")
    target = tmp_path / "song.mkv"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(source), "-c:a", "pcm_s16le", str(target)]
    subprocess.run(cmd, check=True)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(str(target))
    assert container_of(target.read_bytes()[:64]) is not None
    pcm, _ = soundfile.read(source, dtype="float32")
    back, rate = read_audio(target)
    assert rate == SR and torch.equal(back, torch.from_numpy(pcm.T.copy()))
    streamed = torch.cat(list(read_blocks(target, 2, SR, block=4096)[1]), -1)
    assert torch.equal(streamed, back)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "m4a"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "aac"),
        (b"#EXTM3U\n#EXT-X-VERSION:3\n", None),
        (b"ffconcat version 1.0\n", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", None),
        (b"v=0\no=- 0 0 IN IP4 127.0.0.1\n", None),
    ],
)
def test_containers_are_told_by_their_first_bytes(head: bytes, expected: str | None) -> None:
    found = container_of(head)
    assert (found.extension if found else None) == expected
