"""Stem encoding options (format, sample encoding, clipping, mp3 settings); no torch needed,
so the command line can show its defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass

from demucs_rr.errors import ConfigError

__all__ = ["CLIP_MODES", "ENCODINGS", "FORMATS", "WriteOptions"]

FORMATS = ("wav", "flac", "mp3")
ENCODINGS = ("int16", "int24", "float32")
CLIP_MODES = ("rescale", "clamp", "none")


@dataclass(frozen=True)
class WriteOptions:
    """How :func:`write_audio` encodes a waveform.

    Attributes:
        format: container, ``'wav'``, ``'flac'`` or ``'mp3'``.
        encoding: sample format of wav (``'int16'``, ``'int24'``, ``'float32'``) and flac
            (``'int16'``, ``'int24'``); ignored for mp3, which is always encoded from int16.
        clip_mode: ``'rescale'``, ``'clamp'`` or ``'none'``, see :func:`prepare_for_write`.
        mp3_bitrate: mp3 constant bit rate in kbps (8..320).
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
        if not 8 <= self.mp3_bitrate <= 320:
            raise ConfigError(f"mp3 bitrate must be within 8..320 kbps, got {self.mp3_bitrate}")
        if not 2 <= self.mp3_preset <= 7:
            raise ConfigError(f"mp3 preset must be within 2..7, got {self.mp3_preset}")
