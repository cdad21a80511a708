"""Reading audio files into float32 (C, T) tensors, with soundfile first and ffmpeg as fallback.

wav, flac, ogg/vorbis/opus, mp3 and aiff are decoded in-process by soundfile (libsndfile), with
the checks of :mod:`demucs_rr.audio.decode` (wav headers, truncation, decoder noise on fd 2). Any
file soundfile cannot open is handed to an ``ffmpeg`` subprocess when ``ffmpeg`` and ``ffprobe``
are on PATH and the file is one of the audio or video containers ffmpeg may read
(:mod:`demucs_rr.audio.ffmpeg`: never a playlist or anything else that names other files).
Every failure is raised as a one-line :class:`~demucs_rr.errors.AudioIOError` naming the file; a
file decoded only in part gets one warning line instead.
Writing lives in :mod:`demucs_rr.audio.write` and is re-exported here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from demucs_rr.audio.decode import BLOCK, DecodeReport, backend_message, open_soundfile
from demucs_rr.audio.dsp import convert_audio
from demucs_rr.audio.ffmpeg import BackendError, ffmpeg_available, probe, read_ffmpeg
from demucs_rr.audio.pcm import open_plain_wav, read_plain_wav
from demucs_rr.audio.write import WriteOptions, prepare_for_write, write_audio
from demucs_rr.errors import AudioIOError

__all__ = [
    "AUDIO_EXTENSIONS",
    "WriteOptions",
    "ffmpeg_available",
    "load_for_model",
    "prepare_for_write",
    "probe_seconds",
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


#: Sample rates (Hz) a file may have to be converted to a model's rate.
_MIN_RATE, _MAX_RATE = 1000, 768_000
#: Largest term of the reduced resampling ratio: julius builds that many filter phases of about
#: that many taps, so an odd rate (22051 -> 44100 Hz stays 22051/44100) would take gigabytes
#: and hours. Common rates reduce to small terms (48000 -> 44100 is 160/147).
_MAX_RATIO_TERM = 2048


def _read_soundfile(path: Path) -> tuple[np.ndarray, int, DecodeReport]:
    """Decode with soundfile; returns a (T, C) float32 array, the sample rate and the report.

    Raises:
        BackendError: soundfile cannot open the file (another decoder may).
        AudioIOError: a refused wav header, or a decoder that fails midway.
    """
    source = open_soundfile(path)
    if isinstance(source, str):
        raise BackendError(source)
    blocks = list(source.blocks(BLOCK))  # the reads of read_blocks: the same failures
    if not blocks:
        raise AudioIOError(f"cannot read {path}: no audio samples decoded")
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return data, source.rate, source.report


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
    if not path.is_file():  # a FIFO or a device would block or never end
        raise AudioIOError(f"cannot read {path}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioIOError(f"cannot read {path}: {backend_message(str(err))}") from err
    if size == 0:
        raise AudioIOError(f"cannot read {path}: the file is empty")


def _decode(path: Path) -> tuple[np.ndarray, int, DecodeReport]:
    """Try soundfile, then ffmpeg; returns a (T, C) float32 array, the rate and the report."""
    try:
        decoded = _read_soundfile(path)
        logger.debug("decoded %s with soundfile", path)
        return decoded
    except BackendError as err:
        soundfile_reason = str(err)
    if not ffmpeg_available():
        raise _no_ffmpeg_error(path, soundfile_reason)
    try:
        decoded = read_ffmpeg(path)
    except BackendError as err:
        raise AudioIOError(
            f"cannot decode {path}: soundfile: {soundfile_reason}; ffmpeg: {err}"
        ) from None
    logger.debug("decoded %s with ffmpeg (soundfile: %s)", path, soundfile_reason)
    return decoded


def probe_seconds(path: str | Path) -> float | None:
    """The length of an audio file in seconds as its header tells it (soundfile, else ffprobe
    for the containers the ffmpeg fallback reads), without decoding; None when unknown or not
    readable (decoding says why)."""
    path = Path(path)
    try:
        source = open_soundfile(path)
    except (AudioIOError, OSError):
        return None
    if not isinstance(source, str):
        declared, rate = source.report.declared, source.rate
        source.close()
        return declared / rate if declared else None
    if not ffmpeg_available():
        return None
    try:
        return probe(path)[2]
    except (BackendError, OSError):
        return None


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode an audio file at its native sample rate and channel count.

    A complete 16/24/32-bit PCM or 32-bit float wav is read directly
    (:mod:`demucs_rr.audio.pcm`, the samples soundfile gives). Otherwise soundfile (wav, flac,
    ogg, mp3, aiff, ...) is tried first; whatever it rejects goes to an
    ffmpeg subprocess (first audio stream, ``-f f32le``) when ffmpeg and ffprobe are on PATH.
    A wav whose fmt chunk libsndfile would misread (bits per sample other than 8/16/24/32, or
    32/64 for float) is refused. A file that decodes to clearly less than its header declares
    (truncated), or whose decoder reported damaged data (libmpg123, ffmpeg), is returned as far
    as it decodes with one warning line logged (see :mod:`demucs_rr.audio.decode`).

    Args:
        path: audio file.

    Returns:
        ``(wav, samplerate)`` with ``wav`` a float32 tensor of shape (C, T), T >= 1.

    Raises:
        AudioIOError: one line naming the file: missing, a directory, empty, undecodable by
            every available backend (names ffmpeg when it is missing), a refused wav header, a
            decoder failing midway, no samples decoded, or NaN/infinite samples (refused, not
            zeroed: they mean the file or its producer is broken).
    """
    path = Path(path)
    _check_input_file(path)
    plain = open_plain_wav(path)
    if plain is not None:  # the common case, read directly (same samples)
        return torch.from_numpy(read_plain_wav(plain)), plain.rate
    data, samplerate, report = _decode(path)
    if not np.isfinite(data).all():
        raise AudioIOError(f"cannot read {path}: the audio contains NaN or infinite samples")
    warning = report.warning(path, samplerate, data.shape[0])
    if warning:
        logger.warning("%s", warning)
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    return wav, samplerate


def check_resampling(path: Path, source_sr: int, target_sr: int) -> None:
    """Refuse a sample rate that cannot be converted to ``target_sr`` in reasonable time/memory.

    Raises:
        AudioIOError: one line naming the file: a rate outside 1 kHz..768 kHz, or a ratio
            to ``target_sr`` with no small terms.
    """
    if source_sr == target_sr:
        return
    if not _MIN_RATE <= source_sr <= _MAX_RATE:
        raise AudioIOError(
            f"cannot use {path}: its sample rate {source_sr} Hz is outside the supported "
            f"{_MIN_RATE}-{_MAX_RATE} Hz (damaged header?)"
        )
    gcd = math.gcd(source_sr, target_sr)
    if max(source_sr, target_sr) // gcd > _MAX_RATIO_TERM:
        raise AudioIOError(
            f"cannot use {path}: its sample rate {source_sr} Hz has no simple ratio to "
            f"{target_sr} Hz ({source_sr // gcd}/{target_sr // gcd}); convert it first, e.g. "
            f"ffmpeg -i INPUT -ar {target_sr} OUTPUT.wav"
        )


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
        AudioIOError: the file cannot be read, or its channels or sample rate cannot be
            converted (see :func:`check_resampling`).
    """
    path = Path(path)
    wav, source_sr = read_audio(path)
    check_resampling(path, source_sr, samplerate)
    try:
        wav = convert_audio(wav, source_sr, samplerate, channels)
    except AudioIOError as err:
        raise AudioIOError(f"cannot use {path}: {err}") from None
    return wav, source_sr
