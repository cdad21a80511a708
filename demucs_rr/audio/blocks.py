"""Block-wise audio: decoding a file in blocks, seamless resampling, and incremental writers.

Decoding uses soundfile block reads (wav, flac, ogg, mp3, aiff) and an ``ffmpeg`` pipe for a
file soundfile rejects (only the audio and video containers of :mod:`demucs_rr.audio.ffmpeg`);
:class:`BlockResampler` gives the same samples as :func:`~demucs_rr.audio.dsp.resample` on the
whole signal; :class:`BlockWriter` appends (C, n) blocks to a wav, flac or mp3 file with exactly
the quantisation of :func:`~demucs_rr.audio.write.write_audio`.

Dimension letters: C audio channels, T time in samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import julius
import lameenc
import numpy as np
import soundfile
import torch

from demucs_rr.audio.decode import BLOCK, DecodeReport, open_soundfile
from demucs_rr.audio.dsp import convert_channels
from demucs_rr.audio.ffmpeg import BackendError, ffmpeg_available, ffmpeg_blocks
from demucs_rr.audio.io import _check_input_file, _no_ffmpeg_error, check_resampling
from demucs_rr.audio.write import _SUBTYPES, WriteOptions, to_pcm
from demucs_rr.errors import AudioIOError

logger = logging.getLogger(__name__)


class BlockResampler:
    """Resample a signal fed in blocks exactly as ``julius.resample_frac`` does on the whole.

    julius computes output frame k (``new`` samples) from input samples ``[k * old - width,
    k * old + width + old)`` with replicate padding at the edges; frames are computed once
    their inputs are buffered, and the buffer keeps only what later frames read.
    """

    def __init__(self, from_sr: int, to_sr: int) -> None:
        gcd = math.gcd(from_sr, to_sr)
        self.old, self.new = from_sr // gcd, to_sr // gcd
        self.identity = self.old == self.new
        self._resample = julius.ResampleFrac(self.old, self.new)
        self._width = 0 if self.identity else int(self._resample._width)
        self._buf: torch.Tensor | None = None
        self._start = 0  # input index of self._buf[..., 0], a multiple of old
        self._frame = 0  # next output frame to emit
        self._seen = 0  # input samples received

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Add (C, n) input samples; returns the (C, m) output samples now computable."""
        if self.identity:
            return block
        self._seen += block.shape[-1]
        self._buf = block if self._buf is None else torch.cat([self._buf, block], -1)
        ready = (self._seen - self._width - self.old) // self.old + 1  # frames fully covered
        return self._emit(max(ready, self._frame))

    def finish(self) -> torch.Tensor:
        """Flush the remaining output: ``floor(T * new / old)`` samples in all, (C, m)."""
        if self.identity or self._buf is None:
            channels = 0 if self._buf is None else self._buf.shape[0]
            return torch.zeros(channels, 0)
        total = (self._seen * self.new) // self.old
        return self._emit(-(-total // self.new), final=True)

    def _emit(self, upto: int, final: bool = False) -> torch.Tensor:
        """Output frames ``[self._frame, upto)`` as (C, (upto - frame) * new) samples."""
        assert self._buf is not None
        if upto <= self._frame:
            return self._buf.new_zeros(self._buf.shape[0], 0)
        y = self._resample(self._buf, full=True)
        base = self._start // self.old
        lo = (self._frame - base) * self.new
        hi = (upto - base) * self.new
        if final:
            hi = (self._seen * self.new) // self.old - base * self.new
        out = y[..., lo:hi]
        self._frame = upto
        keep = max(0, (upto * self.old - self._width) // self.old * self.old - self._start)
        if keep and not final:
            self._buf = self._buf[..., keep:]
            self._start += keep
        return out


def _ffmpeg_blocks(
    path: Path, block: int, soundfile_reason: str
) -> tuple[int, Iterator[np.ndarray], DecodeReport, float | None]:
    """(rate, (n, C) float32 blocks, report, probed seconds) decoded by an ffmpeg pipe (raw
    f32le), for a file soundfile rejected with ``soundfile_reason``
    (see :mod:`demucs_rr.audio.ffmpeg`)."""
    if not ffmpeg_available():
        raise _no_ffmpeg_error(path, soundfile_reason)
    try:
        _, rate, seconds, blocks, report = ffmpeg_blocks(path, block)
    except BackendError as err:
        raise AudioIOError(
            f"cannot decode {path}: soundfile: {soundfile_reason}; ffmpeg: {err}"
        ) from None
    return rate, blocks, report, seconds


def _too_long(path: Path, limit: float, seconds: float | None = None) -> AudioIOError:
    """The error for a file longer than ``limit`` seconds (``seconds``: its length, if known)."""
    lasts = f"lasts {seconds / 60:.1f} minutes, more than" if seconds else "lasts more than"
    return AudioIOError(f"cannot use {path}: it {lasts} the limit of {limit / 60:g} minutes")


def read_blocks(
    path: str | Path,
    channels: int,
    samplerate: int,
    block: int = BLOCK,
    warn: bool = True,
    max_seconds: float | None = None,
) -> tuple[int, Iterator[torch.Tensor]]:
    """Decode ``path`` in blocks converted to ``channels`` and ``samplerate``.

    The concatenated blocks equal :func:`~demucs_rr.audio.io.load_for_model` of the file (up to
    float rounding of the resampler), with the same checks: errors are one-line
    :class:`AudioIOError` naming the file; a truncated file or one whose decoder reported damaged
    data logs one warning line once the last block was decoded (see
    :mod:`demucs_rr.audio.decode`).

    Args:
        path: audio file.
        channels: channel count C of the blocks.
        samplerate: sample rate of the blocks.
        block: frames per decoded block.
        warn: log the warning line (a second pass over the same file passes False).
        max_seconds: refuse a longer file: by its header (or ffprobe) before decoding, and
            while decoding (a header may lie), before more than that much audio is decoded.

    Returns:
        (the file's own sample rate, iterator of (channels, n) float32 blocks).
    """
    path = Path(path)
    _check_input_file(path)
    source = open_soundfile(path)
    if isinstance(source, str):
        rate, raw, report, seconds = _ffmpeg_blocks(path, block, source)  # ffmpeg starts lazily
    else:
        declared = source.report.declared
        seconds = declared / source.rate if declared else None
        if max_seconds is not None and seconds is not None and seconds > max_seconds:
            source.close()
        rate, raw, report = source.rate, source.blocks(block), source.report
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise _too_long(path, max_seconds, seconds)
    try:
        check_resampling(path, rate, samplerate)
    except AudioIOError:
        if not isinstance(source, str):
            source.close()
        raise
    limit = None if max_seconds is None else int(max_seconds * rate)

    def converted() -> Iterator[torch.Tensor]:
        resampler = BlockResampler(rate, samplerate)
        seen = 0
        for data in raw:
            if not np.isfinite(data).all():
                raise AudioIOError(
                    f"cannot read {path}: the audio contains NaN or infinite samples"
                )
            seen += data.shape[0]
            if limit is not None and seen > limit:
                raise _too_long(path, max_seconds or 0.0)
            try:
                wav = convert_channels(torch.from_numpy(np.ascontiguousarray(data.T)), channels)
            except AudioIOError as err:
                raise AudioIOError(f"cannot use {path}: {err}") from None
            out = resampler.push(wav)
            if out.shape[-1]:
                yield out
        if seen == 0:
            raise AudioIOError(f"cannot read {path}: no audio samples decoded")
        warning = report.warning(path, rate, seen) if warn else None
        if warning:
            logger.warning("%s", warning)
        out = resampler.finish()
        if out.shape[-1]:
            yield out

    return rate, converted()


class BlockWriter:
    """Append (C, n) blocks to a wav, flac or mp3 file, quantised as ``write_audio`` does.

    Blocks must already have the clipping policy applied (see ``prepare_for_write``).
    """

    def __init__(self, path: Path, samplerate: int, channels: int, options: WriteOptions) -> None:
        self.path, self.options = path, options
        self._sf: soundfile.SoundFile | None = None
        self._mp3: lameenc.Encoder | None = None
        self._raw = None
        if options.format == "mp3":
            if channels not in (1, 2):
                raise AudioIOError(f"mp3 supports 1 or 2 channels, got {channels}")
            self._mp3 = lameenc.Encoder()
            self._mp3.set_bit_rate(options.mp3_bitrate)
            self._mp3.set_in_sample_rate(samplerate)
            self._mp3.set_channels(channels)
            self._mp3.set_quality(options.mp3_preset)
            self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._sf = soundfile.SoundFile(
                str(path),
                "w",
                samplerate,
                channels,
                subtype=_SUBTYPES[options.encoding],
                format=options.format.upper(),
            )

    def write(self, wav: torch.Tensor) -> None:
        """Append (C, n) float samples."""
        if self._sf is not None:
            self._sf.write(to_pcm(wav, self.options.encoding))
        elif self._mp3 is not None and self._raw is not None:
            self._raw.write(bytes(self._mp3.encode(to_pcm(wav, "int16").tobytes())))

    def close(self) -> None:
        """Flush and close the file."""
        if self._sf is not None:
            self._sf.close()
        if self._mp3 is not None and self._raw is not None:
            self._raw.write(bytes(self._mp3.flush()))
            self._raw.close()
