"""The inference core of the engine: every pass over a track, run over a sliding buffer.

A model is planned into *passes*: one per shift of every leaf model (ensemble members are expanded
recursively, drawing their shift offsets in the official order), each with a per-source factor such
that the result is ``sum_p factor_p[s] * out_p[s]``, and each chunked by its model's rule
(``model.chunking``): :class:`CentredPass` for Demucs' centred grid,
:class:`~demucs_rr.separate.faded.FadedPass` for MSST's faded chunks. :class:`SlidingApplier` runs
all passes side by side over a mixture fed block by block (:meth:`~SlidingApplier.push`), runs each
chunk as soon as its input window is buffered, and returns the samples that no later chunk can
touch. The in-memory :func:`~demucs_rr.separate.engine.apply_model` pushes the whole track at once,
so files and tensors go through the same chunk planning, batching, weights and model calls.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from demucs_rr.models.bag import stem_map
from demucs_rr.models.base import FadedChunks, SeparationModel, center_trim
from demucs_rr.separate.chunking import Chunk, OverlapAdd, centred_window, triangle_weight
from demucs_rr.separate.faded import FadedPass, faded_step
from demucs_rr.separate.feed import Feed, ProgressCallback, forward
from demucs_rr.separate.normalization import Affine, TrackStats, convert, scaling
from demucs_rr.separate.options import ApplyOptions

__all__ = [
    "CentredPass",
    "FadedPass",
    "Pass",
    "ProgressCallback",
    "SlidingApplier",
    "batches",
    "draw_offsets",
    "plan_passes",
    "run_batch",
]


def draw_offsets(shifts: int, max_shift: int, rng: random.Random) -> list[int]:
    """``shifts`` left paddings drawn from ``rng`` (``[0]`` when ``shifts <= 0``).

    Each draw is ``max_shift - randint(0, max_shift)``, the official offset convention.
    """
    if shifts <= 0:
        return [0]
    return [max_shift - rng.randint(0, max_shift) for _ in range(shifts)]


def batches(chunks: Sequence[Chunk], batch_size: int) -> Iterator[list[Chunk]]:
    """Group consecutive chunks of equal length, at most ``batch_size`` per group."""
    group: list[Chunk] = []
    for chunk in chunks:
        if group and (len(group) == batch_size or chunk.length != group[0].length):
            yield group
            group = []
        group.append(chunk)
    if group:
        yield group


@dataclass
class CentredPass:
    """One pass of one leaf model with Demucs' centred chunks and triangle weights.

    Attributes:
        model: the leaf model.
        left_pad: the grid starts ``left_pad`` samples before the track (shift trick).
        factor: (S,) weight of this pass in the combined output.
        segment: chunk length in samples (also the model's padding reference).
        stride: distance between chunk offsets.
        split: ``False`` runs one chunk over the whole delayed track once its end is known.
        transition_power: sharpness of the triangle weight.
        convert: affine maps to and from the model's normalisation, None when it is the top one.
        take: for each stem of the whole model, the index of the leaf's stem (None: the same
            stems in the same order).
        acc: overlap-add accumulator, created at the first chunk.
        next_offset: offset of the next chunk to run.
        done: track samples covered so far (for progress).
    """

    model: SeparationModel
    left_pad: int
    factor: torch.Tensor
    segment: int
    stride: int
    split: bool = True
    transition_power: float = 1.0
    convert: Affine | None = None
    take: torch.Tensor | None = None
    acc: OverlapAdd | None = None
    next_offset: int = field(init=False)
    done: int = 0

    def __post_init__(self) -> None:
        self.next_offset = -self.left_pad

    def window(self, chunk: Chunk) -> tuple[int, int]:
        """Model input length of ``chunk`` and the first mixture sample it reads."""
        padded = self.model.chunk_input_length(chunk.length, self.segment)
        return padded, chunk.offset - (padded - chunk.length) // 2

    def keep_from(self, buffered_end: int) -> int:
        """First buffered sample a later chunk may still read (conservative)."""
        margin = self.model.chunk_input_length(self.segment, self.segment) + self.segment
        return self.next_offset - margin

    def advance(self, feed: Feed) -> None:
        """Run every chunk whose input is buffered (all of them once the length is known)."""
        length = feed.length
        if not self.split:
            if length is not None:
                self._run(feed, [Chunk(self.next_offset, length - self.next_offset)])
            return
        if length is None:
            while True:
                group = [
                    Chunk(self.next_offset + k * self.stride, self.segment)
                    for k in range(feed.batch_size)
                ]
                padded, first = self.window(group[-1])
                if first + padded > feed.buffered_end:
                    return
                self._run(feed, group)
        rest = [
            Chunk(o, min(self.segment, length - o))
            for o in range(self.next_offset, length, self.stride)
        ]
        for group in batches(rest, feed.batch_size):
            self._run(feed, group)

    def _run(self, feed: Feed, group: list[Chunk]) -> None:
        """Run the model on ``group`` (track coordinates) and accumulate the outputs."""
        first = self.window(group[0])[1]
        if feed.origin > 0 and first < feed.origin:
            raise RuntimeError("sliding buffer dropped samples a chunk still needs")
        local = [Chunk(c.offset - feed.origin, c.length) for c in group]
        mix = feed.view(self.convert)
        out = run_batch(self.model, mix, local, self.segment, feed.device, feed.precision)
        if self.acc is None:
            weight = (
                triangle_weight(self.segment, self.transition_power)
                if self.split
                else torch.ones(group[0].length)
            )
            self.acc = OverlapAdd(out.shape[1], mix.shape[0], -self.left_pad, weight)
        for chunk, chunk_out in zip(group, out, strict=True):
            self.acc.add(chunk, chunk_out)
        self.next_offset = group[-1].offset + (self.stride if self.split else group[-1].length)
        self.done = feed.covered(self.done, group[-1].end)


Pass = CentredPass | FadedPass
"""A pass of one leaf model over the track, with its chunking rule."""


def _leaf_passes(model: SeparationModel, options: ApplyOptions, offsets: list[int]) -> list[Pass]:
    """The passes of a leaf model, one per shift offset, with the model's chunking rule."""
    factor = torch.full((len(model.sources),), 1.0 / len(offsets))
    segment = options.segment_samples(model.samplerate) or model.segment_length
    rule = model.chunking
    if isinstance(rule, FadedChunks) and options.split:
        step = faded_step(segment, rule.num_overlap, options.overlap)
        return [FadedPass(model, pad, factor, segment, step) for pad in offsets]
    overlap = rule.overlap if options.overlap is None else options.overlap
    stride = max(1, int((1 - overlap) * segment))
    return [
        CentredPass(model, pad, factor, segment, stride, options.split, options.transition_power)
        for pad in offsets
    ]


def plan_passes(model: SeparationModel, options: ApplyOptions, rng: random.Random) -> list[Pass]:
    """Expand ``model`` into passes, drawing shift offsets from ``rng`` member by member.

    A single model with k offsets gives k passes of factor 1/k; an ensemble gives its members'
    passes scaled by ``w[m][s] / sum_m w[m][s]``, each member's stems taken by name into the
    ensemble's order (:func:`~demucs_rr.models.bag.stem_map`; weight 0 where it lacks one).
    """
    members = model.weighted_members()
    if not members:
        offsets = draw_offsets(options.shifts, int(0.5 * model.samplerate), rng)
        return _leaf_passes(model, options, offsets)
    totals = torch.zeros(len(model.sources))
    planned: list[tuple[list[Pass], torch.Tensor, SeparationModel]] = []
    for member, weights in members:
        w = torch.tensor([float(x) for x in weights])
        planned.append((plan_passes(member, options, rng), w, member))
        totals += w
    for member_passes, w, member in planned:
        positions = stem_map(model.sources, member.sources)
        same = positions == list(range(len(model.sources)))
        index = torch.tensor([0 if k is None else k for k in positions])
        for p in member_passes:
            factor = p.factor if same else p.factor[index]
            p.factor = factor * w / totals
            if not same:
                p.take = index if p.take is None else p.take[index]
    return [p for member_passes, _, _ in planned for p in member_passes]


def run_batch(
    model: SeparationModel,
    mix: torch.Tensor,
    group: list[Chunk],
    segment: int,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """Run the model on the centred windows of ``group`` (chunks of a ``segment`` grid).

    Args:
        mix: (C, T) mixture in track coordinates (zeros are used outside it).
        precision: forward-pass precision (:func:`~demucs_rr.separate.precision.autocast`).

    Returns:
        (B, S, C, L) outputs on the CPU, centre-trimmed to the chunk length L.
    """
    length = group[0].length
    padded = model.chunk_input_length(length, segment)
    windows = torch.stack([centred_window(mix, chunk, padded) for chunk in group])  # (B, C, L')
    return center_trim(forward(model, windows, device, precision), length)


class SlidingApplier:
    """Runs every pass of a model over a mixture fed block by block.

    Feed (C, n) blocks of the (normalised) mixture with :meth:`push`, then call :meth:`finish`
    once; each call returns the next (S, C, m) finished samples of the combined estimate, so the
    concatenation of all returned pieces is the (S, C, T) result of the whole track. Memory stays
    bounded by a few chunks plus one block (except without ``split``, which needs the track).

    Args:
        model: a separation model already on ``device``.
        options: chunking, shifts and batching.
        device: where the model runs.
        progress: optional callback, see :data:`ProgressCallback`.
        stats: whole-track statistics of the raw mixture; with them, a bag member whose
            normalisation differs from the bag's (``model.normalization``) gets its input and
            output converted to its own rule. Without them every pass sees the mixture as fed.
    """

    def __init__(
        self,
        model: SeparationModel,
        options: ApplyOptions,
        device: torch.device,
        progress: ProgressCallback | None = None,
        stats: TrackStats | None = None,
    ) -> None:
        self.passes = plan_passes(model, options, random.Random(options.seed))
        self.sources = len(model.sources)
        if stats is not None:
            top = scaling(model.normalization, stats, self.sources)
            for p in self.passes:
                if p.model.normalization is not model.normalization:
                    own = scaling(p.model.normalization, stats, len(p.model.sources))
                    p.convert = convert(top, own)
        self.feed = Feed(
            torch.zeros(model.audio_channels, 0),
            0,
            None,
            max(1, options.batch_size),
            device,
            options.precision,
            progress,
        )
        self._emitted = 0

    @property
    def max_segment(self) -> int:
        """Longest chunk of any pass, in samples."""
        return max(p.segment for p in self.passes)

    @property
    def buffered_end(self) -> int:
        """One past the last mixture sample received."""
        return self.feed.buffered_end

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Append (C, n) mixture samples; returns the newly finished (S, C, m) estimate."""
        feed = self.feed
        if feed.length is not None:
            raise RuntimeError("push after finish")
        keep_from = min(p.keep_from(feed.buffered_end) for p in self.passes)
        drop = max(0, min(keep_from - feed.origin, feed.buf.shape[-1]))
        if drop or feed.buf.shape[-1] == 0:
            feed.buf = feed.buf[..., drop:]
            feed.origin += drop
        block = block.detach().float().cpu()
        feed.buf = block if feed.buf.shape[-1] == 0 else torch.cat([feed.buf, block], -1)
        for p in self.passes:
            p.advance(feed)
        return self._collect(min(p.next_offset for p in self.passes))

    def finish(self) -> torch.Tensor:
        """Mark the end of the track and return the remaining (S, C, m) estimate."""
        feed = self.feed
        if feed.buffered_end == 0:
            raise ValueError("cannot separate an empty mixture")
        feed.length = feed.buffered_end
        for p in self.passes:
            p.advance(feed)
        return self._collect(feed.length)

    def _collect(self, until: int) -> torch.Tensor:
        """Pop ``[emitted, until)`` from every pass and combine: (S, C, until - emitted)."""
        channels = self.feed.buf.shape[0]
        if until <= self._emitted or any(p.acc is None for p in self.passes):
            return torch.zeros(self.sources, channels, 0)
        total: torch.Tensor | None = None
        for p in self.passes:
            assert p.acc is not None
            origin = p.acc.origin
            piece = p.acc.pop(until)[..., self._emitted - origin :]
            if p.convert is not None:
                piece = piece * p.convert.out_scale + p.convert.out_shift
            if p.take is not None:
                piece = piece[p.take]
            piece = piece * p.factor[:, None, None]
            total = piece if total is None else total + piece
        assert total is not None
        self._emitted = until
        return total
