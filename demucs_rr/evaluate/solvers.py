"""Normal equations of BSSEval's distortion filters: Gram matrices of delayed copies and their
(eps-regularised) solutions by block Levinson recursion, Cholesky or LU.

Dimension letters: P signals, L delays (filter taps), m right-hand sides.

The Gram matrix of the delayed copies of P signals is block Toeplitz (P x P blocks over the
delays). museval solves ``(G + eps I) c = d`` by LU (least squares on failure); the block
Levinson recursion solves the same system in O(L^2 P^3) instead of O((PL)^3) and falls back to
Cholesky when its residual is not small.
"""

from __future__ import annotations

import os

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.spectral import fast_len

__all__ = ["SOLVERS", "block_levinson", "gram", "solve_kept", "solve_normal"]

SOLVERS = ("levinson", "cholesky", "lu")
EPS = torch.finfo(torch.float64).eps
#: Fewer unknowns: a dense Cholesky is faster than the Python recursion.
LEVINSON_MIN = 2048


def lag_table(r: torch.Tensor) -> torch.Tensor:
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
    g = lag_table(r)[..., a[:, None] - a[None, :] + lags - 1]  # (..., P, Q, La, Lb)
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
        single: tuple[torch.Tensor, torch.Tensor] = torch.linalg.solve_ex(a, b)
        return single
    outs = [torch.linalg.solve_ex(a_i, b_i) for a_i, b_i in zip(a, b, strict=True)]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def solve_regularised(g: torch.Tensor, d: torch.Tensor, solver: str) -> torch.Tensor:
    """Solve ``(g + eps I) x = d`` batched over a leading dim, like museval (LU, else lstsq)."""
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    reg = g + EPS * eye
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


def _toeplitz_residual(rlag: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) relative residual ``|T x - y| / |y|`` of a block-Toeplitz system, by FFT."""
    n = x.shape[1]
    nfft = fast_len(3 * n - 2)
    h = torch.fft.rfft(rlag.flip(1), n=nfft, dim=1)  # T x is the convolution of x with it
    tx = torch.fft.irfft(h @ torch.fft.rfft(x, n=nfft, dim=1), n=nfft, dim=1)[:, n - 1 : 2 * n - 1]
    relative: torch.Tensor = (tx - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp_min(
        1e-300
    )
    return relative


def _workers_spin(device: torch.device) -> bool:
    """Whether several CPU threads wait for work by spinning (libgomp's default; the command
    line sets ``OMP_WAIT_POLICY=PASSIVE`` before torch starts, see
    :func:`demucs_rr.process.set_wait_policy`). The recursion's thousands of small operations
    then pay a barrier each: on a busy 2-core machine (load 9-11) it took 7-20 s against 2.3-4.3 s
    for Cholesky, and 0.4-1.0 s with sleeping workers (tools/results/bench_solvers.md), so
    Cholesky is used."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        return False
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() != "passive"


def solve_normal(r: torch.Tensor, d: torch.Tensor, solver: str) -> torch.Tensor:
    """Solve the (eps-regularised) normal equations of the delayed copies of some signals.

    Args:
        r: (B, P, P, L) correlations of the signals (see :func:`correlations`).
        d: (B, P * L, m) right-hand sides, rows ordered (signal, delay).
        solver: ``levinson`` (block-Toeplitz recursion, O(L^2 P^3); used above
            ``LEVINSON_MIN`` unknowns, where it beats the O((PL)^3) factorisation, unless idle
            OpenMP workers spin (see :func:`_workers_spin`), and falling back to Cholesky when
            its residual exceeds 1e-9), ``cholesky`` (LU fallback), ``lu``.

    Returns:
        (B, P * L, m) filters.
    """
    bsz, n_sig, _, lags = r.shape
    if solver == "levinson" and n_sig * lags > LEVINSON_MIN and not _workers_spin(r.device):
        rlag = lag_table(r).flip(-1).permute(0, 3, 1, 2).contiguous()  # T[i, j] at j - i
        rlag[:, lags - 1] += EPS * torch.eye(n_sig, dtype=r.dtype, device=r.device)
        y = d.view(bsz, n_sig, lags, -1).transpose(1, 2)
        x = block_levinson(rlag, y)
        if bool((_toeplitz_residual(rlag, x, y) <= 1e-9).all()):
            return x.transpose(1, 2).reshape(d.shape)
    return solve_regularised(gram(r), d, "lu" if solver == "lu" else "cholesky")


def solve_kept(r: torch.Tensor, d: torch.Tensor, keep: torch.Tensor, solver: str) -> torch.Tensor:
    """:func:`solve_normal` for one system restricted to the kept signals; others get 0.

    Args:
        r: (P, P, L) correlations; d: (P * L, m); keep: (P,) signals to use.
    """
    n_sig, lags = r.shape[0], r.shape[-1]
    out = torch.zeros_like(d).view(n_sig, lags, -1)
    idx = keep.nonzero().squeeze(-1)
    if idx.numel():
        sub = solve_normal(
            r[idx][:, idx][None], d.view(n_sig, lags, -1)[idx].reshape(1, -1, d.shape[-1]), solver
        )
        out[idx] = sub.view(idx.numel(), lags, -1)
    return out.view(d.shape)
