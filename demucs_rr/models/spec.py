"""Spectral front end of the hybrid models (HDemucs, HTDemucs), weight-compatible with Demucs 4.

The frequency branch sees a short-time Fourier transform with a periodic Hann window of
``n_fft`` samples (4096), hop ``n_fft // 4`` (1024), ``normalized=True`` (forward scaled by
``n_fft ** -0.5``), one-sided, centred with reflect padding. The hybrid layout then

- pre-pads the signal so that frame ``j`` is centred on sample ``hop * j + hop / 2``: ``le =
  ceil(L / hop)`` frames are kept (``2 .. le + 1`` of ``le + 4``), the Nyquist bin is dropped,
  so a (..., L) signal gives (..., n_fft / 2, le) bins x frames;
- on the way back re-adds a zero Nyquist bin and two zero frames per side, runs the inverse
  transform and crops the pre-padding. The round trip is not the identity (the ends and the
  Nyquist content are lost); the waveform branch of the models compensates.

Spectra are carried as real tensors with a trailing (real, imaginary) axis of size 2, so the same
code runs where complex FFTs are missing (Apple MPS). Two implementations compute them:

- the complex path: ``torch.stft`` / ``torch.istft`` (bit-exact with the official models);
- a real-valued path: frames times a cached DFT basis, overlap-add for the inverse. It agrees with
  the complex path to float32 rounding (about 1e-6 relative).

The real path is used on ``mps`` devices; :data:`FORCE_REAL_STFT` or the ``real`` arguments force
either implementation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "FORCE_REAL_STFT",
    "PrePadding",
    "channels_as_complex",
    "complex_as_channels",
    "hybrid_istft",
    "hybrid_stft",
    "istft",
    "magnitude",
    "pad1d",
    "phase_from_mixture",
    "stft",
    "use_real_stft",
]

#: ``None``: pick the real-valued STFT on devices without complex FFT (``mps``) only;
#: ``True`` / ``False``: force the real-valued / complex implementation everywhere.
FORCE_REAL_STFT: bool | None = None

#: Pre-padding of the hybrid layout: ``"reflect"`` (released models), ``"zeros"`` (early MDX
#: hybrids, ``hybrid_old``) or ``"none"`` (non-hybrid spectrogram models: no frame alignment).
PrePadding = Literal["reflect", "zeros", "none"]

_REAL_STFT_DEVICES = frozenset({"mps"})
_basis_cache: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def use_real_stft(device: torch.device, real: bool | None = None) -> bool:
    """Whether the real-valued STFT runs for tensors on ``device``.

    ``real`` (a per-call choice) wins over :data:`FORCE_REAL_STFT`, which wins over the device
    rule (real-valued on ``mps``).
    """
    if real is not None:
        return real
    if FORCE_REAL_STFT is not None:
        return FORCE_REAL_STFT
    return device.type in _REAL_STFT_DEVICES


def pad1d(
    x: torch.Tensor, paddings: tuple[int, int], mode: str = "constant", value: float = 0.0
) -> torch.Tensor:
    """Pad the last axis of ``x`` (..., L), allowing reflect padding wider than the input.

    Reflect padding needs ``L > padding``; for shorter inputs, ``extra = max(left, right) - L + 1``
    zeros are added first (on the right as far as the right padding allows, the rest on the left)
    and the reflected amounts shrink by as much, so the total padding is unchanged.

    Returns:
        (..., left + L + right) tensor whose samples ``[left, left + L)`` are ``x``.
    """
    length = x.shape[-1]
    left, right = paddings
    if mode == "reflect":
        max_pad = max(left, right)
        if length <= max_pad:
            extra = max_pad - length + 1
            extra_right = min(right, extra)
            extra_left = extra - extra_right
            left, right = left - extra_left, right - extra_right
            x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode, value)


# ------------------------------------------------------------------------------------ STFT


def _dft_basis(
    n_fft: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(window (N,), basis (N, 2F)): periodic Hann and [cos | sin] of the F = N/2 + 1 bins.

    Angles are reduced exactly (``k * n mod N``) and evaluated in float64 before the cast.
    """
    key = (n_fft, str(device), dtype)
    cached = _basis_cache.get(key)
    if cached is not None:
        return cached
    bins = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.int64)
    k = torch.arange(bins, dtype=torch.int64)
    angle = (n[:, None] * k[None, :]) % n_fft * (2 * math.pi / n_fft)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sin[:, 0] = 0.0
    if n_fft % 2 == 0:
        sin[:, -1] = 0.0
    basis = torch.cat([cos, sin], dim=1).to(device=device, dtype=dtype)
    window = torch.hann_window(n_fft, dtype=torch.float64).to(device=device, dtype=dtype)
    _basis_cache[key] = (window, basis)
    return window, basis


def _stft_real(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """(R, L) -> (R, F, frames, 2) without complex numbers (same conventions as :func:`stft`)."""
    window, basis = _dft_basis(n_fft, x.device, x.dtype)
    padded = F.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frames = padded.unfold(-1, n_fft, hop_length) * window  # (R, frames, N)
    spec = frames @ basis * (n_fft**-0.5)  # (R, frames, 2F)
    bins = basis.shape[1] // 2
    real, imag = spec[..., :bins], -spec[..., bins:]
    return torch.stack([real, imag], dim=-1).transpose(1, 2)  # (R, F, frames, 2)


def _overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """(R, frames, N) -> (R, (frames - 1) * hop + N), N a multiple of ``hop_length``."""
    rows, count, n_fft = frames.shape
    parts = n_fft // hop_length
    chunks = frames.reshape(rows, count, parts, hop_length)
    out = frames.new_zeros(rows, count + parts - 1, hop_length)
    for part in range(parts):
        out[:, part : part + count] += chunks[:, :, part]
    return out.reshape(rows, -1)


def _istft_real(z: torch.Tensor, hop_length: int, length: int) -> torch.Tensor:
    """(R, F, frames, 2) -> (R, length) without complex numbers (same as :func:`istft`)."""
    bins = z.shape[1]
    n_fft = 2 * bins - 2
    if n_fft % hop_length:
        raise ValueError(f"real-valued istft needs n_fft ({n_fft}) to be a multiple of the hop")
    window, basis = _dft_basis(n_fft, z.device, z.dtype)
    weight = torch.full((bins,), 2.0, device=z.device, dtype=z.dtype)
    weight[0] = 1.0
    weight[-1] = 1.0
    spec = z.transpose(1, 2) * weight[:, None]  # (R, frames, F, 2)
    coefs = torch.cat([spec[..., 0], -spec[..., 1]], dim=-1)  # (R, frames, 2F)
    frames = coefs @ basis.T * (n_fft**-0.5) * window  # (R, frames, N)
    count = frames.shape[1]
    signal = _overlap_add(frames, hop_length)
    envelope = _overlap_add((window**2).expand(1, count, n_fft), hop_length)
    start = n_fft // 2
    signal = signal[:, start : start + length]
    envelope = envelope[:, start : start + length]
    if signal.shape[-1] < length:
        signal = F.pad(signal, (0, length - signal.shape[-1]))
        envelope = F.pad(envelope, (0, length - envelope.shape[-1]), value=1.0)
    return signal / envelope


def stft(x: torch.Tensor, n_fft: int, hop_length: int, *, real: bool | None = None) -> torch.Tensor:
    """Normalised, centred (reflect) one-sided STFT with a periodic Hann window of ``n_fft``.

    Args:
        x: (..., L) signal, L > n_fft / 2.
        n_fft: FFT and window size N.
        hop_length: hop between frames.
        real: force (True) or forbid (False) the real-valued implementation; see
            :func:`use_real_stft`.

    Returns:
        (..., N/2 + 1, L // hop + 1, 2) real and imaginary parts.
    """
    *other, length = x.shape
    flat = x.reshape(-1, length)
    if use_real_stft(x.device, real):
        out = _stft_real(flat, n_fft, hop_length)
    else:
        window = torch.hann_window(n_fft).to(flat)
        spec = torch.stft(
            flat,
            n_fft,
            hop_length,
            window=window,
            win_length=n_fft,
            normalized=True,
            center=True,
            return_complex=True,
            pad_mode="reflect",
        )
        out = torch.view_as_real(spec)
    return out.reshape(*other, *out.shape[1:])


def istft(
    z: torch.Tensor, hop_length: int, length: int, *, real: bool | None = None
) -> torch.Tensor:
    """Inverse of :func:`stft` (``torch.istft`` conventions, centred, normalised).

    Args:
        z: (..., F, frames, 2) spectrum, N = 2F - 2.
        hop_length: hop between frames.
        length: number of output samples.
        real: implementation choice, see :func:`use_real_stft`.

    Returns:
        (..., length) signal.
    """
    *other, bins, frames, _ = z.shape
    flat = z.reshape(-1, bins, frames, 2)
    if use_real_stft(z.device, real):
        out = _istft_real(flat, hop_length, length)
    else:
        n_fft = 2 * bins - 2
        spec = torch.view_as_complex(flat.contiguous())
        window = torch.hann_window(n_fft).to(flat)
        out = torch.istft(
            spec,
            n_fft,
            hop_length,
            window=window,
            win_length=n_fft,
            normalized=True,
            length=length,
            center=True,
        )
    return out.reshape(*other, length)


# ------------------------------------------------------------------------- hybrid layout


def hybrid_stft(
    x: torch.Tensor, n_fft: int, padding: PrePadding = "reflect", *, real: bool | None = None
) -> torch.Tensor:
    """Frame-aligned spectrogram of the hybrid models.

    Args:
        x: (..., L) waveform.
        n_fft: FFT size N; the hop is N / 4.
        padding: pre-padding rule (see :data:`PrePadding`).
        real: implementation choice, see :func:`use_real_stft`.

    Returns:
        (..., N/2, ceil(L / hop), 2) for the hybrid paddings; (..., N/2, L // hop + 1, 2) with
        ``"none"``.
    """
    hop = n_fft // 4
    frames = math.ceil(x.shape[-1] / hop)
    if padding != "none":
        pad = hop // 2 * 3
        sides = (pad, pad + frames * hop - x.shape[-1])
        x = pad1d(x, sides, mode="reflect" if padding == "reflect" else "constant")
    z = stft(x, n_fft, hop, real=real)[..., :-1, :, :]
    if padding != "none":
        z = z[..., 2 : 2 + frames, :]
    return z


def hybrid_istft(
    z: torch.Tensor, length: int, padding: PrePadding = "reflect", *, real: bool | None = None
) -> torch.Tensor:
    """Waveform of a hybrid-layout spectrum (inverse of :func:`hybrid_stft`, up to the ends).

    Args:
        z: (..., N/2, frames, 2) spectrum without Nyquist bin.
        length: output length L.
        padding: the pre-padding used at analysis.
        real: implementation choice, see :func:`use_real_stft`.

    Returns:
        (..., L) waveform.
    """
    hop = z.shape[-3] // 2
    z = F.pad(z, (0, 0, 0, 0, 0, 1))  # zero Nyquist bin
    if padding == "none":
        return istft(z, hop, length, real=real)
    z = F.pad(z, (0, 0, 2, 2))  # two zero frames per side
    pad = hop // 2 * 3
    total = hop * math.ceil(length / hop)
    if padding == "reflect":
        return istft(z, hop, total + 2 * pad, real=real)[..., pad : pad + length]
    return istft(z, hop, total, real=real)[..., :length]


def complex_as_channels(z: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T, 2) -> (B, 2C, F, T), channel ``2c`` real and ``2c + 1`` imaginary part."""
    batch, channels, bins, frames, _ = z.shape
    return z.permute(0, 1, 4, 2, 3).reshape(batch, channels * 2, bins, frames)


def channels_as_complex(x: torch.Tensor) -> torch.Tensor:
    """(B, S, 2C, F, T) -> (B, S, C, F, T, 2): inverse of :func:`complex_as_channels`."""
    batch, sources, channels, bins, frames = x.shape
    x = x.view(batch, sources, channels // 2, 2, bins, frames)
    return x.permute(0, 1, 2, 4, 5, 3).contiguous()


def magnitude(z: torch.Tensor, *, real: bool | None = None) -> torch.Tensor:
    """(..., 2) -> (...): modulus of a real/imaginary spectrum (``real``: see
    :func:`use_real_stft`)."""
    if use_real_stft(z.device, real):
        return torch.sqrt(z[..., 0] ** 2 + z[..., 1] ** 2)
    return torch.view_as_complex(z.contiguous()).abs()


def phase_from_mixture(
    mag: torch.Tensor, mix: torch.Tensor, iterations: int = 0, *, real: bool | None = None
) -> torch.Tensor:
    """Complex source estimates from magnitudes and the mixture phase.

    ``iterations == 0`` (every released magnitude model) gives ``mag * exp(i * angle(mix))``,
    the angle of a zero bin being 0; ``iterations < 0`` gives ``mix / (1e-8 + |mix|) * mag``.

    Args:
        mag: (B, S, C, F, T) estimated magnitudes.
        mix: (B, C, F, T, 2) mixture spectrum.
        iterations: Wiener EM iterations; only 0 and negative values are implemented.
        real: implementation choice for the modulus, see :func:`use_real_stft`.

    Returns:
        (B, S, C, F, T, 2) source spectra.

    Raises:
        NotImplementedError: for ``iterations > 0`` (multichannel Wiener EM).
    """
    if iterations > 0:
        raise NotImplementedError(
            "multichannel Wiener filtering (wiener_iters > 0) is not "
            "implemented; released models use wiener_iters=0"
        )
    mix = mix[:, None]
    if iterations < 0:
        scale = mag / (1e-8 + magnitude(mix, real=real))
        return mix * scale[..., None]
    angle = torch.atan2(mix[..., 1], mix[..., 0])
    return torch.stack([mag * torch.cos(angle), mag * torch.sin(angle)], dim=-1)
