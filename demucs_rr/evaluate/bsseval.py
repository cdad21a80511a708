"""BSSEval v4 (as museval computes it for MUSDB18) in torch, vectorised over S, C and frames.

Dimension letters: S sources (references and estimates, estimate ``k`` scored against reference
``k``), C channels, T samples, F frames, L filter taps (512), K frequency bins.

The decomposition is the "images" one of BSS Eval: each estimate is projected, by least-squares
multichannel FIR filters of ``L`` taps, on the delayed copies of its own reference (``P_own``)
and of all references (``P_all``). With ``s`` the reference and ``e`` the estimate, both padded
with ``L - 1`` zeros:

* ISR = |s|^2 / |P_own - s|^2, SIR = |P_own|^2 / |P_all - P_own|^2,
  SAR = |P_all|^2 / |e - P_all|^2;
* SDR = |s|^2 / |e - s|^2 (the three error terms add up to ``e - s``), so SDR is a framewise SNR
  that needs no filters: :func:`demucs_rr.evaluate.metrics.framewise_sdr` computes it in O(T).

v4 estimates the filters once from the whole track and applies them to every frame's
references; v3 (``framewise_filters=True``) re-estimates them per frame. The correlations use
blocked FFTs; the normal equations (block Toeplitz, S*C*L unknowns) are solved by a block
Levinson recursion in O(L^2 (SC)^3) (dense Cholesky or LU on request, and for small systems);
channels that are silent or copies of another channel are left out of the projection basis
(they make the equations exactly singular without changing the projections); the per-frame
projection energies are taken in the frequency domain (Parseval), so no projection is ever
brought back to the time domain. ``sources_version=True`` gives the older ``bss_eval_sources``
ratios (no ISR) and ``compute_permutation=True`` the best estimate order in the mean-SIR sense,
as museval does.
A frame where any reference or any estimate is digitally silent (its channel sum is exactly zero
throughout) is NaN for every metric of every source; a zero denominator gives +inf.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from demucs_rr.errors import ConfigError

FILTERS_LEN = 512
SOLVERS = ("levinson", "cholesky", "lu")
_EPS = torch.finfo(torch.float64).eps
_CORR_NFFT = 16384  # FFT size of the blocked correlations of long signals
_CORR_BLOCKS = 48  # blocks per chunk in the correlation loop (bounds memory)
_FRAME_CHUNK = 16  # frames per chunk in the projection loop (bounds memory)
_LEVINSON_MIN = 2048  # fewer unknowns: a dense Cholesky is faster than the Python recursion


@dataclass(frozen=True)
class BSSEvalResult:
    """Framewise BSSEval scores in dB.

    Attributes:
        sdr: (S, F) signal to distortion ratio.
        isr: (S, F) image to spatial distortion ratio (NaN in the sources version).
        sir: (S, F) signal to interference ratio.
        sar: (S, F) signal to artefacts ratio.
        perm: (S, F') estimate index matched with each reference; F' = 1 unless the filters are
            framewise and the permutation is searched.
    """

    sdr: torch.Tensor
    isr: torch.Tensor
    sir: torch.Tensor
    sar: torch.Tensor
    perm: torch.Tensor


def fast_len(n: int) -> int:
    """Smallest 7-smooth integer >= ``n`` (an efficient FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    for p7 in (1, 7, 49):
        for p5 in (1, 5, 25, 125):
            for p3 in (1, 3, 9, 27, 81):
                m = p7 * p5 * p3
                if m > best:
                    continue
                m <<= max(0, (-(-n // m) - 1).bit_length())
                best = min(best, m)
    return best


def frame_layout(length: int, window: int | None, hop: int | None) -> tuple[int, int, int]:
    """museval's framing: returns (number of frames F, window, hop) in samples.

    A window of ``None`` or >= ``length`` gives one frame covering the whole signal; otherwise
    ``F = floor((length - window + hop) / hop)`` frames ``[t * hop, t * hop + window)``, so a
    trailing partial window is never scored.
    """
    if window is None or window >= length:
        return 1, length, length
    if hop is None or hop <= 0 or window <= 0:
        raise ConfigError(f"window and hop must be positive, got {window} and {hop}")
    return (length - window + hop) // hop, window, hop


def _frames(x: torch.Tensor, window: int, hop: int, n_frames: int) -> torch.Tensor:
    """(..., T) -> (F, ..., window) view of the frames."""
    out = x[..., : (n_frames - 1) * hop + window].unfold(-1, window, hop)
    return out.movedim(-2, 0)


def frame_grams(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(S, C, F, W) frame views -> (S, F, C, C) float64 inner products ``<x_c, y_c'>``.

    One matrix product per source on strided views (no copy): each input is read once, at
    memory speed, which elementwise reductions do not reach.
    """
    return torch.stack(
        [x[s].transpose(0, 1) @ y[s].transpose(0, 1).mT for s in range(x.shape[0])]
    ).to(torch.float64)


def silent_from_grams(x: torch.Tensor, grams: torch.Tensor, rtol: float) -> torch.Tensor:
    """(S, F) museval silence (channel sum exactly zero) of (S, C, F, W) frames.

    The energy of the channel sum is the sum of the Gram entries; only frames where it is
    (near) zero are checked sample by sample.
    """
    cands = grams.sum(dim=(-1, -2)) <= rtol * torch.diagonal(grams, dim1=-2, dim2=-1).sum(-1)
    out = torch.zeros_like(cands)
    for s, f in cands.nonzero().tolist():
        out[s, f] = bool((x[s, :, f].sum(dim=0) == 0).all())
    return out


def silent_frames(
    refs: torch.Tensor, ests: torch.Tensor, window: int | None = 44100, hop: int | None = 44100
) -> torch.Tensor:
    """(F,) True where any reference or estimate has an all-zero channel sum in the frame."""
    n_frames, win, hop_ = frame_layout(refs.shape[-1], window, hop)
    out = torch.zeros(n_frames, dtype=torch.bool, device=refs.device)
    for x in (refs, ests):
        fr = x.unfold(-1, win, hop_)[:, :, :n_frames]  # (S, C, F, W)
        fr = fr if hop_ == win else fr.contiguous()
        out |= silent_from_grams(fr, frame_grams(fr, fr), 1e-9).any(dim=0)
    return out


def db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """10 log10(num / den), +inf where den == 0 (no epsilon, as BSS Eval)."""
    inf = torch.full_like(num, float("inf"))
    return torch.where(den == 0, inf, 10 * torch.log10(num / torch.where(den == 0, 1, den)))


def _check(refs: torch.Tensor, ests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (S, C, T) pairs and return them as float64."""
    if refs.dim() != 3 or refs.shape != ests.shape:
        raise ConfigError(
            f"references and estimates must both be (S, C, T), got "
            f"{tuple(refs.shape)} and {tuple(ests.shape)}"
        )
    if refs.shape[-1] == 0 or refs.shape[0] == 0:
        raise ConfigError("references and estimates must not be empty")
    return refs.to(torch.float64), ests.to(refs.device, torch.float64)


def correlations(x: torch.Tensor, y: torch.Tensor, lags: int) -> torch.Tensor:
    """Linear cross-correlations of ``x`` with ``x`` and ``y`` at lags 0..lags-1, blocked FFTs.

    Each signal is cut into blocks transformed once, zero-padded so that products of spectra
    are linear correlations within a block; the pairs that straddle a block boundary are added
    from small transforms of the boundary segments.

    Args:
        x: (P, T) signals.
        y: (Q, T) signals.
        lags: number of non-negative lags L.

    Returns:
        (P, P + Q, L) with ``r[p, q, k] = sum_n x[p, n] * z[q, n + k]`` (zero beyond T), where
        ``z`` is ``x`` followed by ``y``.
    """
    length = x.shape[-1]
    nfft = min(fast_len(length + lags - 1), _CORR_NFFT)
    block = nfft - lags + 1
    r = torch.fft.irfft(_block_products(x, y, block, nfft), n=nfft)[..., :lags]
    edges = torch.arange(1, -(-length // block), device=x.device) * block
    if edges.numel():  # pairs (n, n + k) in neighbouring blocks
        offs = torch.arange(lags - 1, device=x.device)
        tail = x[:, edges[:, None] - lags + 1 + offs]  # (P, E, L - 1)
        idx = edges[:, None] + offs
        head = torch.cat([x, y])[:, idx.clamp(max=length - 1)] * (idx < length)  # (P+Q, E, L-1)
        n_small = fast_len(3 * lags)
        spec_t = torch.fft.rfft(tail, n=n_small)
        spec_h = torch.fft.rfft(torch.nn.functional.pad(head, (lags - 1, 0)), n=n_small)
        cross = (spec_h.permute(2, 0, 1) @ spec_t.permute(2, 0, 1).mH).mT.permute(1, 2, 0)
        r += torch.fft.irfft(cross, n=n_small)[..., :lags]
    return r


def _block_products(x: torch.Tensor, y: torch.Tensor, block: int, nfft: int) -> torch.Tensor:
    """(P, T), (Q, T) signals -> (P, P + Q, K): sums over blocks of ``conj(X_p) Z_q``."""
    length, n_bins, cplx = x.shape[-1], nfft // 2 + 1, torch.complex128
    n_x, n_all = x.shape[0], x.shape[0] + y.shape[0]
    full, ws = length // block, Workspace()
    acc = torch.zeros(n_bins, n_all, n_x, dtype=cplx, device=x.device)
    starts = list(range(0, full, _CORR_BLOCKS)) + ([full] if full * block < length else [])
    for b0 in starts:
        nb = min(full, b0 + _CORR_BLOCKS) - b0
        n_cols = nb if nb else 1
        spec = ws.get("spec", (n_all, n_cols, n_bins), cplx, x.device)
        for sig, part in [(x, spec[:n_x])] + ([(y, spec[n_x:])] if y.shape[0] else []):
            chunk = (
                sig[:, b0 * block : (b0 + nb) * block].unflatten(-1, (nb, block))
                if nb
                else sig[:, b0 * block :, None].mT
            )  # full blocks, or the last partial one
            torch.fft.rfft(chunk, n=nfft, out=part)
        st = ws.get("st", (n_bins, n_all, n_cols), cplx, x.device).copy_(spec.permute(2, 0, 1))
        acc.baddbmm_(st, st[:, :n_x].mH)  # (K, P + Q, P): sum_b Z_q conj(X_p)
    return acc.permute(2, 1, 0)


def _lag_table(r: torch.Tensor) -> torch.Tensor:
    """(..., P, P, L) correlations -> (..., P, P, 2L-1) with lag d of ``<x_p, x_q shifted>`` at
    index L - 1 + d, so that the Gram entry ``[(p, a), (q, b)]`` sits at lag ``a - b``."""
    return torch.cat([r.transpose(-3, -2)[..., 1:].flip(-1), r], dim=-1)


def gram(r: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the delayed copies from their correlations.

    Args:
        r: (..., P, P, L) correlations from :func:`correlations` of the references with themselves.

    Returns:
        (..., P * L, P * L) with entry ``[(p, a), (q, b)] = <x_p delayed a, x_q delayed b>``.
    """
    n_sig, lags = r.shape[-2], r.shape[-1]
    a = torch.arange(lags, device=r.device)
    g = _lag_table(r)[..., a[:, None] - a[None, :] + lags - 1]  # (..., P, Q, La, Lb)
    return g.transpose(-3, -2).reshape(*r.shape[:-3], n_sig * lags, n_sig * lags)


def block_levinson(rlag: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Solve ``T x = y`` for symmetric positive definite block-Toeplitz ``T`` in O(n^2 P^3).

    Whittle's multichannel Levinson recursion: forward and backward predictors grow one block
    per step and update the solution.

    Args:
        rlag: (B, 2n-1, P, P) blocks: ``T[i, j] = rlag[:, j - i + n - 1]``.
        y: (B, n, P, m) right-hand sides.

    Returns:
        (B, n, P, m) solution.
    """
    n = y.shape[1]
    fwd = torch.zeros(rlag.shape[0], n, *rlag.shape[-2:], dtype=rlag.dtype, device=rlag.device)
    bwd, x = torch.zeros_like(fwd), torch.zeros_like(y)
    fwd[:, 0] = bwd[:, 0] = torch.eye(rlag.shape[-1], dtype=rlag.dtype, device=rlag.device)
    err_f, err_b = rlag[:, n - 1].clone(), rlag[:, n - 1].clone()
    x[:, 0] = _lu_solve(err_f, y[:, 0])[0]
    for k in range(1, n):
        r_neg, r_pos = rlag[:, n - 1 - k : n - 1], rlag[:, n : n + k]  # T[k, :k] and T[0, 1:k+1]
        delta_f = torch.einsum("bjpq,bjqr->bpr", r_neg, fwd[:, :k])
        delta_b = torch.einsum("bjpq,bjqr->bpr", r_pos, bwd[:, :k])
        eps = torch.einsum("bjpq,bjqr->bpr", r_neg, x[:, :k])
        gain_f, gain_b = _lu_solve(err_b, delta_f)[0], _lu_solve(err_f, delta_b)[0]
        new_b = torch.cat(
            [-(fwd[:, :1] @ gain_b[:, None]), bwd[:, :k] - fwd[:, 1 : k + 1] @ gain_b[:, None]],
            dim=1,
        )
        fwd[:, 1 : k + 1] -= bwd[:, :k] @ gain_f[:, None]
        bwd[:, : k + 1] = new_b
        err_f, err_b = err_f - delta_b @ gain_f, err_b - delta_f @ gain_b
        x[:, : k + 1] += bwd[:, : k + 1] @ _lu_solve(err_b, y[:, k] - eps)[0][:, None]
    return x


def _lu_solve(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``solve_ex`` one matrix at a time: batched LU in MKL can hang after a
    ``torch.set_num_threads`` call (illegal-parameter errors in DLASWP); single matrices work."""
    if a.dim() == 2:
        return torch.linalg.solve_ex(a, b)
    outs = [torch.linalg.solve_ex(a_i, b_i) for a_i, b_i in zip(a, b, strict=True)]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def _solve(g: torch.Tensor, d: torch.Tensor, solver: str) -> torch.Tensor:
    """Solve ``(g + eps I) x = d`` batched over a leading dim, like museval (LU, else lstsq)."""
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    reg = g + _EPS * eye
    if solver == "cholesky":
        factor, info = torch.linalg.cholesky_ex(reg)
        if not bool(info.any()):
            return torch.cholesky_solve(d, factor)
    elif solver != "lu":
        raise ConfigError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    x, info = _lu_solve(reg, d)
    if bool(info.any()):
        driver = "gelsd" if g.device.type == "cpu" else None
        fallback = torch.linalg.lstsq(
            g.cpu() if driver else g, d.cpu() if driver else d, driver=driver
        ).solution.to(g.device)
        bad = (info != 0)[..., None, None]
        x = torch.where(bad, fallback, x)
    return x


@dataclass(frozen=True)
class _Filters:
    """Projection filters. ``all``: (S*C*L, E*C) on all references; ``own``: (S, C*L, E'*C)
    on reference j only, for the E' candidate estimates of j (E' = 1: estimate j itself)."""

    all: torch.Tensor
    own: torch.Tensor


def redundant_channels(r0: torch.Tensor, n_src: int, rtol: float = 1e-10) -> torch.Tensor:
    """Channels that add nothing to the projection subspace.

    A channel that is all zero, or (to ``rtol`` in energy) proportional to an earlier channel
    of its source (mono-as-stereo), makes the normal equations exactly singular and leaves the
    LU/Cholesky solution to rounding noise; it is left out of the filters, which does not change
    the projections.

    Args:
        r0: (S*C, S*C) lag-0 inner products of the reference channels.
        n_src: number of sources S.

    Returns:
        (S, C) True for the channels to leave out.
    """
    n_ch = r0.shape[0] // n_src
    blocks = torch.stack(
        [r0[j * n_ch : (j + 1) * n_ch, j * n_ch : (j + 1) * n_ch] for j in range(n_src)]
    )  # (S, C, C)
    energy = torch.diagonal(blocks, dim1=-2, dim2=-1)
    out = energy == 0
    for c in range(1, n_ch):
        for a in range(c):
            ea = energy[:, a].clamp_min(torch.finfo(r0.dtype).tiny)
            resid = energy[:, c] - blocks[:, a, c].square() / ea
            out[:, c] |= (resid <= rtol * energy[:, c]) & ~out[:, a]
    return out


def _toeplitz_residual(rlag: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) relative residual ``|T x - y| / |y|`` of a block-Toeplitz system, by FFT."""
    n = x.shape[1]
    nfft = fast_len(3 * n - 2)
    h = torch.fft.rfft(rlag.flip(1), n=nfft, dim=1)  # T x is the convolution of x with it
    tx = torch.fft.irfft(h @ torch.fft.rfft(x, n=nfft, dim=1), n=nfft, dim=1)[:, n - 1 : 2 * n - 1]
    return (tx - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp_min(1e-300)


def _solve_normal(r: torch.Tensor, d: torch.Tensor, solver: str) -> torch.Tensor:
    """Solve the (eps-regularised) normal equations of the delayed copies of some signals.

    Args:
        r: (B, P, P, L) correlations of the signals (see :func:`correlations`).
        d: (B, P * L, m) right-hand sides, rows ordered (signal, delay).
        solver: ``levinson`` (block-Toeplitz recursion, O(L^2 P^3); used above
            ``_LEVINSON_MIN`` unknowns, where it beats the O((PL)^3) factorisation, and falling
            back to Cholesky when its residual exceeds 1e-9), ``cholesky`` (LU fallback), ``lu``.

    Returns:
        (B, P * L, m) filters.
    """
    bsz, n_sig, _, lags = r.shape
    if solver == "levinson" and n_sig * lags > _LEVINSON_MIN:
        rlag = _lag_table(r).flip(-1).permute(0, 3, 1, 2).contiguous()  # T[i, j] at j - i
        rlag[:, lags - 1] += _EPS * torch.eye(n_sig, dtype=r.dtype, device=r.device)
        y = d.view(bsz, n_sig, lags, -1).transpose(1, 2)
        x = block_levinson(rlag, y)
        if bool((_toeplitz_residual(rlag, x, y) <= 1e-9).all()):
            return x.transpose(1, 2).reshape(d.shape)
    return _solve(gram(r), d, "lu" if solver == "lu" else "cholesky")


def _solve_kept(r: torch.Tensor, d: torch.Tensor, keep: torch.Tensor, solver: str) -> torch.Tensor:
    """:func:`_solve_normal` for one system restricted to the kept signals; others get 0.

    Args:
        r: (P, P, L) correlations; d: (P * L, m); keep: (P,) signals to use.
    """
    n_sig, lags = r.shape[0], r.shape[-1]
    out = torch.zeros_like(d).view(n_sig, lags, -1)
    idx = keep.nonzero().squeeze(-1)
    if idx.numel():
        sub = _solve_normal(
            r[idx][:, idx][None], d.view(n_sig, lags, -1)[idx].reshape(1, -1, d.shape[-1]), solver
        )
        out[idx] = sub.view(idx.numel(), lags, -1)
    return out.view(d.shape)


def compute_filters(
    refs: torch.Tensor,
    ests: torch.Tensor,
    filters_len: int = FILTERS_LEN,
    all_pairs: bool = False,
    solver: str = "levinson",
) -> _Filters:
    """Least-squares distortion filters of every estimate on the delayed references.

    Args:
        refs: (S, C, T) float64 references.
        ests: (S, C, T) float64 estimates.
        filters_len: filter taps L.
        all_pairs: own-reference filters for every (reference, estimate) pair, not only j, j.
        solver: ``levinson``, ``cholesky`` or ``lu`` (see :func:`_solve_normal`).
    """
    n_src, n_ch, _ = refs.shape
    n_sig = n_src * n_ch
    r = correlations(refs.reshape(n_sig, -1), ests.reshape(n_sig, -1), filters_len)
    rr = r[:, :n_sig]
    d = r[:, n_sig:].permute(0, 2, 1).reshape(n_sig * filters_len, n_sig)  # (P*L, E*C)
    keep = ~redundant_channels(rr[..., 0], n_src)  # (S, C)
    c_all = _solve_kept(rr, d, keep.flatten(), solver)
    d4 = d.view(n_src, n_ch * filters_len, n_src, n_ch)
    own_r = torch.stack(
        [rr[j * n_ch : (j + 1) * n_ch, j * n_ch : (j + 1) * n_ch] for j in range(n_src)]
    )  # (S, C, C, L)
    d_own = torch.stack([d4[j].flatten(1) if all_pairs else d4[j, :, j] for j in range(n_src)])
    if bool(keep.all()):
        c_own = _solve_normal(own_r, d_own, solver)
    else:
        c_own = torch.stack(
            [_solve_kept(own_r[j], d_own[j], keep[j], solver) for j in range(n_src)]
        )
    return _Filters(all=c_all, own=c_own)


class Workspace:
    """Named scratch buffers reused across chunks: fresh multi-MB temporaries cost a page fault
    per page on every chunk, which dominated the projection stage."""

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


def _parseval_weights(nfft: int, device: torch.device) -> torch.Tensor:
    """(K,) weights: ``sum_k w_k |X_k|^2`` is the energy of a real signal of length nfft."""
    w = torch.full((nfft // 2 + 1,), 2.0 / nfft, dtype=torch.float64, device=device)
    w[0] = 1.0 / nfft
    if nfft % 2 == 0:
        w[-1] = 1.0 / nfft
    return w


@dataclass(frozen=True)
class _Responses:
    """Filter frequency responses: ``all`` (K, S*C, E*C) maps reference channels to ``P_all``
    of every estimate; ``own`` (K, S*C, S*E'*C), block diagonal over sources, to ``P_own`` of
    every (reference, candidate estimate) pair; ``w`` (K,) Parseval weights."""

    all: torch.Tensor
    own: torch.Tensor
    w: torch.Tensor
    nfft: int


def filter_responses(filt: _Filters, n_src: int, n_ch: int, nfft: int) -> _Responses:
    """FFTs (size ``nfft``) of the filters, laid out for one matrix product per bin."""
    n_taps = filt.all.shape[0] // (n_src * n_ch)
    h_all = torch.fft.rfft(filt.all.view(n_src * n_ch, n_taps, -1), n=nfft, dim=1)
    h_own = torch.fft.rfft(filt.own.view(n_src, n_ch, n_taps, -1), n=nfft, dim=2)
    n_bins, width = h_all.shape[1], h_own.shape[-1]
    own = torch.zeros(n_bins, n_src, n_ch, n_src, width, dtype=h_all.dtype, device=h_all.device)
    for j in range(n_src):
        own[:, j, :, j] = h_own[j].permute(1, 0, 2)
    return _Responses(
        all=h_all.permute(1, 0, 2).contiguous(),
        own=own.flatten(1, 2).flatten(2),
        w=_parseval_weights(nfft, h_all.device),
        nfft=nfft,
    )


def _spectra(frames: torch.Tensor, nfft: int, name: str, ws: Workspace) -> torch.Tensor:
    """(F, S, C, W) frames -> (K, F, S, C) spectra in a workspace buffer."""
    n_fr, n_src, n_ch, _ = frames.shape
    k = nfft // 2 + 1
    tmp = ws.get("fft", (n_fr, n_src, n_ch, k), torch.complex128, frames.device)
    torch.fft.rfft(frames, n=nfft, out=tmp)
    return ws.get(name, (k, n_fr, n_src, n_ch), tmp.dtype, tmp.device).copy_(
        tmp.permute(3, 0, 1, 2)
    )


def _energy(
    a: torch.Tensor, b: torch.Tensor | None, w: torch.Tensor, ws: Workspace
) -> torch.Tensor:
    """Energies of ``a - b`` (or ``a``) from (K, F, J, E, C) spectra -> (F, J, E)."""
    shape = a.shape if b is None else torch.broadcast_shapes(a.shape, b.shape)
    z = a
    if b is not None:
        z = torch.sub(a, b, out=ws.get("diff", tuple(shape), a.dtype, a.device))
    zr = torch.view_as_real(z.expand(shape) if b is None else z)
    sq = ws.get("square", (shape[0], math.prod(shape[1:]) * 2), torch.float64, a.device)
    torch.square(zr.reshape(sq.shape), out=sq)
    return (w @ sq).view(*shape[1:], 2).sum(dim=(-1, -2))


def _frame_scores(
    ref_fr: torch.Tensor,
    est_fr: torch.Tensor,
    resp: _Responses,
    sources_version: bool,
    ws: Workspace,
) -> torch.Tensor:
    """Scores of a chunk of frames with fixed filters.

    Args:
        ref_fr: (F, S, C, W) reference frames.
        est_fr: (F, S, C, W) estimate frames.
        resp: filter responses from :func:`filter_responses` (FFT size >= W + L - 1).
        sources_version: ``bss_eval_sources`` ratios instead of the images ones.
        ws: scratch buffers.

    Returns:
        (4, S, F, E') SDR, ISR, SIR, SAR for each reference j and candidate estimate.
    """
    n_fr, n_src, n_ch, _ = ref_fr.shape
    rf = _spectra(ref_fr, resp.nfft, "ref", ws)  # (K, F, S, C)
    ef = _spectra(est_fr, resp.nfft, "est", ws)
    k, dev = rf.shape[0], rf.device
    flat = rf.view(k, n_fr, n_src * n_ch)
    p_all = torch.matmul(
        flat, resp.all, out=ws.get("p_all", (k, n_fr, resp.all.shape[-1]), rf.dtype, dev)
    )
    p_own = torch.matmul(
        flat, resp.own, out=ws.get("p_own", (k, n_fr, resp.own.shape[-1]), rf.dtype, dev)
    )
    p_own = p_own.view(k, n_fr, n_src, -1, n_ch)  # (K, F, J, E', C)
    p_all = p_all.view(k, n_fr, n_src, n_ch)
    if p_own.shape[3] == 1:  # estimate j against reference j only
        p_all, ef = p_all[:, :, :, None], ef[:, :, :, None]
    else:
        p_all, ef = p_all[:, :, None], ef[:, :, None]
    s_true, w = rf[:, :, :, None], resp.w
    e_own = _energy(p_own, None, w, ws)
    e_all = _energy(p_all, None, w, ws).expand_as(e_own)
    e_interf = _energy(p_all, p_own, w, ws)
    e_artif = _energy(ef, p_all, w, ws).expand_as(e_own)
    if sources_version:
        sdr = db(e_own, _energy(ef, p_own, w, ws))
        isr = torch.full_like(sdr, float("nan"))
    else:
        e_true = _energy(s_true, None, w, ws).expand_as(e_own)
        sdr = db(e_true, _energy(ef, s_true, w, ws))
        isr = db(e_true, _energy(p_own, s_true, w, ws))
    out = torch.stack([sdr, isr, db(e_own, e_interf), db(e_all, e_artif)])  # (4, F, J, E')
    return out.transpose(1, 2)


def _nan_argmax(x: torch.Tensor) -> torch.Tensor:
    """numpy's argmax over dim 0: the first NaN if there is one, else the first maximum."""
    nan = torch.isnan(x)
    first_nan = nan.to(torch.uint8).argmax(dim=0)
    best = torch.nan_to_num(x, nan=-float("inf")).argmax(dim=0)
    return torch.where(nan.any(dim=0), first_nan, best)


def _pick_permutation(scores: torch.Tensor, framewise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """museval's best order in the mean-SIR sense.

    Args:
        scores: (4, S, F, S) scores of every (reference j, frame, estimate e) pair.
        framewise: one order per frame (v3) instead of one for the whole signal.

    Returns:
        ((4, S, F) scores of the chosen pairs, (S, F') chosen estimate per reference).
    """
    n_src, n_frames = scores.shape[1], scores.shape[2]
    cands = torch.tensor(list(itertools.permutations(range(n_src))), device=scores.device)
    j = torch.arange(n_src, device=scores.device)
    sir = scores[2][j[None, :], :, cands]  # (P, S, F)
    mean_sir = sir.mean(dim=1) if framewise else sir.mean(dim=(1, 2))[:, None]
    popt = cands[_nan_argmax(mean_sir)].T  # (S, F')
    est = popt.expand(n_src, n_frames)
    t = torch.arange(n_frames, device=scores.device)
    return scores[:, j[:, None], t[None, :], est], popt


def _fixed_filter_scores(
    refs: torch.Tensor, ests: torch.Tensor, layout: tuple[int, int, int], opts: dict
) -> torch.Tensor:
    """v4: filters from the whole signal, applied to chunks of frames -> (4, S, F, E')."""
    n_frames, win, hop = layout
    filt = compute_filters(refs, ests, opts["filters_len"], opts["perm"], opts["solver"])
    resp = filter_responses(
        filt, refs.shape[0], refs.shape[1], fast_len(win + opts["filters_len"] - 1)
    )
    ref_fr, est_fr = _frames(refs, win, hop, n_frames), _frames(ests, win, hop, n_frames)
    ws = Workspace()
    chunks = [
        _frame_scores(
            ref_fr[f : f + _FRAME_CHUNK],
            est_fr[f : f + _FRAME_CHUNK],
            resp,
            opts["sources_version"],
            ws,
        )
        for f in range(0, n_frames, _FRAME_CHUNK)
    ]
    return torch.cat(chunks, dim=2)


def _framewise_filter_scores(
    refs: torch.Tensor,
    ests: torch.Tensor,
    layout: tuple[int, int, int],
    opts: dict,
    silent: torch.Tensor,
) -> torch.Tensor:
    """v3: filters re-estimated on each (non-silent) frame -> (4, S, F, E')."""
    n_frames, win, hop = layout
    n_src = refs.shape[0]
    pairs = n_src if opts["perm"] else 1
    out = torch.full(
        (4, n_src, n_frames, pairs), float("nan"), dtype=torch.float64, device=refs.device
    )
    nfft = fast_len(win + opts["filters_len"] - 1)
    ws = Workspace()
    for t in range(n_frames):
        if bool(silent[t]):
            continue
        ref_t, est_t = refs[..., t * hop : t * hop + win], ests[..., t * hop : t * hop + win]
        filt = compute_filters(ref_t, est_t, opts["filters_len"], opts["perm"], opts["solver"])
        resp = filter_responses(filt, n_src, refs.shape[1], nfft)
        out[:, :, t : t + 1] = _frame_scores(
            ref_t[None], est_t[None], resp, opts["sources_version"], ws
        )
    return out


def bss_eval(
    refs: torch.Tensor,
    ests: torch.Tensor,
    window: int | None = 44100,
    hop: int | None = 44100,
    *,
    filters_len: int = FILTERS_LEN,
    framewise_filters: bool = False,
    sources_version: bool = False,
    compute_permutation: bool = False,
    solver: str = "levinson",
) -> BSSEvalResult:
    """BSSEval v4 (default) or v3 framewise metrics, numerically matching museval.

    The defaults are museval's MUSDB18 settings at 44.1 kHz (1 s windows and hops, 512 taps,
    filters from the whole track, images variant, no permutation). Runs on the device of
    ``refs`` in float64.

    Args:
        refs: (S, C, T) references.
        ests: (S, C, T) estimates, same shape (see :func:`~demucs_rr.evaluate.metrics.
            pad_or_truncate`).
        window: frame length in samples; None scores the whole signal as one frame.
        hop: hop in samples.
        filters_len: distortion filter taps L.
        framewise_filters: re-estimate the filters in each frame (v3, mir_eval).
        sources_version: ``bss_eval_sources`` ratios (SDR against the filtered reference,
            no ISR) instead of the images ones.
        compute_permutation: search the estimate order that maximises the mean SIR.
        solver: ``levinson`` (default: block-Toeplitz recursion, Cholesky fallback),
            ``cholesky`` or ``lu`` (museval's algorithm); all match museval equally well on
            the reference data, Levinson is O(L^2) instead of O(L^3).

    Returns:
        :class:`BSSEvalResult` with (S, F) float64 tensors.
    """
    refs, ests = _check(refs, ests)
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    n_src = refs.shape[0]
    layout = frame_layout(refs.shape[-1], window, hop)
    silent = silent_frames(refs, ests, window, hop)
    opts = dict(
        filters_len=filters_len,
        perm=compute_permutation,
        solver=solver,
        sources_version=sources_version,
    )
    pairs = n_src if compute_permutation else 1
    if bool(silent.all()):
        scores = torch.full(
            (4, n_src, layout[0], pairs), float("nan"), dtype=torch.float64, device=refs.device
        )
    elif framewise_filters:
        scores = _framewise_filter_scores(refs, ests, layout, opts, silent)
    else:
        scores = _fixed_filter_scores(refs, ests, layout, opts)
    scores[:, :, silent] = float("nan")
    if compute_permutation:
        chosen, perm = _pick_permutation(scores, framewise_filters)
    else:
        chosen, perm = scores[..., 0], torch.arange(n_src, device=refs.device)[:, None]
    return BSSEvalResult(sdr=chosen[0], isr=chosen[1], sir=chosen[2], sar=chosen[3], perm=perm)
