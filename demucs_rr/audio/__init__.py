"""Audio in/out: decoding files to (C, T) float32, channel/rate conversion, atomic writing.

Names are imported on first use (:mod:`demucs_rr.lazy`), so ``import demucs_rr.audio`` does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from demucs_rr.lazy import lazy_exports

if TYPE_CHECKING:
    from demucs_rr.audio.dsp import convert_audio, convert_channels, downmix_51_to_stereo, resample
    from demucs_rr.audio.io import AUDIO_EXTENSIONS, ffmpeg_available, load_for_model, read_audio
    from demucs_rr.audio.options import WriteOptions
    from demucs_rr.audio.write import prepare_for_write, write_audio

__all__ = [
    "AUDIO_EXTENSIONS",
    "WriteOptions",
    "convert_audio",
    "convert_channels",
    "downmix_51_to_stereo",
    "ffmpeg_available",
    "load_for_model",
    "prepare_for_write",
    "read_audio",
    "resample",
    "write_audio",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AUDIO_EXTENSIONS": "io",
        "WriteOptions": "options",
        "convert_audio": "dsp",
        "convert_channels": "dsp",
        "downmix_51_to_stereo": "dsp",
        "ffmpeg_available": "io",
        "load_for_model": "io",
        "prepare_for_write": "write",
        "read_audio": "io",
        "resample": "dsp",
        "write_audio": "write",
    },
)
