"""Writing waveforms to wav, flac and mp3 files, atomically.

Float to integer conversion: samples are clamped to [-1, 1], multiplied by ``2**15 - 1``
(int16) or ``2**23 - 1`` (int24) and rounded to the nearest integer. The official tool truncates
toward zero instead; rounding halves the quantisation error and never changes a value by more
than one code. Readers (soundfile, ffmpeg) divide by ``2**15`` / ``2**23``, so a file read back
is smaller by a factor 32767/32768 (0.00003 dB), exactly as with the official outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lameenc
import numpy as np
import soundfile
import torch

from demucs_rr.audio.options import CLIP_MODES, MP3_SAMPLERATES, WriteOptions, mp3_bitrates
from demucs_rr.errors import AudioIOError, ConfigError, one_line
from demucs_rr.staging import atomic_write, is_disk_full

logger = logging.getLogger(__name__)

_SUBTYPES = {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}
_INT16_SCALE = 2**15 - 1
_INT24_SCALE = 2**23 - 1


def prepare_for_write(wav: torch.Tensor, clip_mode: str) -> torch.Tensor:
    """Apply the clipping policy of the official tool (v4) before encoding.

    ``'rescale'`` divides by ``max(1.01 * peak, 1)`` (only loud signals are scaled down, to a
    peak of 1/1.01); ``'clamp'`` clips to [-0.99, 0.99]; ``'none'`` leaves samples unchanged (the
    integer encoders still clamp to [-1, 1]).

    Args:
        wav: waveform, shape (C, T).
        clip_mode: ``'rescale'``, ``'clamp'`` or ``'none'``.

    Returns:
        New float32 tensor of shape (C, T); ``wav`` is not modified.

    Raises:
        AudioIOError: ``wav`` holds NaN or infinite samples.
        ConfigError: unknown ``clip_mode``.
    """
    if clip_mode not in CLIP_MODES:
        raise ConfigError(f"unknown clip mode {clip_mode!r}, choose from {CLIP_MODES}")
    wav = wav.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(wav).all()):
        raise AudioIOError("audio to write contains NaN or infinite samples")
    if clip_mode == "rescale":
        peak = float(wav.abs().max()) if wav.numel() else 0.0
        return wav / max(1.01 * peak, 1.0)
    if clip_mode == "clamp":
        return wav.clamp(-0.99, 0.99)
    return wav.clone()


def to_pcm(wav: torch.Tensor, encoding: str) -> np.ndarray:
    """Quantise a float waveform for soundfile, interleaved (T, C).

    Args:
        wav: float waveform, shape (C, T), nominal range [-1, 1].
        encoding: ``'int16'``, ``'int24'`` or ``'float32'``.

    Returns:
        (T, C) array: int16 codes; int24 codes shifted into the top 3 bytes of int32 (soundfile
        keeps the top 24 bits of int32 data for PCM_24, so the codes are written exactly); or
        float32 samples unchanged.
    """
    if encoding == "float32":
        return np.ascontiguousarray(wav.t().numpy(), dtype=np.float32)
    scale = _INT16_SCALE if encoding == "int16" else _INT24_SCALE
    codes = torch.round(wav.clamp(-1.0, 1.0).double() * scale).t().numpy()
    if encoding == "int16":
        return np.ascontiguousarray(codes, dtype=np.int16)
    return np.ascontiguousarray(codes.astype(np.int32) << 8)


def _encode_mp3(wav: torch.Tensor, samplerate: int, options: WriteOptions) -> bytes:
    """Encode (C, T) with lameenc from interleaved int16; C must be 1 or 2."""
    channels = wav.shape[0]
    if channels not in (1, 2):
        raise AudioIOError(f"mp3 supports 1 or 2 channels, got {channels}")
    allowed = mp3_bitrates(samplerate)
    if options.mp3_bitrate not in allowed:
        rates = f"bit rates at {samplerate} Hz: {', '.join(map(str, allowed))}" if allowed else ""
        raise AudioIOError(
            f"an mp3 cannot hold {samplerate} Hz audio at {options.mp3_bitrate} kbps"
            + (f" ({rates})" if rates else f" (mp3 rates: {', '.join(map(str, MP3_SAMPLERATES))})")
            + "; use wav or flac, or another --mp3-bitrate"
        )
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(options.mp3_bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_out_sample_rate(samplerate)  # lame would lower it for low bit rates
    encoder.set_channels(channels)
    encoder.set_quality(options.mp3_preset)
    pcm = to_pcm(wav, "int16")
    return bytes(encoder.encode(pcm.tobytes()) + encoder.flush())


def _encode_to(tmp: Path, wav: torch.Tensor, samplerate: int, options: WriteOptions) -> None:
    """Encode ``wav`` (C, T) into the already created file ``tmp``."""
    if options.format == "mp3":
        data = _encode_mp3(wav, samplerate, options)
        with open(tmp, "wb") as handle:
            handle.write(data)
        return
    soundfile.write(
        str(tmp),
        to_pcm(wav, options.encoding),
        samplerate,
        subtype=_SUBTYPES[options.encoding],
        format=options.format.upper(),
    )


def encode_file(wav: torch.Tensor, path: Path, samplerate: int, options: WriteOptions) -> None:
    """Apply the clip mode and encode (C, T) ``wav`` straight into ``path``, not atomically:
    for callers that stage files themselves (:class:`~demucs_rr.staging.OutputGroup`).

    Raises:
        AudioIOError: non-finite samples, an mp3 with more than 2 channels.
        OSError, RuntimeError: the file cannot be written (soundfile raises RuntimeError).
    """
    if wav.dim() != 2:
        raise AudioIOError(f"cannot write {path}: expected shape (C, T), got {tuple(wav.shape)}")
    _encode_to(path, prepare_for_write(wav, options.clip_mode), int(samplerate), options)


def write_audio(
    wav: torch.Tensor,
    path: str | Path,
    samplerate: int,
    options: WriteOptions = WriteOptions(),
) -> Path:
    """Write a waveform atomically: the file at ``path`` is either complete or untouched.

    The audio is encoded into a hidden ``.NAME.HOST-PID-TAG.part`` in the target directory, then
    renamed onto ``path`` with ``os.replace`` (no fsync). On any failure the temporary file is
    removed and a pre-existing file at ``path`` is left as it was. Parent directories are
    created.

    Args:
        wav: waveform, shape (C, T), float, nominal range [-1, 1].
        path: output file; its suffix is not checked against ``options.format``.
        samplerate: sample rate in Hz.
        options: format, encoding and clipping, see :class:`WriteOptions`.

    Returns:
        ``path`` as a Path.

    Raises:
        AudioIOError: ``cannot write PATH: reason`` for non-finite samples, an mp3 with more than
            2 channels, an unwritable location or an encoder failure; ``no space left on device
            while writing PATH`` when the disk is full.
    """
    path = Path(path)
    if wav.dim() != 2:
        raise AudioIOError(f"cannot write {path}: expected shape (C, T), got {tuple(wav.shape)}")
    try:
        data = prepare_for_write(wav, options.clip_mode)
        with atomic_write(path) as tmp:
            _encode_to(tmp, data, int(samplerate), options)
    except Exception as err:
        if not isinstance(err, AudioIOError) and is_disk_full(err, path.parent):
            raise AudioIOError(f"no space left on device while writing {path}") from None
        raise AudioIOError(f"cannot write {path}: {one_line(err, limit=500)}") from err
    logger.debug("wrote %s (%s, %s)", path, options.format, options.encoding)
    return path
