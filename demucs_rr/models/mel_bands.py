"""Slaney mel filter bank and the mel band layout of Mel-Band RoFormer (no librosa needed).

:func:`slaney_mel_filters` repeats, operation for operation in float64 numpy, what
``librosa.filters.mel(sr=..., n_fft=..., n_mels=...)`` computes with its defaults (Slaney mel
scale, ``fmin = 0``, ``fmax = sr / 2``, Slaney area normalisation, float32 result), so the
weights, and above all which of them are positive, are identical. Mel-Band RoFormer only uses
that positivity pattern: a band covers the bins where its triangle is positive
(:func:`mel_band_layout`, as MSST derives it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["mel_band_layout", "slaney_mel_filters"]

_F_SP = 200.0 / 3  # Hz per mel in the linear region
_MIN_LOG_HZ = 1000.0  # start of the log region
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    """Slaney mel of one frequency (linear below 1 kHz, logarithmic above)."""
    if hz >= _MIN_LOG_HZ:
        return float(_MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP)
    return (hz - 0.0) / _F_SP


def _mel_to_hz(mels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Inverse of :func:`_hz_to_mel`, vectorised."""
    hz = 0.0 + _F_SP * mels
    log_region = mels >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_region] - _MIN_LOG_MEL))
    return hz


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> npt.NDArray[np.float32]:
    """The (n_mels, n_fft // 2 + 1) float32 mel filter bank of librosa's defaults.

    Triangles between consecutive mel-spaced frequencies from 0 Hz to ``sample_rate / 2``,
    each scaled by ``2 / (upper - lower)`` (Slaney's constant-area normalisation).
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sample_rate) / 2), n_mels + 2)
    mel_f = _mel_to_hz(mels)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def mel_band_layout(sample_rate: int, n_fft: int, num_bands: int) -> npt.NDArray[np.bool_]:
    """(num_bands, n_fft // 2 + 1) bool: which STFT bins each mel band covers (MSST's rule).

    A bin belongs to a band where the band's filter is positive; the first bin is forced into
    the first band and the last bin into the last band. Every bin must be covered and every
    band must cover a bin.

    Raises:
        ValueError: some bin is in no band, or some band has no bin (too many bands for this
            STFT size).
    """
    bank = slaney_mel_filters(sample_rate, n_fft, num_bands)
    bank[0, 0] = 1.0
    bank[-1, -1] = 1.0
    layout: npt.NDArray[np.bool_] = bank > 0
    if not layout.any(axis=0).all():
        missing = int((~layout.any(axis=0)).sum())
        raise ValueError(f"{missing} STFT bins are in no mel band with {num_bands} bands")
    if not layout.any(axis=1).all():
        empty = int((~layout.any(axis=1)).sum())
        raise ValueError(f"{empty} of {num_bands} mel bands cover no STFT bin (n_fft {n_fft})")
    return layout
