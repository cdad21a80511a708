"""soundfile decoding shared by :func:`~demucs_rr.audio.io.read_audio` and
:func:`~demucs_rr.audio.blocks.read_blocks`, with the checks libsndfile does not make.

- A RIFF/RF64 wav header is parsed with :mod:`struct` before libsndfile sees the file. A PCM or
  float fmt chunk whose bits per sample are not 8/16/24/32 (float: 32/64), or whose frame size
  does not match its channels and bits, is refused: libsndfile reads a 7-bit header as unsigned
  8-bit, so one second of 16-bit audio becomes two seconds of noise.
- A file that decodes to clearly less than its header declares (a truncated download: a wav data
  size past the end of the file, an mp3 Xing frame count) is decoded as far as it goes, with one
  warning line: ``<file>: header declares 600.0 s but the file holds 60.0 s (truncated?); using
  what is there``.
- C decoders print to file descriptor 2 behind Python's back (libmpg123: ``Note: Illegal
  Audio-MPEG-Header ...``). That text is captured around soundfile's open and its mp3 reads and
  becomes at most one warning line, ``<file>: the decoder reported damaged data (...)``.

Warnings are returned as text (:meth:`DecodeReport.warning`) once decoding has finished, so a
file that fails gets its one error line and no warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile

from demucs_rr.errors import AudioIOError

__all__ = [
    "BLOCK",
    "DecodeReport",
    "SoundfileSource",
    "check_wav",
    "backend_message",
    "open_soundfile",
]

# Parts of backend messages that repeat the file name, point into ffmpeg's memory or into
# libmpg123's sources: "Error opening 'x.wav': ", "[mp3 @ 0x55c1...] ", "file:/abs/x.mp3: ",
# "Error : ", "[src/libmpg123/layer3.c:INT123_do_layer3():1804] ".
_NOISE = re.compile(
    r"Error opening '[^']*': |\[\w+ @ 0x[0-9a-f]+\] |file:\S*: |\bError : |\[[^\]\s]+:\d+\] "
)

#: Frames per decoded block, in both readers: libsndfile's failures on a damaged file can
#: depend on the read sizes, so equal sizes make the two readers fail alike.
BLOCK = 2**17

_RIFF_IDS = (b"RIFF", b"RF64", b"BW64")
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
#: Valid bits per sample of the fmt tags checked here (others are left to libsndfile).
_BITS = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64)}
_MAX_CHUNKS = 4096  # chunks walked before "data"; bounds the work on a hostile header
_UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed wav's data size, or RF64's "see ds64"
#: Decoder messages that say nothing about the audio (libmpg123 on a truncated mp3's seek
#: table, reported instead as a shortfall against the declared length).
_HARMLESS = re.compile(r"Xing stream size off")
_NOISE_LIMIT = 1 << 16  # bytes of captured decoder text kept per collection

_FD2_LOCK = threading.RLock()  # file descriptor 2 is process-wide: one redirection at a time


def backend_message(text: str, limit: int = 200) -> str:
    """A decoder's message as one line, without its noise and file name (the caller adds the
    name); :func:`demucs_rr.errors.one_line` is the same for exceptions."""
    text = _NOISE.sub("", text)
    text = " ".join(text.split()).strip(" .;:")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class WavFormat:
    """The fields of a wav fmt chunk that decide how samples are read.

    Attributes:
        tag: format tag (1 PCM, 3 IEEE float; the sub-format's tag for WAVE_FORMAT_EXTENSIBLE).
        channels: channel count.
        rate: sample rate in Hz.
        block_align: bytes per frame.
        bits: bits per sample (the container size for WAVE_FORMAT_EXTENSIBLE).
    """

    tag: int
    channels: int
    rate: int
    block_align: int
    bits: int


@dataclass(frozen=True)
class WavHeader:
    """What :func:`read_wav_header` found before the data chunk.

    Attributes:
        fmt: the fmt chunk; None when missing before the data chunk or too short.
        size: the data chunk's declared size in bytes; None when missing or unknown (a
            streamed wav's 0xFFFFFFFF).
        offset: byte offset of the first sample; None without a data chunk.
    """

    fmt: WavFormat | None
    size: int | None
    offset: int | None


def _parse_fmt(body: bytes) -> WavFormat | None:
    """A fmt chunk's body as a :class:`WavFormat`; None when too short to hold one."""
    if len(body) < 16:
        return None
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
    return WavFormat(tag, channels, rate, block_align, bits)


def read_wav_header(path: Path) -> WavHeader | None:
    """The fmt chunk, declared data size and data offset of a RIFF/RF64 WAVE file.

    Only chunk headers are read (seeking over bodies), at most ``_MAX_CHUNKS`` of them.

    Returns:
        None when the file is not a RIFF/RF64 WAVE file, else its :class:`WavHeader`.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in _RIFF_IDS or head[8:12] != b"WAVE":
            return None
        fmt: WavFormat | None = None
        ds64: int | None = None
        pos = 12
        for _ in range(_MAX_CHUNKS):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"ds64":
                body = f.read(24)
                ds64 = struct.unpack_from("<Q", body, 8)[0] if len(body) >= 16 else None
            elif name == b"fmt ":
                fmt = _parse_fmt(f.read(min(size, 40)))
            elif name == b"data":
                return WavHeader(fmt, ds64 if size == _UNKNOWN_SIZE else size, pos + 8)
            pos += 8 + size + (size & 1)
        return WavHeader(fmt, None, None)


def check_wav(path: Path) -> int | None:
    """Refuse a wav whose fmt chunk libsndfile would misread; cheap for other files.

    Returns:
        The frames the header declares, or None (not a wav, a format tag other than PCM/float,
        or a data size the header leaves unknown).

    Raises:
        AudioIOError: one line naming the file: bits per sample that are not a valid width for
            the format, or a frame size that does not match the channels and bits.
    """
    try:
        header = read_wav_header(path)
    except OSError:
        return None  # soundfile will report the file it cannot open
    if header is None:
        return None
    fmt, size = header.fmt, header.size
    if fmt is None or fmt.tag not in _BITS:
        return None
    allowed = _BITS[fmt.tag]
    if fmt.bits not in allowed:
        kind = "PCM" if fmt.tag == _PCM else "float"
        widths = "/".join(str(b) for b in allowed)
        raise AudioIOError(
            f"cannot read {path}: its wav header says {fmt.bits} bits per sample, not a valid "
            f"{kind} width ({widths}): the header is damaged"
        )
    frame = fmt.channels * fmt.bits // 8
    if fmt.channels and fmt.block_align != frame:
        raise AudioIOError(
            f"cannot read {path}: its wav header is inconsistent: {fmt.channels} channel(s) of "
            f"{fmt.bits} bits make {frame}-byte frames but it declares {fmt.block_align}"
        )
    return None if size is None or not frame else size // frame


@dataclass
class DecodeReport:
    """What a decode noticed that deserves (at most) one warning line.

    Attributes:
        declared: frames the header declares, when known.
        noise_count: lines a decoder printed (libmpg123, ffmpeg ``-v error``).
        noise_first: the first of them, cleaned to one line.
    """

    declared: int | None = None
    noise_count: int = 0
    noise_first: str = ""

    def note(self, text: str) -> None:
        """Record text a decoder printed."""
        lines = [backend_message(line) for line in text.splitlines()]
        lines = [line for line in lines if line and not _HARMLESS.search(line)]
        if lines and not self.noise_count:
            self.noise_first = lines[0]
        self.noise_count += len(lines)

    def warning(self, path: Path, samplerate: int, decoded: int) -> str | None:
        """The one warning line for ``decoded`` frames of ``path`` at ``samplerate``, if any.

        Decoder messages win over a shortfall (damage explains both). A shortfall of at most 1%
        or 0.1 s is not reported: libsndfile estimates an mp3's length from its size and bit
        rate when it has no Xing header, and encoder padding differs from that estimate.
        """
        declared = self.declared
        slack = max(declared // 100 if declared else 0, samplerate // 10, 1)
        short = declared is not None and declared - decoded > slack
        if self.noise_count:  # how many lines depends on the read sizes: not said
            line = f"{path}: the decoder reported damaged data ({self.noise_first})"
            if short and declared is not None:
                held, told = _durations(decoded, declared, samplerate)
                return f"{line}; using the {held} s it decoded of {told} s declared"
            return f"{line}; using what it could decode"
        if short and declared is not None:
            told, held = _durations(declared, decoded, samplerate)
            return (
                f"{path}: header declares {told} s but the file holds {held} s (truncated?); "
                "using what is there"
            )
        return None


def _durations(a: int, b: int, samplerate: int) -> tuple[str, str]:
    """Two frame counts as seconds, with the fewest decimals (1 to 3) that tell them apart."""
    for digits in (1, 2):
        x, y = f"{a / samplerate:.{digits}f}", f"{b / samplerate:.{digits}f}"
        if x != y:
            return x, y
    return f"{a / samplerate:.3f}", f"{b / samplerate:.3f}"


class _Fd2Capture:
    """Collects what C libraries print to file descriptor 2 into a :class:`DecodeReport`."""

    def __init__(self, report: DecodeReport) -> None:
        self.report = report
        self._file: BinaryIO | None = None
        self._sink = -1

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Point fd 2 at a temporary file for the body, then record what was written."""
        with _FD2_LOCK:
            saved = self._redirect()
            try:
                yield
            finally:
                if saved is not None:
                    os.dup2(saved, 2)
                    os.close(saved)
                    self._collect()

    def _redirect(self) -> int | None:
        """Duplicate fd 2 and point it at the sink; None when there is no fd 2 to redirect."""
        with contextlib.suppress(Exception):  # a replaced or closed sys.stderr
            sys.stderr.flush()
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - close()
                self._sink = self._file.fileno()
            saved = os.dup(2)
        except OSError:
            return None
        os.dup2(self._sink, 2)
        return saved

    def _collect(self) -> None:
        """Move the sink's text into the report and empty the sink."""
        size = os.lseek(self._sink, 0, os.SEEK_END)
        if size:
            os.lseek(self._sink, 0, os.SEEK_SET)
            self.report.note(os.read(self._sink, _NOISE_LIMIT).decode("utf-8", "replace"))
            os.ftruncate(self._sink, 0)
            os.lseek(self._sink, 0, os.SEEK_SET)

    def close(self) -> None:
        """Close the sink."""
        if self._file is not None:
            self._file.close()
            self._file, self._sink = None, -1


class SoundfileSource:
    """A file soundfile opened, decoded in blocks; made by :func:`open_soundfile`.

    Attributes:
        rate: sample rate in Hz.
        channels: channel count C.
        frames: the frame count its header declares.
        report: filled while decoding; read it once :meth:`blocks` is exhausted.
    """

    def __init__(
        self, path: Path, handle: soundfile.SoundFile, noise: _Fd2Capture, declared: int | None
    ) -> None:
        self.path, self._handle, self._noise = path, handle, noise
        self.rate, self.channels = int(handle.samplerate), int(handle.channels)
        self.frames = int(handle.frames)  # what the header says (exact for wav, flac, aiff)
        self.report = noise.report
        self.report.declared = declared
        self._mpeg = handle.format == "MP3"  # libmpg123 prints while decoding

    def blocks(self, block: int) -> Iterator[np.ndarray]:
        """(n, C) float32 blocks of at most ``block`` frames, until the decoder stops.

        Raises:
            AudioIOError: the decoder fails midway (one line).
        """
        try:
            with self._handle:
                while True:
                    try:
                        with self._noise.capture() if self._mpeg else contextlib.nullcontext():
                            data = self._handle.read(block, dtype="float32", always_2d=True)
                    except Exception as err:
                        raise AudioIOError(self._failure(err)) from None
                    if data.shape[0] == 0:
                        return
                    yield data
        finally:
            self._noise.close()

    def region(self, start: int, frames: int) -> np.ndarray:
        """(n, C) float32 frames from ``start`` (``frames`` -1: to the end), then the file is
        closed; fewer frames past the end.

        Raises:
            AudioIOError: the decoder fails (one line), or a sample is NaN or infinite.
        """
        try:
            noise = self._noise.capture() if self._mpeg else contextlib.nullcontext()
            with self._handle, noise:
                if 0 < self.frames <= start:  # libsndfile refuses to seek past the end
                    return np.zeros((0, self.channels), dtype=np.float32)
                self._handle.seek(start)
                data = self._handle.read(frames, dtype="float32", always_2d=True)
        except AudioIOError:
            raise
        except Exception as err:
            raise AudioIOError(self._failure(err)) from None
        finally:
            self._noise.close()
        if not np.isfinite(data).all():
            raise AudioIOError(
                f"cannot read {self.path}: the audio contains NaN or infinite samples"
            )
        return data

    def close(self) -> None:
        """Close the file without decoding (a source whose blocks are never read)."""
        self._handle.close()
        self._noise.close()

    def _failure(self, err: Exception) -> str:
        """The one-line error for a decoder that failed midway (where depends on the block
        size, so it is not said: both readers give the same line)."""
        reason = backend_message(str(err)) or type(err).__name__
        return f"cannot decode {self.path}: {reason} (damaged or truncated file)"


def open_soundfile(path: Path) -> SoundfileSource | str:
    """Open ``path`` with soundfile after the wav checks.

    Returns:
        The open source, or soundfile's one-line reason for rejecting the file (the caller may
        try another decoder).

    Raises:
        AudioIOError: a wav header that must not be decoded at all (see :func:`check_wav`).
    """
    declared = check_wav(path)
    noise = _Fd2Capture(DecodeReport())
    try:
        with noise.capture():
            handle = soundfile.SoundFile(str(path))
    except Exception as err:
        noise.close()
        reason = backend_message(str(err) or type(err).__name__)
        return "unrecognised or corrupt data" if "not a regular file" in reason else reason
    if handle.frames <= 0:
        handle.close()
        noise.close()
        return "no audio samples"
    if declared is None and handle.frames < 2**62:  # libsndfile's "unknown length" is huge
        declared = int(handle.frames)
    return SoundfileSource(path, handle, noise, declared)
