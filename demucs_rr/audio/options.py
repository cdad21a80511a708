"""Stem encoding options (format, sample encoding, clipping, mp3 settings); no torch needed,
so the command line can show its defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass

from demucs_rr.errors import ConfigError

__all__ = [
    "CLIP_MODES",
    "ENCODINGS",
    "FORMATS",
    "MP3_BITRATES",
    "MP3_SAMPLERATES",
    "WriteOptions",
    "mp3_bitrates",
]

FORMATS = ("wav", "flac", "mp3")
ENCODINGS = ("int16", "int24", "float32")
CLIP_MODES = ("rescale", "clamp", "none")

MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
"""Constant bit rates (kbps) of MPEG-1 Layer III: mp3 at 32, 44.1 and 48 kHz."""
_MPEG2_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
MP3_SAMPLERATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
"""Sample rates an mp3 can hold (MPEG-1, 2 and 2.5)."""


def mp3_bitrates(samplerate: int) -> tuple[int, ...]:
    """The constant bit rates an mp3 at ``samplerate`` can have (empty: no mp3 at that rate)."""
    if samplerate not in MP3_SAMPLERATES:
        return ()
    return MP3_BITRATES if samplerate >= 32000 else _MPEG2_BITRATES


@dataclass(frozen=True)
class WriteOptions:
    """How :func:`write_audio` encodes a waveform.

    Attributes:
        format: container, ``'wav'``, ``'flac'`` or ``'mp3'``.
        encoding: sample format of wav (``'int16'``, ``'int24'``, ``'float32'``) and flac
            (``'int16'``, ``'int24'``); ignored for mp3, which is always encoded from int16.
        clip_mode: ``'rescale'``, ``'clamp'`` or ``'none'``, see :func:`prepare_for_write`.
        mp3_bitrate: mp3 constant bit rate in kbps, one of :data:`MP3_BITRATES` (stems at
            32-48 kHz; lower rates take the MPEG-2 set, see :func:`mp3_bitrates`).
        mp3_preset: lame quality, 2 (best) .. 7 (fastest).
    """

    format: str = "wav"
    encoding: str = "int16"
    clip_mode: str = "rescale"
    mp3_bitrate: int = 320
    mp3_preset: int = 2

    def __post_init__(self) -> None:
        """Reject unknown or incompatible values with a ConfigError."""
        if self.format not in FORMATS:
            raise ConfigError(f"unknown audio format {self.format!r}, choose from {FORMATS}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown encoding {self.encoding!r}, choose from {ENCODINGS}")
        if self.clip_mode not in CLIP_MODES:
            raise ConfigError(f"unknown clip mode {self.clip_mode!r}, choose from {CLIP_MODES}")
        if self.format == "flac" and self.encoding == "float32":
            raise ConfigError("flac cannot store float32 samples: use int16 or int24")
        if self.mp3_bitrate not in (*MP3_BITRATES, *_MPEG2_BITRATES):
            raise ConfigError(
                f"mp3 bitrate {self.mp3_bitrate} kbps does not exist; use one of "
                f"{', '.join(map(str, MP3_BITRATES))}"
            )
        if not 2 <= self.mp3_preset <= 7:
            raise ConfigError(f"mp3 preset must be within 2..7, got {self.mp3_preset}")
