"""A bag of models: several separation models averaged per source, as the official ``BagOfModels``.

A bag is itself a model of the contract (:mod:`demucs_rr.models.base`): same ``sources``,
``samplerate`` and ``audio_channels`` as its members, and ``weighted_members()`` lists them with
their per-source weights. Where the per-member work lives:

- the separation engine (:func:`demucs_rr.separate.engine.apply_model`) sees a non-empty
  ``weighted_members()`` and applies each member as it would apply that model alone: its own
  chunk grid (``segment_length``), its own context rule (``chunk_input_length``), its own
  shift offsets; then source ``s`` is ``sum_m w[m][s] * out_m[s] / sum_m w[m][s]``. The engine
  stays generic (one recursion on the contract, no class test) and the bag holds no engine code;
- the bag itself only holds the members, validates them and applies the bag segment;
- :meth:`BagOfModels.forward` is the same weighted average on one window (every member sees the
  same input), for callers that run a model directly; it is not the official chunked semantics.

Members may come from different families (HT Demucs with a BS-RoFormer, say) and need not
name the same stems in the same order: the bag's stems are its first member's; another member
contributes to the bag stems it has (matched by name, its other stems are ignored), and its
weight for a bag stem it does not have must be 0 (the default weights are 1 where a member has
the stem, 0 elsewhere). :func:`stem_map` gives that correspondence to the engine.

A bag ``segment`` (seconds, from the bag's YAML) replaces each member's segment, as the official
bag does, except for a member with a maximum segment (HTDemucs) shorter than it, which keeps its
own. Replacing the segment of a model with a maximum also changes that maximum (an HTDemucs then
runs at the shorter length), again as officially. Members are modified in place.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import (
    ChunkingRule,
    Normalization,
    SeparationModel,
    WeightedMember,
    as_module,
    center_trim,
)

__all__ = ["BagOfModels", "check_member_stems", "stem_map"]


def stem_map(sources: Sequence[str], member: Sequence[str]) -> list[int | None]:
    """For each of the bag's ``sources``, its index among the ``member``'s stems (or None)."""
    return [list(member).index(name) if name in member else None for name in sources]


def check_member_stems(
    sources: Sequence[str], members: Sequence[Sequence[str]], weights: list[list[float]] | None
) -> list[list[float]]:
    """The weight table of a bag, checked against the members' stems (default: 1 where a
    member has the bag stem, 0 elsewhere).

    Raises:
        ConfigError: a member shares no stem with the bag, or has a non-zero weight for a bag
            stem it does not have.
    """
    if weights is None:
        return [[1.0 if n is not None else 0.0 for n in stem_map(sources, m)] for m in members]
    for index, (stems, row) in enumerate(zip(members, weights, strict=False)):
        for name, position, weight in zip(sources, stem_map(sources, stems), row, strict=False):
            if position is None and float(weight) != 0:
                raise ConfigError(
                    f"bag member {index} has no stem {name!r} (it has {', '.join(stems)}) but "
                    f"weight {weight} for it; give it 0"
                )
    return weights


def _check_members(models: Sequence[SeparationModel]) -> None:
    """Raise :class:`ConfigError` unless the members agree on rate and channels and each
    shares a stem with the first."""
    if not models:
        raise ConfigError("a bag of models needs at least one model")
    first = models[0]
    for index, other in enumerate(models[1:], start=1):
        if not set(other.sources) & set(first.sources):
            raise ConfigError(
                f"bag member {index} has stems {', '.join(other.sources)}, none of member 0's "
                f"({', '.join(first.sources)})"
            )
        for what in ("samplerate", "audio_channels"):
            if getattr(other, what) != getattr(first, what):
                raise ConfigError(
                    f"bag member {index} has {what} {getattr(other, what)!r}, "
                    f"member 0 has {getattr(first, what)!r}"
                )


def _check_weights(weights: list[list[float]], members: int, sources: list[str]) -> None:
    """Raise :class:`ConfigError` for a weight table that is not (members, S) or sums to 0."""
    if len(weights) != members:
        raise ConfigError(f"a bag of {members} models needs {members} weight lists")
    for row in weights:
        if len(row) != len(sources):
            raise ConfigError(
                f"bag weights need one value per source ({', '.join(sources)}), got {row}"
            )
    for index, name in enumerate(sources):
        if sum(float(row[index]) for row in weights) <= 0:
            raise ConfigError(f"bag weights of source {name!r} must have a positive sum")


class BagOfModels(nn.Module):
    """Models applied one by one and averaged per source with per-source weights.

    Args:
        models: the members (``torch.nn.Module`` models of the contract), all with the same
            sample rate and channel count; the bag's stems are the first member's (see the
            module docstring for members with other stems).
        weights: one list of S weights per member (S = the bag's stems); ``None`` weighs every
            member 1 for the stems it has. Weights are normalised per source (a source's
            weights must have a positive sum).
        segment: bag segment in seconds; replaces each member's segment (see module docstring).

    Attributes:
        models: the members (an ``nn.ModuleList``, state-dict prefix ``models.{i}.``).
        weights: the (members, S) weight table.
        segment: the bag segment in seconds (None: members keep their own).
        segment_length: the bag segment in samples if given, else the shortest member segment
            (the engine uses each member's own).
        max_segment_length: the smallest member maximum (None when no member has one).

    Raises:
        ConfigError: no members, members that disagree, or a malformed weight table.
    """

    def __init__(
        self,
        models: Sequence[SeparationModel],
        weights: list[list[float]] | None = None,
        segment: float | None = None,
    ) -> None:
        super().__init__()
        _check_members(models)
        first = models[0]
        self.sources = list(first.sources)
        self.samplerate = int(first.samplerate)
        self.audio_channels = int(first.audio_channels)
        weights = check_member_stems(self.sources, [m.sources for m in models], weights)
        _check_weights(weights, len(models), self.sources)
        self.weights = [[float(w) for w in row] for row in weights]
        self._members = list(models)
        self.models = nn.ModuleList(as_module(member) for member in models)
        self.segment = segment
        self._segment_samples: int | None = None
        if segment is not None:
            if segment <= 0:
                raise ConfigError(f"bag segment must be positive, got {segment}")
            self.segment_length = int(segment * self.samplerate)

    @property
    def segment_length(self) -> int:
        """Bag segment in samples, or the shortest member segment."""
        if self._segment_samples is not None:
            return self._segment_samples
        return min(member.segment_length for member in self._members)

    @segment_length.setter
    def segment_length(self, samples: int) -> None:
        """Set the bag segment: every member without a shorter maximum takes it."""
        self._segment_samples = int(samples)
        self.segment = samples / self.samplerate
        for member in self._members:
            limit = member.max_segment_length
            if limit is None or samples <= limit:
                member.segment_length = int(samples)

    @property
    def max_segment_length(self) -> int | None:
        """Smallest maximum segment of the members, in samples (None: no member has one)."""
        limits = [m.max_segment_length for m in self._members if m.max_segment_length is not None]
        return min(limits) if limits else None

    @property
    def bf16_weights(self) -> bool:
        """Whether every member may run from bf16-stored weights on the CPU."""
        return all(member.bf16_weights for member in self._members)

    @property
    def chunking(self) -> ChunkingRule:
        """The first member's chunking (the engine chunks each member with its own)."""
        return self._members[0].chunking

    @property
    def normalization(self) -> Normalization:
        """The members' normalisation when they all share one, else Demucs' whole-track one;
        the engine converts each member's input and output to its own rule."""
        rules = {member.normalization for member in self._members}
        return rules.pop() if len(rules) == 1 else Normalization.TRACK

    def weighted_members(self) -> Sequence[WeightedMember]:
        """``(member, weights)`` pairs, in order."""
        return list(zip(self._members, self.weights, strict=True))

    def valid_length(self, length: int) -> int:
        """Longest input any member needs for an output of ``length`` samples."""
        return max(member.valid_length(length) for member in self._members)

    def chunk_input_length(self, length: int, segment: int) -> int:
        """Longest input any member needs for a chunk (a bag applies its members one by one,
        so the engine does not use this)."""
        return max(member.chunk_input_length(length, segment) for member in self._members)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Weighted per-source mean of the members' outputs on the same input.

        Args:
            mix: (B, C, T) mixture.

        Returns:
            (B, S, C, T') with T' the shortest member output (others centre-trimmed to it).
        """
        outs = [self._bag_stems(member, member(mix)) for member in self._members]
        length = min(out.shape[-1] for out in outs)  # each (B, S, C, T_m)
        total = torch.zeros_like(center_trim(outs[0], length))
        sums = [0.0] * len(self.sources)
        for out, row in zip(outs, self.weights, strict=True):
            weight = torch.tensor(row, dtype=out.dtype, device=out.device)[:, None, None]
            total = total + weight * center_trim(out, length)
            sums = [acc + w for acc, w in zip(sums, row, strict=True)]
        return total / torch.tensor(sums, dtype=total.dtype, device=total.device)[:, None, None]

    def _bag_stems(self, member: SeparationModel, out: torch.Tensor) -> torch.Tensor:
        """(B, S_m, C, T) member output -> (B, S, C, T) in the bag's stem order (zeros for a
        stem the member lacks, whose weight is 0)."""
        positions = stem_map(self.sources, member.sources)
        if positions == list(range(len(self.sources))):
            return out
        zero = torch.zeros_like(out[:, :1])
        return torch.cat([zero if k is None else out[:, k : k + 1] for k in positions], 1)
