"""Audio in/out: decoding files to (C, T) float32, channel/rate conversion, atomic writing."""

from demucs_rr.audio.dsp import convert_audio, convert_channels, downmix_51_to_stereo, resample
from demucs_rr.audio.io import (
    AUDIO_EXTENSIONS,
    ffmpeg_available,
    load_for_model,
    read_audio,
)
from demucs_rr.audio.write import WriteOptions, prepare_for_write, write_audio

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
