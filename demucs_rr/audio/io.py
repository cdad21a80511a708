"""Reading audio files into float32 (C, T) tensors, with soundfile first and ffmpeg as fallback.

wav, flac, ogg/vorbis/opus, mp3 and aiff are decoded in-process by soundfile (libsndfile). Any file
soundfile rejects is handed to an ``ffmpeg`` subprocess when ``ffmpeg`` and ``ffprobe`` are on
PATH. Every failure is raised as a one-line :class:`~demucs_rr.errors.AudioIOError` naming the file.
Writing lives in :mod:`demucs_rr.audio.write` and is re-exported here.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import torch

from demucs_rr.audio.dsp import convert_audio
from demucs_rr.audio.write import WriteOptions, prepare_for_write, write_audio
from demucs_rr.errors import AudioIOError

__all__ = [
    "AUDIO_EXTENSIONS",
    "WriteOptions",
    "load_for_model",
    "prepare_for_write",
    "read_audio",
    "write_audio",
]

logger = logging.getLogger(__name__)

#: Suffixes libsndfile normally decodes in-process.
_SF_EXTENSIONS = frozenset({".wav", ".flac", ".aif", ".aiff", ".ogg", ".oga", ".opus", ".mp3"})
#: Suffixes that need the ffmpeg fallback.
_FFMPEG_EXTENSIONS = frozenset({".m4a", ".aac", ".mp4", ".mkv", ".webm", ".wma", ".mov"})
#: Lowercase suffixes (with the dot) that are treated as audio files when scanning for inputs.
AUDIO_EXTENSIONS: frozenset[str] = _SF_EXTENSIONS | _FFMPEG_EXTENSIONS


# Parts of backend messages that repeat the file name or point into ffmpeg's memory:
# "Error opening 'x.wav': ", "[mp3 @ 0x55c1...] ", "file:/abs/x.mp3: ".
_NOISE = re.compile(r"Error opening '[^']*': |\[\w+ @ 0x[0-9a-f]+\] |file:\S*: ")


class _BackendError(Exception):
    """A decoding backend rejected a file; the message is the backend's one-line reason."""


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse a backend message to one line, without the file name (the caller adds it)."""
    text = _NOISE.sub("", text)
    text = " ".join(text.split()).strip(" .;:")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Decode with soundfile; returns a (T, C) float32 array and the sample rate."""
    try:
        data, samplerate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        reason = _one_line(str(err) or type(err).__name__)
        if "not a regular file" in reason:  # libsndfile's wording for data it cannot parse
            reason = "unrecognised or corrupt data"
        raise _BackendError(reason) from err
    if data.shape[0] == 0:
        raise _BackendError("no audio samples decoded")
    return data, int(samplerate)


def ffmpeg_available() -> bool:
    """Whether both ``ffmpeg`` and ``ffprobe`` are found on PATH."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _run(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run an ffmpeg tool, capturing its output; a non-zero exit becomes a _BackendError."""
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as err:
        raise _BackendError(f"cannot run {cmd[0]}: {_one_line(str(err))}") from err
    if proc.returncode != 0:
        message = _one_line(proc.stderr.decode("utf-8", "replace"))
        message = message or f"{cmd[0]} exited with status {proc.returncode}"
        raise _BackendError(message)
    return proc


def _probe(target: str) -> tuple[int, int]:
    """Channels and sample rate of the first audio stream of ``target`` (an ffmpeg URL)."""
    options = "-v error -select_streams a:0 -show_entries stream=channels,sample_rate -of json"
    proc = _run(["ffprobe", *options.split(), "-i", target])
    try:
        streams = json.loads(proc.stdout.decode("utf-8", "replace")).get("streams", [])
    except ValueError as err:
        raise _BackendError("unreadable ffprobe output") from err
    if not streams:
        raise _BackendError("no audio stream")
    try:
        channels, samplerate = int(streams[0]["channels"]), int(streams[0]["sample_rate"])
    except (KeyError, TypeError, ValueError) as err:
        raise _BackendError("ffprobe reports no channel count or sample rate") from err
    if channels < 1 or samplerate < 1:
        raise _BackendError(f"invalid stream: {channels} channels at {samplerate} Hz")
    return channels, samplerate


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg at its native rate and channel count.

    ``-ac``/``-ar`` repeat the probed values so the raw f32le output has a known layout even if
    the stream changes parameters midway (ffmpeg then converts instead of switching layout).
    """
    target = "file:" + str(path.resolve())
    channels, samplerate = _probe(target)
    output = f"-map 0:a:0 -ac {channels} -ar {samplerate} -f f32le -"
    proc = _run(["ffmpeg", "-nostdin", "-v", "error", "-i", target, *output.split()])
    frames = len(proc.stdout) // (4 * channels)
    if frames == 0:
        raise _BackendError("no audio samples decoded")
    data = np.frombuffer(proc.stdout, dtype="<f4", count=frames * channels)
    return data.reshape(frames, channels).astype(np.float32), samplerate


def _no_ffmpeg_error(path: Path, soundfile_reason: str) -> AudioIOError:
    """The error for a file soundfile rejects when ffmpeg is not installed."""
    if path.suffix.lower() in _SF_EXTENSIONS:
        return AudioIOError(
            f"cannot decode {path}: {soundfile_reason} (soundfile); "
            "ffmpeg, used as a fallback decoder, is not installed or not on PATH"
        )
    return AudioIOError(
        f"cannot decode {path}: this format needs ffmpeg; install ffmpeg "
        "(https://ffmpeg.org, both ffmpeg and ffprobe on PATH) or convert the file to wav/flac"
    )


def _check_input_file(path: Path) -> None:
    """Raise AudioIOError for a path that is missing, not a regular file or empty."""
    if not path.exists():
        raise AudioIOError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise AudioIOError(f"cannot read {path}: is a directory, expected an audio file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioIOError(f"cannot read {path}: {_one_line(str(err))}") from err
    if size == 0:
        raise AudioIOError(f"cannot read {path}: the file is empty")


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Try soundfile, then ffmpeg; returns a (T, C) float32 array and the sample rate."""
    try:
        data, samplerate = _read_soundfile(path)
        logger.debug("decoded %s with soundfile", path)
        return data, samplerate
    except _BackendError as err:
        soundfile_reason = str(err)
    if not ffmpeg_available():
        raise _no_ffmpeg_error(path, soundfile_reason)
    try:
        data, samplerate = _read_ffmpeg(path)
    except _BackendError as err:
        raise AudioIOError(
            f"cannot decode {path}: soundfile: {soundfile_reason}; ffmpeg: {err}"
        ) from None
    logger.debug("decoded %s with ffmpeg (soundfile: %s)", path, soundfile_reason)
    return data, samplerate


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode an audio file at its native sample rate and channel count.

    soundfile (wav, flac, ogg, mp3, aiff, ...) is tried first; whatever it rejects goes to an
    ffmpeg subprocess (first audio stream, ``-f f32le``) when ffmpeg and ffprobe are on PATH.
    A partly corrupt file may decode to the part the decoder could read.

    Args:
        path: audio file.

    Returns:
        ``(wav, samplerate)`` with ``wav`` a float32 tensor of shape (C, T), T >= 1.

    Raises:
        AudioIOError: one line naming the file: missing, a directory, empty, undecodable by
            every available backend (names ffmpeg when it is missing), no samples decoded, or
            NaN/infinite samples.
    """
    path = Path(path)
    _check_input_file(path)
    data, samplerate = _decode(path)
    if not np.isfinite(data).all():
        raise AudioIOError(f"cannot read {path}: the audio contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    return wav, samplerate


def load_for_model(path: str | Path, samplerate: int, channels: int) -> tuple[torch.Tensor, int]:
    """Read a file and convert it to a model's sample rate and channel count.

    Channels are converted first (see :func:`demucs_rr.audio.dsp.convert_channels` for the
    policy), then the audio is resampled with julius.

    Args:
        path: audio file.
        samplerate: model sample rate in Hz.
        channels: model channel count.

    Returns:
        ``(wav, original_samplerate)`` with ``wav`` float32 of shape (channels, T').

    Raises:
        AudioIOError: the file cannot be read, or its channels cannot be converted.
    """
    path = Path(path)
    wav, source_sr = read_audio(path)
    try:
        wav = convert_audio(wav, source_sr, samplerate, channels)
    except AudioIOError as err:
        raise AudioIOError(f"cannot use {path}: {err}") from None
    return wav, source_sr
