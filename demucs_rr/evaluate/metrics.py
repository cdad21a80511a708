"""Track scores: museval-compatible BSSEval v4, the global SDR, and their aggregation.

Dimension letters: S sources, C channels, T samples, F frames.

Conventions (see :mod:`demucs_rr.evaluate.conventions` for the two SDR definitions):

* museval (0.4.1 / SiSEC 2018, the numbers papers report as "SDR on MUSDB18"): BSSEval v4 on
  1 s windows and hops, all targets evaluated jointly, estimates zero-padded or truncated to
  the reference length; stored per frame rounded to 5 decimals, +-inf stored as NaN (museval's
  ``TrackStore``); track score: median over frames ignoring NaN; dataset score: median (or
  mean) over tracks;
* global SDR (MDX 2021 / SDX 2023 / MSST): the whole-track energies of each reference and of
  its error are kept, so the score of either epsilon is exact; averaged over tracks.

Result files: :mod:`demucs_rr.evaluate.trackjson`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from demucs_rr.errors import ConfigError
from demucs_rr.evaluate.bsseval import bss_eval
from demucs_rr.evaluate.conventions import GLOBAL_EPS, TRACK_AGGREGATIONS, global_sdr
from demucs_rr.evaluate.frames import (
    float32_sdr_bound,
    framewise_sdr,
    framewise_sdr_and_energies,
    track_energies,
)

__all__ = [
    "METRICS",
    "TrackScores",
    "aggregate",
    "float32_sdr_bound",
    "framewise_sdr",
    "nsdr",
    "pad_or_truncate",
    "score_track",
    "track_energies",
]

METRICS = ("SDR", "SIR", "ISR", "SAR")
NSDR_EPS = GLOBAL_EPS["mdx"]


def pad_or_truncate(refs: torch.Tensor, ests: torch.Tensor) -> torch.Tensor:
    """museval's length rule: zero-pad or cut the (S, C, T') estimates to the references' T."""
    length = refs.shape[-1]
    if ests.shape[-1] >= length:
        return ests[..., :length]
    return torch.nn.functional.pad(ests, (0, length - ests.shape[-1]))


def nsdr(refs: torch.Tensor, ests: torch.Tensor, eps: float = NSDR_EPS) -> torch.Tensor:
    """Global SDR of each source over the whole track (MDX "new SDR"), in float64.

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))``, sums over channels and samples.

    Args:
        refs: (S, C, T) references.
        ests: (S, C, T) estimates.
        eps: stabiliser added to numerator and denominator (1e-7 in MDX 2021, SDX 2023 and
            Demucs; 1e-8 in MSST).

    Returns:
        (S,) global SDR in dB.
    """
    energy = track_energies(refs, ests)
    return 10 * torch.log10((energy[:, 0] + eps) / (energy[:, 1] + eps))


@dataclass
class TrackScores:
    """Scores of one track.

    Attributes:
        name: track name.
        targets: source names, in evaluation order.
        frames: metric name -> (S, F) float64 array of frame values (NaN: not scored).
        nsdr: target -> whole-track global SDR with the MDX epsilon (1e-7).
        energies: target -> (``sum s^2``, ``sum (s - s_hat)^2``) over the whole track (empty
            for results written by museval or by older versions).
        win: window in seconds; hop: hop in seconds.
        extra: free metadata written next to the scores (model, options, ...).
    """

    name: str
    targets: list[str]
    frames: dict[str, np.ndarray]
    nsdr: dict[str, float]
    energies: dict[str, tuple[float, float]] = field(default_factory=dict)
    win: float = 1.0
    hop: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def medians(self) -> dict[str, dict[str, float]]:
        """target -> metric -> median over frames ignoring NaN (NaN when no frame is scored)."""
        out: dict[str, dict[str, float]] = {}
        for i, target in enumerate(self.targets):
            out[target] = {m: _nanmedian(self.frames[m][i]) for m in METRICS}
        return out

    def global_sdr(self, convention: str = "mdx") -> dict[str, float]:
        """target -> whole-track global SDR with the epsilon of ``convention`` (``mdx`` or
        ``msst``); NaN when the energies were not stored (only the MDX value was)."""
        eps = GLOBAL_EPS[convention]
        out = {}
        for target in self.targets:
            if target in self.energies:
                out[target] = global_sdr(*self.energies[target], eps)
            else:
                out[target] = self.nsdr.get(target, math.nan) if convention == "mdx" else math.nan
        return out


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else math.nan


def _museval_value(x: float) -> float:
    """museval's stored value: +-inf becomes NaN, finite values are rounded to 5 decimals."""
    return math.nan if math.isinf(x) else round(float(x), 5)


def score_track(
    name: str,
    targets: list[str],
    refs: torch.Tensor,
    ests: torch.Tensor,
    samplerate: int,
    *,
    sdr_only: bool = False,
    backend: str = "torch",
    solver: str = "levinson",
    win: float = 1.0,
    hop: float = 1.0,
) -> TrackScores:
    """BSSEval v4 and global SDR of one track, with museval's storage rules for the frames.

    Args:
        name: track name.
        targets: S source names.
        refs: (S, C, T) references.
        ests: (S, C, T') estimates; padded or cut to T.
        samplerate: sample rate in Hz (sets the 1 s window).
        sdr_only: frames get SDR only (ISR/SIR/SAR NaN); orders of magnitude faster.
        backend: ``torch`` (this package) or ``museval`` (the reference implementation).
        solver: ``levinson`` (default), ``cholesky`` or ``lu`` for the torch backend.
        win: window in seconds; hop: hop in seconds.
    """
    if refs.dim() != 3 or refs.shape[0] != len(targets) or ests.shape[:2] != refs.shape[:2]:
        raise ConfigError(
            f"{name}: need (S, C, T) references and estimates for "
            f"{len(targets)} targets, got {tuple(refs.shape)}, {tuple(ests.shape)}"
        )
    ests = pad_or_truncate(refs, ests.to(refs.device))
    window, step = int(win * samplerate), int(hop * samplerate)
    if backend not in ("torch", "museval"):
        raise ConfigError(f"unknown metrics backend {backend!r}: use 'torch' or 'museval'")
    sdr, energies = framewise_sdr_and_energies(refs, ests, window, step)  # one pass for both
    if backend == "museval":
        values = _museval_frames(refs, ests, window, step)
    elif sdr_only:
        values = {m: np.full(tuple(sdr.shape), np.nan) for m in METRICS}
        values["SDR"] = sdr.cpu().numpy()
    else:
        res = bss_eval(refs, ests, window, step, solver=solver, framewise=sdr)
        values = {m: getattr(res, m.lower()).cpu().numpy() for m in METRICS}
    frames = {m: np.vectorize(_museval_value, otypes=[np.float64])(values[m]) for m in METRICS}
    energy = energies.cpu().tolist()
    return TrackScores(
        name=name,
        targets=list(targets),
        frames=frames,
        nsdr={t: global_sdr(e[0], e[1], NSDR_EPS) for t, e in zip(targets, energy, strict=True)},
        energies={t: (e[0], e[1]) for t, e in zip(targets, energy, strict=True)},
        win=win,
        hop=hop,
    )


def _museval_frames(
    refs: torch.Tensor, ests: torch.Tensor, window: int, hop: int
) -> dict[str, np.ndarray]:
    """Frame values from museval itself (optional dependency)."""
    try:
        import museval
    except Exception as exc:  # ImportError, or stempeg failing without ffmpeg
        raise ConfigError(
            f"the museval backend needs museval and ffmpeg: pip install 'demucs_rr[eval]': {exc}"
        ) from None
    r = refs.to(torch.float64).permute(0, 2, 1).cpu().numpy()
    e = ests.to(torch.float64).permute(0, 2, 1).cpu().numpy()
    sdr, isr, sir, sar = museval.evaluate(r, e, win=window, hop=hop)
    return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def aggregate(
    tracks: list[TrackScores], tracks_agg: str = "median", convention: str = "mdx"
) -> dict[str, dict[str, Any]]:
    """Dataset scores per target: museval metrics reduced over tracks (median by default, as
    museval's ``EvalStore`` and SiSEC) of the per-track frame medians, and the global SDR of
    ``convention`` averaged over tracks.

    Returns:
        target -> {"SDR", "SIR", "ISR", "SAR", "global", "tracks"}.
    """
    if tracks_agg not in TRACK_AGGREGATIONS:
        raise ConfigError(f"tracks_agg must be 'median' or 'mean', got {tracks_agg!r}")
    if convention not in GLOBAL_EPS:
        raise ConfigError(f"unknown global SDR convention {convention!r}: use mdx or msst")
    reduce = np.nanmedian if tracks_agg == "median" else np.nanmean
    per_target: dict[str, dict[str, list[float]]] = {}
    for track in tracks:
        track_global = track.global_sdr(convention)
        for target, values in track.medians().items():
            entry = per_target.setdefault(target, {m: [] for m in (*METRICS, "global")})
            for m in METRICS:
                entry[m].append(values[m])
            entry["global"].append(track_global[target])
    out: dict[str, dict[str, Any]] = {}
    for target, entry in per_target.items():
        row: dict[str, Any] = {m: _reduce(reduce, entry[m]) for m in METRICS}
        row["global"] = _reduce(np.nanmean, entry["global"])
        row["tracks"] = len(entry["SDR"])
        out[target] = row
    return out


def _reduce(fn: Callable[[np.ndarray], Any], values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(fn(arr)) if np.isfinite(arr).any() else math.nan
