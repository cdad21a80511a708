"""The two SDR definitions music separation papers, challenges and leaderboards report, and the
labels every evaluation output uses for them.

* **museval SDR** (BSSEval v4, "images" variant, as ``museval.eval_mus_track`` computes it for
  MUSDB18 and SiSEC 2018 reported it): one value per 1 s frame, the track's score is the
  median over its frames and the dataset's the median over tracks. Papers until 2023 call it
  "SDR on MUSDB18"; BSRNN and later papers call it **cSDR** (chunk SDR). ISR, SIR and SAR come
  from the same decomposition.
* **global SDR** (MDX 2021 "new SDR", Demucs' ``nsdr``, the SDX 2023 challenge, MSST, MVSEP):
  ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` over the whole track (all samples
  and channels), averaged over tracks. Papers call it **uSDR** (utterance SDR). The MDX 2021 and
  SDX 2023 evaluators and Demucs use ``eps = 1e-7``; Music-Source-Separation-Training
  (``utils/metrics.py``, ``sdr``) used 1e-7 until its December 2024 refactor and 1e-8 since.
  The two agree to within 1e-6 dB unless a reference stem or its error has almost no energy
  over the whole track (a sum of squares below about 1), and differ by up to 10 dB on a track
  whose stem is silent; both are kept exactly, since each result stores the two energies.

Estimates are zero-padded or cut to the reference length (museval's rule; the MDX evaluators
require equal lengths, MSST cuts both to the shorter).
"""

from __future__ import annotations

import math

__all__ = [
    "GLOBAL_EPS",
    "TRACK_AGGREGATIONS",
    "global_definition",
    "global_label",
    "global_sdr",
    "legend",
    "museval_definition",
    "museval_label",
]

#: Epsilon of the global SDR per convention: ``mdx`` (MDX 2021, SDX 2023, Demucs nSDR) and
#: ``msst`` (Music-Source-Separation-Training at commit ccc011a).
GLOBAL_EPS = {"mdx": 1e-7, "msst": 1e-8}
#: How the per-track museval scores are reduced over tracks: ``median`` (SiSEC 2018, museval's
#: ``EvalStore`` default: what papers report) or ``mean`` (Demucs logs both).
TRACK_AGGREGATIONS = ("median", "mean")

_GLOBAL_NAMES = {"mdx": "MDX'21/SDX'23", "msst": "MSST"}


def global_sdr(ref_energy: float, err_energy: float, eps: float) -> float:
    """``10 log10((ref_energy + eps) / (err_energy + eps))`` in dB (NaN for NaN energies)."""
    if math.isnan(ref_energy) or math.isnan(err_energy):
        return math.nan
    return 10 * math.log10((ref_energy + eps) / (err_energy + eps))


def museval_label(metric: str = "SDR", tracks_agg: str = "median") -> str:
    """Column label of a museval metric: ``SDR museval (median)``: the track aggregation."""
    return f"{metric} museval ({tracks_agg})"


def global_label(convention: str = "mdx") -> str:
    """Column label of the global SDR: ``SDR global eps=1e-07 (mean)``."""
    return f"SDR global eps={GLOBAL_EPS[convention]:g} (mean)"


def museval_definition(tracks_agg: str = "median") -> str:
    """One sentence defining the museval columns."""
    return (
        "SDR/ISR/SIR/SAR museval: BSSEval v4 (museval 0.4.1 settings for MUSDB18: 1 s frames, "
        f"512-tap filters, images), median over the frames of a track, then {tracks_agg} over "
        'tracks (SiSEC 2018; papers\' "SDR on MUSDB18", cSDR).'
    )


def global_definition(convention: str = "mdx") -> str:
    """One sentence defining the global SDR column."""
    return (
        "SDR global: 10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps)) over the whole "
        f"track, mean over tracks ({_GLOBAL_NAMES[convention]} definition, "
        f"eps = {GLOBAL_EPS[convention]:g}; papers' uSDR)."
    )


def legend(tracks_agg: str = "median", convention: str = "mdx") -> str:
    """The definitions behind the column labels, as one Markdown paragraph."""
    return (
        f"{museval_definition(tracks_agg)} {global_definition(convention)} "
        "All: mean over the stems."
    )
