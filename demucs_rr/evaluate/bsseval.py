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
blocked FFTs (:mod:`~demucs_rr.evaluate.spectral`); the normal equations (block Toeplitz,
S*C*L unknowns) are solved by a block Levinson recursion in O(L^2 (SC)^3) (dense Cholesky or LU
on request, and for small systems; :mod:`~demucs_rr.evaluate.solvers`);
channels that are silent or copies of another channel are left out of the projection basis
(they make the equations exactly singular without changing the projections); the per-frame
projection energies are taken in the frequency domain (Parseval;
:mod:`~demucs_rr.evaluate.projection`), so no projection is ever brought back to the time
domain. Inputs keep their dtype: each block or frame is upcast to float64 when it is
transformed (exactly, for float32), so a long track is never copied whole in float64.
``sources_version=True`` gives the older ``bss_eval_sources`` ratios (no ISR) and
``compute_permutation=True`` the best estimate order in the mean-SIR sense, as museval does.
A frame where any reference or any estimate is digitally silent (its channel sum is exactly zero
throughout) is NaN for every metric of every source; a zero denominator gives +inf.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.frames import db, frame_layout, frame_view, framewise_sdr, silent_frames
from demucs_rr.evaluate.projection import chunk_frames, filter_responses, frame_energies
from demucs_rr.evaluate.solvers import SOLVERS, block_levinson, gram, solve_kept, solve_normal
from demucs_rr.evaluate.spectral import Workspace, correlations, fast_len

__all__ = [
    "FILTERS_LEN",
    "SOLVERS",
    "BSSEvalResult",
    "block_levinson",
    "bss_eval",
    "compute_filters",
    "correlations",
    "fast_len",
    "frame_layout",
    "gram",
    "redundant_channels",
]

FILTERS_LEN = 512


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


def _check(refs: torch.Tensor, ests: torch.Tensor) -> torch.Tensor:
    """Validate (S, C, T) pairs of float signals; returns ``ests`` on the device of ``refs``."""
    if refs.dim() != 3 or refs.shape != ests.shape:
        raise ConfigError(
            f"references and estimates must both be (S, C, T), got "
            f"{tuple(refs.shape)} and {tuple(ests.shape)}"
        )
    if refs.shape[-1] == 0 or refs.shape[0] == 0:
        raise ConfigError("references and estimates must not be empty")
    if not (refs.is_floating_point() and ests.is_floating_point()):
        raise ConfigError(f"references and estimates must be float, got {refs.dtype}, {ests.dtype}")
    return ests.to(refs.device)


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


def compute_filters(
    refs: torch.Tensor,
    ests: torch.Tensor,
    filters_len: int = FILTERS_LEN,
    all_pairs: bool = False,
    solver: str = "levinson",
) -> _Filters:
    """Least-squares distortion filters of every estimate on the delayed references.

    Args:
        refs: (S, C, T) references (any float dtype; sums are formed in float64).
        ests: (S, C, T) estimates.
        filters_len: filter taps L.
        all_pairs: own-reference filters for every (reference, estimate) pair, not only j, j.
        solver: ``levinson``, ``cholesky`` or ``lu`` (see :func:`solve_normal`).
    """
    n_src, n_ch, _ = refs.shape
    n_sig = n_src * n_ch
    r = correlations(refs.reshape(n_sig, -1), ests.reshape(n_sig, -1), filters_len)
    rr = r[:, :n_sig]
    d = r[:, n_sig:].permute(0, 2, 1).reshape(n_sig * filters_len, n_sig)  # (P*L, E*C)
    keep = ~redundant_channels(rr[..., 0], n_src)  # (S, C)
    c_all = solve_kept(rr, d, keep.flatten(), solver)
    d4 = d.view(n_src, n_ch * filters_len, n_src, n_ch)
    own_r = torch.stack(
        [rr[j * n_ch : (j + 1) * n_ch, j * n_ch : (j + 1) * n_ch] for j in range(n_src)]
    )  # (S, C, C, L)
    d_own = torch.stack([d4[j].flatten(1) if all_pairs else d4[j, :, j] for j in range(n_src)])
    if bool(keep.all()):
        c_own = solve_normal(own_r, d_own, solver)
    else:
        c_own = torch.stack([solve_kept(own_r[j], d_own[j], keep[j], solver) for j in range(n_src)])
    return _Filters(all=c_all, own=c_own)


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


@dataclass(frozen=True)
class _Options:
    """What :func:`bss_eval` computes (see its arguments)."""

    filters_len: int
    perm: bool
    solver: str
    images: bool

    @property
    def spectral_sdr(self) -> bool:
        """SDR from the projections: needed unless it is the framewise SNR of estimate j."""
        return self.perm or not self.images


def _ratios(energy: torch.Tensor, images: bool) -> torch.Tensor:
    """(7, F, S, E') energies of :func:`frame_energies` -> (4, S, F, E') SDR, ISR, SIR, SAR."""
    own, all_, interf, artif, true, spat, dist = energy
    if images:
        sdr, isr = db(true, dist), db(true, spat)
    else:
        sdr, isr = db(own, dist), torch.full_like(own, float("nan"))
    return torch.stack([sdr, isr, db(own, interf), db(all_, artif)]).transpose(1, 2)


def _score_frames(
    refs: torch.Tensor,
    ests: torch.Tensor,
    layout: tuple[int, int, int],
    filt: _Filters,
    opts: _Options,
) -> torch.Tensor:
    """Scores of the frames of ``layout`` with fixed filters -> (4, S, F, E')."""
    n_frames, win, _ = layout
    n_src, n_ch = refs.shape[:2]
    resp = filter_responses(filt.all, filt.own, n_src, n_ch, fast_len(win + opts.filters_len - 1))
    ref_fr, est_fr = frame_view(refs, layout), frame_view(ests, layout)  # (F, S, C, W)
    step, ws = chunk_frames(n_src * n_ch, resp.nfft, refs.device), Workspace()
    energies = [
        frame_energies(
            ref_fr[f : f + step],
            est_fr[f : f + step],
            resp,
            images=opts.images,
            dist=opts.spectral_sdr,
            ws=ws,
        )
        for f in range(0, n_frames, step)
    ]
    return _ratios(torch.cat(energies, dim=1), opts.images)


def _framewise_filter_scores(
    refs: torch.Tensor,
    ests: torch.Tensor,
    layout: tuple[int, int, int],
    opts: _Options,
    silent: torch.Tensor,
) -> torch.Tensor:
    """v3: filters re-estimated on each (non-silent) frame -> (4, S, F, E')."""
    n_frames, win, hop = layout
    n_src = refs.shape[0]
    out = torch.full(
        (4, n_src, n_frames, n_src if opts.perm else 1),
        float("nan"),
        dtype=torch.float64,
        device=refs.device,
    )
    for t in range(n_frames):
        if bool(silent[t]):
            continue
        ref_t, est_t = refs[..., t * hop : t * hop + win], ests[..., t * hop : t * hop + win]
        filt = compute_filters(ref_t, est_t, opts.filters_len, opts.perm, opts.solver)
        out[:, :, t : t + 1] = _score_frames(ref_t, est_t, (1, win, win), filt, opts)
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
    framewise: torch.Tensor | None = None,
) -> BSSEvalResult:
    """BSSEval v4 (default) or v3 framewise metrics, numerically matching museval.

    The defaults are museval's MUSDB18 settings at 44.1 kHz (1 s windows and hops, 512 taps,
    filters from the whole track, images variant, no permutation). Runs on the device of
    ``refs``, in float64 whatever the input dtype. The images SDR of estimate j is the frame's
    SNR (:func:`~demucs_rr.evaluate.frames.framewise_sdr`), exact; the other ratios come from
    the projections.

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
        solver: ``levinson`` (default: block-Toeplitz recursion, Cholesky fallback; Cholesky
            too where several CPU threads spin while idle, see
            :func:`~demucs_rr.evaluate.solvers.solve_normal`), ``cholesky`` or ``lu``
            (museval's algorithm); all match museval equally well on the reference data,
            Levinson is O(L^2) instead of O(L^3).
        framewise: (S, F) ``framewise_sdr(refs, ests, window, hop)`` when the caller has it
            already (used as the images SDR).

    Returns:
        :class:`BSSEvalResult` with (S, F) float64 tensors.
    """
    ests = _check(refs, ests)
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    n_src = refs.shape[0]
    layout = frame_layout(refs.shape[-1], window, hop)
    silent = silent_frames(refs, ests, window, hop)
    opts = _Options(filters_len, compute_permutation, solver, images=not sources_version)
    if bool(silent.all()):
        shape = (4, n_src, layout[0], n_src if compute_permutation else 1)
        scores = torch.full(shape, float("nan"), dtype=torch.float64, device=refs.device)
    elif framewise_filters:
        scores = _framewise_filter_scores(refs, ests, layout, opts, silent)
    else:
        filt = compute_filters(refs, ests, filters_len, compute_permutation, solver)
        scores = _score_frames(refs, ests, layout, filt, opts)
    if not opts.spectral_sdr:
        scores[0, :, :, 0] = (
            framewise_sdr(refs, ests, window, hop) if framewise is None else framewise
        )
    scores[:, :, silent] = float("nan")
    if compute_permutation:
        chosen, perm = _pick_permutation(scores, framewise_filters)
    else:
        chosen, perm = scores[..., 0], torch.arange(n_src, device=refs.device)[:, None]
    return BSSEvalResult(sdr=chosen[0], isr=chosen[1], sir=chosen[2], sar=chosen[3], perm=perm)
