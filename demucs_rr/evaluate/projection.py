"""Per-frame projection energies of BSSEval with fixed distortion filters, in the frequency domain.

Dimension letters: S references, E estimates, E' candidate estimates per reference (1: estimate
j for reference j; S: every estimate, for the permutation search), C channels, F frames,
W window samples, K frequency bins, L filter taps.

Each frame of every reference and estimate is transformed once (zero-padded to at least
W + L - 1 samples, so the FIR projections are linear convolutions); the projections are formed
bin by bin and only their energies are kept (Parseval), so no projection is ever brought back
to the time domain. The DC and Nyquist bins of the spectra are scaled by 1/sqrt(2) first, so
every energy is a plain sum of squares times 2 / nfft. Work is done a few frames and a slice of
bins at a time, so that the working set stays in the CPU caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from demucs_rr.evaluate.spectral import Workspace, rfft

__all__ = ["ENERGIES", "Responses", "filter_responses", "frame_energies"]

#: Names of the energies :func:`frame_energies` returns, in order.
ENERGIES = ("own", "all", "interf", "artif", "true", "spat", "dist")
_CPU_FRAMES = 8  # frames per chunk on the CPU ...
_CPU_BINS = 2048  # ... and bins per slice: the slice's working set stays in the caches
_GPU_CHUNK_BYTES = 256 << 20  # GPU: one (F, S*C, K) complex buffer, every bin at once
_HALF_SQRT = 0.5**0.5


@dataclass(frozen=True)
class Responses:
    """Frequency responses of the distortion filters.

    Attributes:
        all: (S*C, E*C, K) reference channel -> ``P_all`` of every estimate channel.
        own: (S, C, E'*C, K) channel c of reference j -> ``P_own`` of (j, candidate, channel).
        nfft: FFT size (>= W + L - 1).
    """

    all: torch.Tensor
    own: torch.Tensor
    nfft: int


def filter_responses(
    filt_all: torch.Tensor, filt_own: torch.Tensor, n_src: int, n_ch: int, nfft: int
) -> Responses:
    """FFTs (size ``nfft``) of the filters.

    Args:
        filt_all: (S*C*L, E*C) filters on all references, rows ordered (source, channel, tap).
        filt_own: (S, C*L, E'*C) filters on reference j only, rows ordered (channel, tap).
        n_src: S; n_ch: C; nfft: FFT size.
    """
    taps = filt_all.shape[0] // (n_src * n_ch)
    h_all = rfft(filt_all.view(n_src * n_ch, taps, -1).transpose(1, 2), nfft)
    h_own = rfft(filt_own.view(n_src, n_ch, taps, -1).transpose(2, 3), nfft)
    return Responses(all=h_all.contiguous(), own=h_own.contiguous(), nfft=nfft)


def chunk_frames(n_sig: int, nfft: int, device: torch.device) -> int:
    """Frames scored together (their spectra are one buffer; see the chunk budgets)."""
    if device.type == "cuda":
        return max(1, _GPU_CHUNK_BYTES // (n_sig * (nfft // 2 + 1) * 16))
    return _CPU_FRAMES


def _energy(z: torch.Tensor) -> torch.Tensor:
    """(..., C, K) complex -> (...) sum of squared magnitudes over channels and bins."""
    norm: torch.Tensor = torch.linalg.vector_norm(torch.view_as_real(z), dim=(-3, -2, -1))
    return norm.square()


def _energy_of_difference(a: torch.Tensor, b: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Energy of ``a - b`` (broadcast), formed in a workspace buffer."""
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape, strict=True))  # same ndim here
    return _energy(torch.sub(a, b, out=ws.get("diff", shape, a.dtype, a.device)))


def _project(
    spec_r: torch.Tensor, h_all: torch.Tensor, h_own: torch.Tensor, ws: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, S, C, K) reference spectra -> ``P_all`` (F, E*C, K) and ``P_own`` (F, S, E'*C, K)."""
    n_fr, n_src, n_ch, k = spec_r.shape
    flat = spec_r.reshape(n_fr, n_src * n_ch, k)
    p_all = ws.get("p_all", (n_fr, h_all.shape[1], k), spec_r.dtype, spec_r.device)
    torch.mul(flat[:, :1], h_all[0], out=p_all)
    for i in range(1, flat.shape[1]):  # one multiply-add per reference channel, bin by bin
        p_all.addcmul_(flat[:, i : i + 1], h_all[i])
    p_own = ws.get("p_own", (n_fr, n_src, h_own.shape[2], k), spec_r.dtype, spec_r.device)
    torch.mul(spec_r[:, :, :1], h_own[:, 0], out=p_own)
    for c in range(1, n_ch):
        p_own.addcmul_(spec_r[:, :, c : c + 1], h_own[:, c])
    return p_all, p_own


def _accumulate(
    out: torch.Tensor,
    spec: torch.Tensor,
    h_all: torch.Tensor,
    h_own: torch.Tensor,
    ws: Workspace,
    images: bool,
    dist: bool,
) -> None:
    """Add the energies of one slice of bins to ``out`` (7, F, J, E'); ``spec`` (F, 2, S, C, K)."""
    spec_r, spec_e = spec[:, 0], spec[:, 1]
    n_fr, n_src, n_ch, k = spec_r.shape
    p_all, p_own = _project(spec_r, h_all, h_own, ws)
    cands = p_own.shape[2] // n_ch
    p_own = p_own.view(n_fr, n_src, cands, n_ch, k)  # (F, J, E', C, K)
    pair = (slice(None), None) if cands > 1 else (slice(None), slice(None), None)
    p_all_pair = p_all.view(n_fr, -1, n_ch, k)[pair]  # broadcasts against (F, J, E', C, K)
    est_pair, ref_pair = spec_e[pair], spec_r[:, :, None]
    out[0] += _energy(p_own)
    out[1] += _energy(p_all_pair)
    out[2] += _energy_of_difference(p_all_pair, p_own, ws)
    out[3] += _energy_of_difference(est_pair, p_all_pair, ws)
    if images:
        out[4] += _energy(ref_pair)
        out[5] += _energy_of_difference(p_own, ref_pair, ws)
    if dist:
        out[6] += _energy_of_difference(est_pair, ref_pair if images else p_own, ws)


def frame_energies(
    ref_fr: torch.Tensor,
    est_fr: torch.Tensor,
    resp: Responses,
    *,
    images: bool,
    dist: bool,
    ws: Workspace,
) -> torch.Tensor:
    """Projection energies of a chunk of frames, for every (reference j, candidate e) pair.

    The bins are processed in slices, so that the filter responses of a slice are read once
    for all the frames of the chunk while they are in the cache.

    Args:
        ref_fr: (F, S, C, W) reference frames (any float dtype; upcast exactly).
        est_fr: (F, S, C, W) estimate frames.
        resp: filter responses (``nfft >= W + L - 1``).
        images: also the images terms ``true = |s_j|^2`` and ``spat = |P_own - s_j|^2``.
        dist: also the SDR denominator: ``|e - s_j|^2`` (images) or ``|e - P_own|^2``.
        ws: scratch buffers.

    Returns:
        (7, F, S, E') float64 energies in :data:`ENERGIES` order: ``|P_own|^2``,
        ``|P_all|^2``, ``|P_all - P_own|^2``, ``|e - P_all|^2``, then ``true``, ``spat`` and
        ``dist`` (NaN where not asked for).
    """
    n_fr, n_src, n_ch, _ = ref_fr.shape
    k, dev = resp.nfft // 2 + 1, ref_fr.device
    spec = ws.get("spec", (n_fr, 2, n_src, n_ch, k), torch.complex128, dev)
    rfft(ref_fr, resp.nfft, spec[:, 0])
    rfft(est_fr, resp.nfft, spec[:, 1])
    # Parseval: energy = (2 / nfft) sum_k |X_k|^2 with the DC (and Nyquist) bin counted once
    spec[..., 0] *= _HALF_SQRT
    if resp.nfft % 2 == 0:
        spec[..., -1] *= _HALF_SQRT
    cands = resp.own.shape[2] // n_ch
    out = torch.zeros((len(ENERGIES), n_fr, n_src, cands), dtype=torch.float64, device=dev)
    step = k if dev.type == "cuda" else _CPU_BINS
    for k0 in range(0, k, step):
        part = slice(k0, k0 + step)
        _accumulate(
            out, spec[..., part], resp.all[..., part], resp.own[..., part], ws, images, dist
        )
    out *= 2.0 / resp.nfft
    if not images:
        out[4:6] = float("nan")
    if not dist:
        out[6] = float("nan")
    return out
