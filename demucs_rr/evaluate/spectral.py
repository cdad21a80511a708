"""float64 FFTs for the BSSEval kernels, and the blocked cross-correlations of long signals.

Dimension letters: P and Q signals, T samples, L lags, K frequency bins, B blocks.

On the CPU the real FFTs go through numpy's pocketfft writing into preallocated buffers: at
float64 it ran 2-2.5x faster than ``torch.fft`` (MKL) on the 2-core machine these figures come
from, and an FFT is most of BSSEval's cost. Other devices use ``torch.fft``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Workspace", "correlations", "fast_len", "rfft"]

_CORR_NFFT = 16384  # FFT size of the blocked correlations of long signals
_CORR_BLOCKS = 8  # blocks transformed together: their spectra (16 signals: 17 MB) stay cached
_ODD_FACTORS = (3, 5, 9, 15, 45)
_NUMPY_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"  # np.fft.rfft(..., out=)


def fast_len(n: int) -> int:
    """Smallest ``m * 2^j >= n`` with ``m`` in 1, 3, 5, 9, 15, 45: FFT sizes made mostly of
    radix-4 passes (pocketfft ran 2^14 * 3 = 49152 points 25 % faster per sample than the
    7-smooth 44800 here)."""
    best = 1 << max(0, (n - 1).bit_length())
    for odd in _ODD_FACTORS:
        best = min(best, odd << max(0, (-(-n // odd) - 1).bit_length()))
    return best


def rfft(x: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Real FFT along the last dim in float64, zero-padded (or cut) to ``n`` samples.

    Inputs of another dtype are upcast first (exactly, for float32), so the transform is
    always computed in float64.

    Args:
        x: (..., T) real signals, any float dtype, any strides.
        n: FFT size.
        out: optional (..., n // 2 + 1) complex128 tensor on the device of ``x`` to write to.

    Returns:
        (..., n // 2 + 1) complex128 spectra (``out`` when given).
    """
    if x.device.type != "cpu":
        spec = torch.fft.rfft(x.to(torch.float64), n=n)
        return spec if out is None else out.copy_(spec)
    arr = x.detach().numpy()
    if arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    if out is not None and _NUMPY_OUT:
        np.fft.rfft(arr, n=n, axis=-1, out=out.numpy())
        return out
    spec = torch.from_numpy(np.fft.rfft(arr, n=n, axis=-1))
    return spec if out is None else out.copy_(spec)


class Workspace:
    """Named scratch buffers reused across chunks: fresh multi-MB temporaries cost a page fault
    per page on every chunk."""

    def __init__(self) -> None:
        self._pool: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A contiguous tensor of ``shape`` backed by the buffer ``name`` (grown on demand)."""
        size = math.prod(shape)
        buf = self._pool.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self._pool[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)


def _blocks(sig: torch.Tensor, first: int, count: int, block: int) -> torch.Tensor:
    """(P, T) -> (P, count, block) view of blocks ``first..first+count-1``, zero-padded at the
    end of the signal (a copy only for the last, partial block)."""
    start, stop = first * block, (first + count) * block
    seg = sig[:, start:stop]
    if seg.shape[-1] < stop - start:
        seg = torch.nn.functional.pad(seg, (0, stop - start - seg.shape[-1]))
    return seg.view(seg.shape[0], count, block)


def correlations(x: torch.Tensor, y: torch.Tensor, lags: int) -> torch.Tensor:
    """Linear cross-correlations of ``x`` with ``x`` and ``y`` at lags 0..lags-1, blocked FFTs.

    Each signal is cut into blocks transformed once, zero-padded so that products of spectra
    are linear correlations within a block; the pairs that straddle a block boundary are added
    from small transforms of the boundary segments. Sums are formed in float64 whatever the
    input dtype.

    Args:
        x: (P, T) signals.
        y: (Q, T) signals.
        lags: number of non-negative lags L.

    Returns:
        (P, P + Q, L) float64 with ``r[p, q, k] = sum_n x[p, n] * z[q, n + k]`` (zero beyond T),
        where ``z`` is ``x`` followed by ``y``.
    """
    length, n_x = x.shape[-1], x.shape[0]
    n_all = n_x + y.shape[0]
    nfft = min(fast_len(length + lags - 1), _CORR_NFFT)
    block = nfft - lags + 1
    n_blocks = -(-length // block)
    cplx, dev, ws = torch.complex128, x.device, Workspace()
    acc = torch.zeros(nfft // 2 + 1, n_all, n_x, dtype=cplx, device=dev)
    for first in range(0, n_blocks, _CORR_BLOCKS):
        count = min(_CORR_BLOCKS, n_blocks - first)
        spec = ws.get("spec", (n_all, count, nfft // 2 + 1), cplx, dev)
        rfft(_blocks(x, first, count, block), nfft, spec[:n_x])
        if n_all > n_x:
            rfft(_blocks(y, first, count, block), nfft, spec[n_x:])
        bins = ws.get("bins", (nfft // 2 + 1, n_all, count), cplx, dev)
        bins.copy_(spec.permute(2, 0, 1))
        acc.baddbmm_(bins, bins[:, :n_x].mH)  # (K, P + Q, P): sum_b Z_q conj(X_p)
    r: torch.Tensor = torch.fft.irfft(acc.permute(2, 1, 0), n=nfft)[..., :lags]
    edges = torch.arange(1, n_blocks, device=dev) * block
    for start in range(0, edges.numel(), 64):  # pairs (n, n + k) in neighbouring blocks
        r += _edge_terms(x, y, edges[start : start + 64], lags)
    return r


def _edge_terms(x: torch.Tensor, y: torch.Tensor, edges: torch.Tensor, lags: int) -> torch.Tensor:
    """(P, P + Q, L) sums of ``x[p, n] * z[q, n + k]`` over the pairs with ``n < e <= n + k`` for
    each block boundary ``e`` of ``edges``."""
    length = x.shape[-1]
    offs = torch.arange(lags - 1, device=x.device)
    tail = x[:, edges[:, None] - lags + 1 + offs]  # (P, E, L - 1): before each boundary
    idx = edges[:, None] + offs
    inside = idx < length
    idx = idx.clamp(max=length - 1)
    head = torch.cat([x[:, idx], y[:, idx]]) * inside  # (P + Q, E, L - 1): after it
    n_small = fast_len(3 * lags)
    spec_t = rfft(tail, n_small)
    spec_h = rfft(torch.nn.functional.pad(head.to(torch.float64), (lags - 1, 0)), n_small)
    cross = (spec_h.permute(2, 0, 1) @ spec_t.permute(2, 0, 1).mH).mT.permute(1, 2, 0)
    terms: torch.Tensor = torch.fft.irfft(cross, n=n_small)[..., :lags]
    return terms
