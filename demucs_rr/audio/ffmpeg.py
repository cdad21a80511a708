"""The ffmpeg fallback decoder, restricted to reading the one file it is given.

ffmpeg follows references: an HLS playlist (``.m3u8``, ``.m3u``) or an ``ffconcat`` script names
other files or URLs, an SDP file opens network ports, ``concat:``/``subfile:`` URLs read other
files, the image2 demuxer expands patterns. A file handed to ffmpeg may come from a stranger (a
``serve`` upload), so:

- ffmpeg only sees files whose first bytes are those of an audio or video container of
  :data:`CONTAINERS` (:func:`container_of`); anything else is refused without running it;
- that container's demuxer is forced (``-f``), so ffmpeg never guesses a playlist, script or
  image-sequence demuxer from the content or the name;
- only the ``file`` protocol is allowed (``-protocol_whitelist file``), and the input is given as
  an absolute ``file:`` URL, so the name is never read as another protocol's URL;
- error text names the input only: any other path or URL in ffmpeg's messages is removed.

Dimension letters: C audio channels, T time in samples.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demucs_rr.audio.decode import DecodeReport, backend_message
from demucs_rr.errors import AudioIOError

__all__ = [
    "CONTAINERS",
    "BackendError",
    "Container",
    "container_of",
    "ffmpeg_available",
    "ffmpeg_blocks",
    "probe",
    "read_ffmpeg",
]

#: Bytes :func:`container_of` looks at.
HEAD_BYTES = 64


class BackendError(Exception):
    """ffmpeg rejected a file; the message is its one-line reason (names no other file)."""


@dataclass(frozen=True)
class Container:
    """An audio or video container ffmpeg may demux.

    Attributes:
        extension: the usual file extension (a ``serve`` upload is stored under it).
        demuxer: the ffmpeg demuxer forced with ``-f``.
        options: extra input options of that demuxer.
    """

    extension: str
    demuxer: str
    options: tuple[str, ...] = ()


def _riff(head: bytes) -> Container | None:
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return Container("wav", "wav")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Container("avi", "avi")
    return None


def _mpeg_audio(head: bytes) -> Container | None:
    if head[:3] == b"ID3":
        return Container("mp3", "mp3")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        if head[1] & 0x06:  # layer bits 00: AAC ADTS
            return Container("mp3", "mp3")
        return Container("aac", "aac")
    return None


_MAGIC: tuple[tuple[int, bytes, Container], ...] = (
    (0, b"fLaC", Container("flac", "flac")),
    (0, b"OggS", Container("ogg", "ogg")),
    (0, b"FORM", Container("aiff", "aiff")),  # FORM....AIFF / AIFC
    (4, b"ftyp", Container("m4a", "mov", ("-enable_drefs", "0"))),
    (4, b"moov", Container("m4a", "mov", ("-enable_drefs", "0"))),
    (0, b"\x1a\x45\xdf\xa3", Container("webm", "matroska")),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", Container("wma", "asf")),
    (0, b"caff", Container("caf", "caf")),
    (0, b"wvpk", Container("wv", "wv")),
    (0, b"MAC ", Container("ape", "ape")),
    (0, b"#!AMR\n", Container("amr", "amr")),
    (0, b".snd", Container("au", "au")),
    (0, b"TTA1", Container("tta", "tta")),
    (0, b"MPCK", Container("mpc", "mpc8")),
    (0, b"\x0b\x77", Container("ac3", "ac3")),
)

CONTAINERS: tuple[str, ...] = ("wav", "avi", "mp3", "aac") + tuple(
    sorted({c.extension for _, _, c in _MAGIC})
)
"""Extensions of the containers the ffmpeg fallback reads (by content, not by name)."""


def container_of(head: bytes) -> Container | None:
    """The allowed container whose signature starts ``head`` (a file's first bytes), or None.

    Never a playlist, a script, an SDP session, an image or any text format.
    """
    found = _riff(head) or _mpeg_audio(head)
    if found is not None:
        return found
    for offset, magic, container in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if magic == b"FORM" and head[8:12] not in (b"AIFF", b"AIFC"):
                return None
            return container
    return None


def ffmpeg_available() -> bool:
    """Whether both ``ffmpeg`` and ``ffprobe`` are found on PATH."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*:)?(?://|/)[^\s'\"|,]+", re.IGNORECASE)


def _scrub(text: str, path: Path) -> str:
    """ffmpeg's text as one line, without any path or URL (the caller names the input)."""
    for name in (f"file:{path.resolve()}", str(path.resolve()), str(path)):
        text = text.replace(name, "")
    return backend_message(_URL.sub("", text))


def _input(path: Path) -> list[str]:
    """The input options of ``path``: protocol allow-list, forced demuxer, ``file:`` URL.

    Raises:
        BackendError: the file is not one of the allowed containers.
    """
    with open(path, "rb") as handle:
        container = container_of(handle.read(HEAD_BYTES))
    if container is None:
        raise BackendError(
            "not a known audio or video container (the ffmpeg fallback reads "
            f"{', '.join(CONTAINERS)})"
        )
    return [
        "-protocol_whitelist",
        "file",
        "-f",
        container.demuxer,
        *container.options,
        "-i",
        f"file:{path.resolve()}",
    ]


def _run(cmd: list[str], path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run an ffmpeg tool, capturing its output; a non-zero exit becomes a BackendError."""
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as err:
        raise BackendError(
            f"cannot run {cmd[0]}: {backend_message(err.strerror or str(err))}"
        ) from err
    if proc.returncode != 0:
        message = _scrub(proc.stderr.decode("utf-8", "replace"), path)
        raise BackendError(message or f"{cmd[0]} exited with status {proc.returncode}")
    return proc


def probe(path: Path) -> tuple[int, int, float | None]:
    """Channels, sample rate and duration in seconds (None: unknown) of the first audio stream.

    Raises:
        BackendError: not an allowed container, or ffprobe finds no usable audio stream.
    """
    shown = "stream=channels,sample_rate:format=duration"
    options = ["-v", "error", "-select_streams", "a:0", "-show_entries", shown, "-of", "json"]
    proc = _run(["ffprobe", *options, *_input(path)], path)
    try:
        facts = json.loads(proc.stdout.decode("utf-8", "replace"))
    except ValueError as err:
        raise BackendError("unreadable ffprobe output") from err
    streams = facts.get("streams") or []
    if not streams:
        raise BackendError("no audio stream")
    try:
        channels, samplerate = int(streams[0]["channels"]), int(streams[0]["sample_rate"])
    except (KeyError, TypeError, ValueError) as err:
        raise BackendError("ffprobe reports no channel count or sample rate") from err
    if channels < 1 or samplerate < 1:
        raise BackendError(f"invalid stream: {channels} channels at {samplerate} Hz")
    try:
        duration: float | None = float((facts.get("format") or {})["duration"])
    except (KeyError, TypeError, ValueError):
        duration = None
    return channels, samplerate, duration


def _decode_command(path: Path, channels: int, samplerate: int) -> list[str]:
    """ffmpeg decoding the first audio stream to raw f32le on stdout.

    ``-ac``/``-ar`` repeat the probed values so the output has a known layout even if the stream
    changes parameters midway (ffmpeg then converts instead of switching layout).
    """
    output = ["-map", "0:a:0", "-ac", str(channels), "-ar", str(samplerate), "-f", "f32le", "-"]
    return ["ffmpeg", "-nostdin", "-v", "error", *_input(path), *output]


def read_ffmpeg(path: Path) -> tuple[np.ndarray, int, DecodeReport]:
    """Decode the first audio stream at its native rate and channel count.

    Returns:
        ((T, C) float32 samples, sample rate, report with ffmpeg's ``-v error`` text of a run
        that succeeded: decoding errors it skipped over).

    Raises:
        BackendError: not an allowed container, or ffmpeg fails (one line).
    """
    channels, samplerate, _ = probe(path)
    proc = _run(_decode_command(path, channels, samplerate), path)
    frames = len(proc.stdout) // (4 * channels)
    if frames == 0:
        raise BackendError("no audio samples decoded")
    data = np.frombuffer(proc.stdout, dtype="<f4", count=frames * channels)
    report = DecodeReport()
    report.note(_scrub(proc.stderr.decode("utf-8", "replace"), path))
    return data.reshape(frames, channels).astype(np.float32), samplerate, report


def ffmpeg_blocks(
    path: Path, block: int
) -> tuple[int, int, float | None, Iterator[np.ndarray], DecodeReport]:
    """Decode through an ffmpeg pipe in blocks.

    Returns:
        (channels, sample rate, probed duration in seconds or None, iterator of (n, C) float32
        blocks of at most ``block`` frames, report filled once the blocks are exhausted).

    Raises:
        BackendError: not an allowed container, or ffprobe fails (before any block).
        AudioIOError: ffmpeg fails while decoding (from the iterator, naming ``path``).
    """
    channels, rate, duration = probe(path)
    cmd = _decode_command(path, channels, rate)
    report = DecodeReport()

    def blocks() -> Iterator[np.ndarray]:
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
            assert proc.stdout is not None
            try:
                while data := proc.stdout.read(4 * channels * block):
                    frames = len(data) // (4 * channels)
                    raw = bytearray(data[: frames * 4 * channels])  # writable for torch
                    yield np.frombuffer(raw, "<f4").reshape(frames, channels)
            except BaseException:  # closed early (an error downstream, Ctrl-C): stop quietly
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                proc.wait()
            errors.seek(0)
            text = _scrub(errors.read().decode("utf-8", "replace"), path)
            if proc.returncode > 0:
                raise AudioIOError(f"cannot decode {path}: ffmpeg: {text or 'failed'}")
            report.note(text)

    return channels, rate, duration, blocks(), report
