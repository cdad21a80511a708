"""Pure tensor helpers for audio: channel conversion and resampling.

Every function takes waveforms with time last, ``(C, T)`` (extra leading batch dimensions are
accepted), never modifies its input in place, and keeps the input's dtype and device.
"""

from __future__ import annotations

import logging
import math

import julius
import torch

from demucs_rr.errors import AudioIOError

logger = logging.getLogger(__name__)

#: Gain of the centre and surround channels in the ITU-R BS.775 stereo downmix (-3 dB).
DOWNMIX_GAIN: float = math.sqrt(0.5)
#: Normalisation of the 5.1 downmix so that a full-scale input cannot clip.
DOWNMIX_NORM: float = 1.0 / (1.0 + 2.0 * DOWNMIX_GAIN)


def _check_waveform(wav: torch.Tensor) -> None:
    """Raise ValueError unless ``wav`` has a channel and a time dimension, ``(..., C, T)``."""
    if wav.dim() < 2:
        raise ValueError(f"expected a waveform of shape (C, T), got shape {tuple(wav.shape)}")


def downmix_51_to_stereo(wav: torch.Tensor) -> torch.Tensor:
    """ITU-R BS.775 downmix of 5.1 audio in WAV/SMPTE order ``L R C LFE Ls Rs``.

    ``L' = L + g C + g Ls`` and ``R' = R + g C + g Rs`` with ``g = 1/sqrt(2)`` (about 0.7071),
    the LFE channel is dropped, and both outputs are scaled by ``1 / (1 + 2 g)`` (about 0.4142)
    so that a full-scale input stays within [-1, 1].

    Args:
        wav: 5.1 waveform, shape (..., 6, T).

    Returns:
        Stereo waveform, shape (..., 2, T).
    """
    if wav.shape[-2] != 6:
        raise ValueError(f"expected 6 channels (5.1), got shape {tuple(wav.shape)}")
    left, right, centre, _lfe, left_s, right_s = wav.unbind(dim=-2)
    out_l = left + DOWNMIX_GAIN * (centre + left_s)
    out_r = right + DOWNMIX_GAIN * (centre + right_s)
    return torch.stack([out_l, out_r], dim=-2) * DOWNMIX_NORM


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a waveform to ``channels`` channels.

    Policy, checked in this order: the same channel count is returned unchanged; when one
    channel is wanted, all channels are averaged; a mono input is duplicated to every output
    channel; a 6-channel (5.1) input converted to stereo gets the ITU-R BS.775 downmix (WAV/SMPTE
    order ``L R C LFE Ls Rs``: ``L' = L + 0.7071 C + 0.7071 Ls``, ``R' = R + 0.7071 C + 0.7071 Rs``,
    LFE dropped, scaled by ``1 / (1 + 2 * 0.7071)`` so a full-scale input cannot clip); any other
    input with more channels than wanted keeps its first ``channels`` channels, as the official
    tool does; an input with fewer channels that is not mono (e.g. 2 -> 3) is an error.

    Args:
        wav: waveform, shape (C_in, T) (leading batch dimensions are allowed).
        channels: number of output channels, >= 1.

    Returns:
        Waveform of shape (channels, T); the input itself when C_in == channels.

    Raises:
        AudioIOError: C_in < channels and C_in > 1.
        ValueError: ``wav`` is not at least 2-D or ``channels`` < 1.
    """
    _check_waveform(wav)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    src = wav.shape[-2]
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if src == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).clone()
    if src == 6 and channels == 2:
        return downmix_51_to_stereo(wav)
    if src > channels:
        logger.debug("keeping the first %d of %d channels", channels, src)
        return wav[..., :channels, :].clone()
    raise AudioIOError(
        f"cannot convert {src}-channel audio to {channels} channels: only mono input can be upmixed"
    )


def resample(wav: torch.Tensor, from_sr: int, to_sr: int) -> torch.Tensor:
    """Resample with ``julius.resample_frac`` (windowed sinc, 24 zero crossings, rolloff 0.945).

    The ratio is reduced by its gcd first (44100 -> 48000 becomes 147 -> 160), since julius
    builds one filter per output phase. The output length is ``floor(T * to_sr / from_sr)`` as
    julius computes it.

    Args:
        wav: waveform, shape (..., T), floating point.
        from_sr: sample rate of ``wav`` in Hz.
        to_sr: wanted sample rate in Hz.

    Returns:
        Resampled waveform, shape (..., T'); the input itself when the rates are equal.

    Raises:
        ValueError: a sample rate is not a positive integer.
    """
    from_sr, to_sr = int(from_sr), int(to_sr)
    if from_sr <= 0 or to_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {from_sr} -> {to_sr}")
    if from_sr == to_sr:
        return wav
    gcd = math.gcd(from_sr, to_sr)
    return julius.resample_frac(wav, from_sr // gcd, to_sr // gcd)


def convert_audio(wav: torch.Tensor, from_sr: int, to_sr: int, channels: int) -> torch.Tensor:
    """Convert channels (see :func:`convert_channels`), then resample (see :func:`resample`).

    Channels go first so that a downmix does not resample channels it then throws away.

    Args:
        wav: waveform, shape (C_in, T).
        from_sr: sample rate of ``wav`` in Hz.
        to_sr: wanted sample rate in Hz.
        channels: wanted number of channels.

    Returns:
        Waveform of shape (channels, T').
    """
    return resample(convert_channels(wav, channels), from_sr, to_sr)
