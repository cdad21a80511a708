"""Whole-track normalisation rules (:class:`~demucs_rr.models.base.Normalization`) as numbers.

Every rule is an affine map computed from the same whole-track statistics of the mono
(channel-averaged) mix, so a streamed file (statistics from a first decoding pass) and the same
audio in memory are normalised identically:

- ``TRACK`` (Demucs): input ``(mix - mean) / (std_unbiased + 1e-8)``; stems
  ``out * std + mean / S`` (stems that add up to the normalised mix add up to the mix);
- ``MSST`` (``normalize_audio`` / ``denormalize_audio``): input ``(mix - mean) / std_population``;
  stems ``out * std + mean``; a silent track (std 0) is left unscaled where MSST would divide by
  zero;
- ``NONE``: the identity.

:func:`convert` gives the affine map that turns one rule's normalised mixture into another's,
for a bag whose members follow different rules.

Dimension letters: S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from demucs_rr.models.base import Normalization

__all__ = ["EPS", "Affine", "Scaling", "TrackStats", "convert", "scaling", "track_stats"]

EPS = 1e-8
"""Added to Demucs' std, so that silence normalises to zeros, not NaN."""


@dataclass(frozen=True)
class TrackStats:
    """Length, mean and sum of squared deviations of a track's mono mix (float64).

    Attributes:
        length: T, the number of samples.
        mean: mean of the mono mix.
        m2: sum over samples of (mono - mean) ** 2.
    """

    length: int
    mean: float
    m2: float

    def unbiased_std(self) -> float:
        """The unbiased std (0 for fewer than 2 samples)."""
        return math.sqrt(self.m2 / (self.length - 1)) if self.length > 1 else 0.0

    def population_std(self) -> float:
        """The population std, numpy's ``std()`` (0 for an empty track)."""
        return math.sqrt(self.m2 / self.length) if self.length > 0 else 0.0


def track_stats(blocks: Iterable[torch.Tensor]) -> TrackStats:
    """:class:`TrackStats` of consecutive (C, n) blocks, merged block by block (Chan et al.),
    so that any block split of the same audio gives the same numbers to float64 rounding."""
    n, mean, m2 = 0, 0.0, 0.0
    for wav in blocks:
        mono = wav.double().mean(0)
        k = mono.numel()
        if k == 0:
            continue
        block_mean = float(mono.mean())
        block_m2 = float(((mono - block_mean) ** 2).sum())
        delta, total = block_mean - mean, n + k
        mean += delta * k / total
        m2 += block_m2 + delta * delta * n * k / total
        n = total
    return TrackStats(n, mean, m2)


@dataclass(frozen=True)
class Scaling:
    """One rule's numbers for one track: input ``(mix - mean) / std``, stems
    ``out * std + stem_mean``.

    Attributes:
        mean: subtracted from the mixture.
        std: the mixture is divided by it, the stems multiplied.
        stem_mean: added back to every stem.
        identity: nothing to do (``NONE``): :meth:`forward` and :meth:`backward` return their
            input unchanged.
    """

    mean: float
    std: float
    stem_mean: float
    identity: bool = False

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(C, T) mixture -> the model's input."""
        return mix if self.identity else (mix - self.mean) / self.std

    def backward(self, out: torch.Tensor) -> torch.Tensor:
        """(S, C, T) model output -> stems in the units of the mixture."""
        return out if self.identity else out * self.std + self.stem_mean


def scaling(rule: Normalization, stats: TrackStats, sources: int) -> Scaling:
    """The :class:`Scaling` of ``rule`` for a track with ``stats`` and a model of S stems."""
    if rule is Normalization.TRACK:
        return Scaling(stats.mean, stats.unbiased_std() + EPS, stats.mean / sources)
    if rule is Normalization.MSST:
        std = stats.population_std()
        return Scaling(stats.mean, std if std > 0 else 1.0, stats.mean)
    return Scaling(0.0, 1.0, 0.0, identity=True)


@dataclass(frozen=True)
class Affine:
    """``x * scale + shift`` on a pass's input (real samples only) and on its output.

    Attributes:
        in_scale, in_shift: the top rule's normalised mixture -> the member rule's.
        out_scale, out_shift: the member's output -> the top rule's normalised stems.
    """

    in_scale: float
    in_shift: float
    out_scale: float
    out_shift: float


def convert(top: Scaling, member: Scaling) -> Affine:
    """Affine maps between the normalised spaces of ``top`` (the whole model's rule) and
    ``member`` (a bag member's rule): raw = x * top.std + top.mean, member input =
    (raw - member.mean) / member.std; a member stem y is y * member.std + member.stem_mean in
    mixture units, that is (y * member.std + member.stem_mean - top.stem_mean) / top.std in
    the top rule's space."""
    return Affine(
        in_scale=top.std / member.std,
        in_shift=(top.mean - member.mean) / member.std,
        out_scale=member.std / top.std,
        out_shift=(member.stem_mean - top.stem_mean) / top.std,
    )
