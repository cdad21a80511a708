"""Track scores: museval-compatible BSSEval v4, MDX nSDR, aggregation and museval-format JSON.

Dimension letters: S sources, C channels, T samples, F frames.

Conventions (museval 0.4.1 / SiSEC 2018, the numbers papers report as "SDR on MUSDB18"):

* per track: BSSEval v4 on 1 s windows and hops, all targets evaluated jointly, estimates
  zero-padded or truncated to the reference length;
* stored per frame rounded to 5 decimals, +-inf stored as NaN (museval's ``TrackStore``);
* track score: median over frames ignoring NaN; dataset score: median over tracks;
* nSDR (MDX 2021): whole-track SDR with epsilon 1e-7, averaged over tracks.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.evaluate.bsseval import bss_eval
from demucs_rr.evaluate.frames import float32_sdr_bound, framewise_sdr
from demucs_rr.staging import atomic_write

__all__ = [
    "METRICS",
    "TrackScores",
    "aggregate",
    "float32_sdr_bound",
    "framewise_sdr",
    "nsdr",
    "pad_or_truncate",
    "read_track_json",
    "score_track",
    "write_track_json",
]

METRICS = ("SDR", "SIR", "ISR", "SAR")
NSDR_EPS = 1e-7
JSON_FORMAT = "museval"


def pad_or_truncate(refs: torch.Tensor, ests: torch.Tensor) -> torch.Tensor:
    """museval's length rule: zero-pad or cut the (S, C, T') estimates to the references' T."""
    length = refs.shape[-1]
    if ests.shape[-1] >= length:
        return ests[..., :length]
    return torch.nn.functional.pad(ests, (0, length - ests.shape[-1]))


def nsdr(refs: torch.Tensor, ests: torch.Tensor, eps: float = NSDR_EPS) -> torch.Tensor:
    """MDX "new SDR" of each source over the whole track (float64).

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))``, sums over channels and samples.

    Args:
        refs: (S, C, T) references.
        ests: (S, C, T) estimates.
        eps: stabiliser added to numerator and denominator (1e-7 in MDX 2021 and Demucs).

    Returns:
        (S,) nSDR in dB.
    """
    refs, ests = refs.to(torch.float64), ests.to(refs.device, torch.float64)
    num = refs.square().sum(dim=(-2, -1)) + eps
    den = (refs - ests).square().sum(dim=(-2, -1)) + eps
    return 10 * torch.log10(num / den)


@dataclass
class TrackScores:
    """Scores of one track.

    Attributes:
        name: track name.
        targets: source names, in evaluation order.
        frames: metric name -> (S, F) float64 array of frame values (NaN: not scored).
        nsdr: target -> whole-track nSDR.
        win: window in seconds; hop: hop in seconds.
        extra: free metadata written next to the scores (model, options, ...).
    """

    name: str
    targets: list[str]
    frames: dict[str, np.ndarray]
    nsdr: dict[str, float]
    win: float = 1.0
    hop: float = 1.0
    extra: dict = field(default_factory=dict)

    def medians(self) -> dict[str, dict[str, float]]:
        """target -> metric -> median over frames ignoring NaN (NaN when no frame is scored)."""
        out: dict[str, dict[str, float]] = {}
        for i, target in enumerate(self.targets):
            out[target] = {m: _nanmedian(self.frames[m][i]) for m in METRICS}
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
    """BSSEval v4 and nSDR of one track, with museval's storage rules applied to the frames.

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
    if backend == "museval":
        values = _museval_frames(refs, ests, window, step)
    elif backend == "torch":
        if sdr_only:
            sdr = framewise_sdr(refs, ests, window, step).cpu().numpy()
            values = {m: np.full_like(sdr, np.nan) for m in METRICS}
            values["SDR"] = sdr
        else:  # its SDR is framewise_sdr's
            res = bss_eval(refs, ests, window, step, solver=solver)
            values = {m: getattr(res, m.lower()).cpu().numpy() for m in METRICS}
    else:
        raise ConfigError(f"unknown metrics backend {backend!r}: use 'torch' or 'museval'")
    frames = {m: np.vectorize(_museval_value, otypes=[np.float64])(values[m]) for m in METRICS}
    track_nsdr = nsdr(refs, ests).cpu().tolist()
    return TrackScores(
        name=name,
        targets=list(targets),
        frames=frames,
        nsdr=dict(zip(targets, track_nsdr, strict=True)),
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


def track_to_json(scores: TrackScores) -> dict:
    """museval ``TrackStore`` layout (``targets[].frames[].metrics``) plus ``nsdr`` per target."""
    targets = []
    for i, target in enumerate(scores.targets):
        n_frames = scores.frames["SDR"].shape[-1]
        frames = [
            {
                "time": t * scores.hop,
                "duration": scores.win,
                "metrics": {m: float(scores.frames[m][i, t]) for m in METRICS},
            }
            for t in range(n_frames)
        ]
        targets.append({"name": target, "nsdr": scores.nsdr[target], "frames": frames})
    return {"targets": targets, "format": JSON_FORMAT, "demucs_rr": scores.extra}


def write_track_json(scores: TrackScores, path: str | os.PathLike) -> Path:
    """Write one track's JSON atomically (NaN written as ``NaN``, as museval does)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w") as handle:
        json.dump(track_to_json(scores), handle, indent=2, allow_nan=True)
    return path


def read_track_json(path: str | os.PathLike) -> TrackScores:
    """Read a track JSON written by :func:`write_track_json` or by museval itself."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        targets = [t["name"] for t in data["targets"]]
        frames = {
            m: np.array(
                [[_num(f["metrics"].get(m)) for f in t["frames"]] for t in data["targets"]],
                dtype=np.float64,
            ).reshape(len(targets), -1)
            for m in METRICS
        }
        first = data["targets"][0]["frames"] if targets and data["targets"][0]["frames"] else []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DemucsRRError(f"cannot read scores from {path}: {exc}") from None
    nsdr_values = {t["name"]: _num(t.get("nsdr")) for t in data["targets"]}
    win = float(first[0]["duration"]) if first else 1.0
    hop = float(first[1]["time"] - first[0]["time"]) if len(first) > 1 else win
    return TrackScores(
        name=path.stem,
        targets=targets,
        frames=frames,
        nsdr=nsdr_values,
        win=win,
        hop=hop,
        extra=data.get("demucs_rr") or {},
    )


def _num(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def aggregate(tracks: list[TrackScores], tracks_agg: str = "median") -> dict[str, dict]:
    """Dataset scores per target: metric medians over tracks of per-track frame medians (museval
    ``EvalStore`` default) and the mean nSDR over tracks (MDX).

    Returns:
        target -> {"SDR": ..., "SIR": ..., "ISR": ..., "SAR": ..., "nSDR": ..., "tracks": n}.
    """
    if tracks_agg not in ("median", "mean"):
        raise ConfigError(f"tracks_agg must be 'median' or 'mean', got {tracks_agg!r}")
    reduce = np.nanmedian if tracks_agg == "median" else np.nanmean
    per_target: dict[str, dict[str, list[float]]] = {}
    for track in tracks:
        for target, values in track.medians().items():
            entry = per_target.setdefault(target, {m: [] for m in (*METRICS, "nSDR")})
            for m in METRICS:
                entry[m].append(values[m])
            entry["nSDR"].append(track.nsdr.get(target, math.nan))
    out: dict[str, dict] = {}
    for target, entry in per_target.items():
        row = {m: _reduce(reduce, entry[m]) for m in METRICS}
        row["nSDR"] = _reduce(np.nanmean, entry["nSDR"])
        row["tracks"] = len(entry["SDR"])
        out[target] = row
    return out


def _reduce(fn, values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(fn(arr)) if np.isfinite(arr).any() else math.nan
