"""Evaluation: BSSEval v4 and global SDR in torch, dataset evaluation and leaderboards.

Example:
    >>> from demucs_rr.evaluate import bss_eval, nsdr
    >>> res = bss_eval(refs, ests)  # (S, C, T) each, museval's MUSDB18 settings
    >>> res.sdr.shape  # (S, F): one value per 1 s frame

Names are imported on first use (:mod:`demucs_rr.lazy`), so the command line does not import
torch to show ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from demucs_rr.lazy import lazy_exports

if TYPE_CHECKING:
    from demucs_rr.evaluate.bsseval import BSSEvalResult, bss_eval
    from demucs_rr.evaluate.metrics import (
        TrackScores,
        aggregate,
        framewise_sdr,
        nsdr,
        pad_or_truncate,
        score_track,
    )
    from demucs_rr.evaluate.trackjson import read_track_json, write_track_json

__all__ = [
    "BSSEvalResult",
    "TrackScores",
    "aggregate",
    "bss_eval",
    "framewise_sdr",
    "nsdr",
    "pad_or_truncate",
    "read_track_json",
    "score_track",
    "write_track_json",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BSSEvalResult": "bsseval",
        "bss_eval": "bsseval",
        **{
            name: "metrics"
            for name in (
                "TrackScores",
                "aggregate",
                "framewise_sdr",
                "nsdr",
                "pad_or_truncate",
                "score_track",
            )
        },
        "read_track_json": "trackjson",
        "write_track_json": "trackjson",
    },
)
