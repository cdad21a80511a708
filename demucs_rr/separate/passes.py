"""The inference core of the engine: every pass over a track, run over a sliding buffer.

A model is planned into *passes*: one per shift of every leaf model (ensemble members are
expanded recursively, drawing their shift offsets in the official order), each with a per-source
factor such that the result is ``sum_p factor_p[s] * out_p[s]``. :class:`SlidingApplier` runs all
passes side by side over a mixture fed block by block (:meth:`~SlidingApplier.push`), runs each
chunk as soon as its input window is buffered, and returns the samples that no later chunk can
touch. The in-memory :func:`~demucs_rr.separate.engine.apply_model` pushes the whole track at
once, so files and tensors go through the same chunk planning, batching, weights and model calls.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from demucs_rr.models.base import SeparationModel, center_trim
from demucs_rr.separate.chunking import Chunk, OverlapAdd, centred_window, triangle_weight
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.precision import autocast

ProgressCallback = Callable[[int], None]
"""Called with the number of new track samples covered; each shift pass covers the track once."""


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
class Pass:
    """One pass of one leaf model over the track, with its chunk grid and accumulator.

    Attributes:
        model: the leaf model.
        left_pad: the grid starts ``left_pad`` samples before the track (shift trick).
        factor: (S,) weight of this pass in the combined output.
        segment: chunk length in samples (also the model's padding reference).
        stride: distance between chunk offsets.
        split: ``False`` runs one chunk over the whole delayed track once its end is known.
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
    acc: OverlapAdd | None = None
    next_offset: int = field(init=False)
    done: int = 0

    def __post_init__(self) -> None:
        self.next_offset = -self.left_pad

    def window(self, chunk: Chunk) -> tuple[int, int]:
        """Model input length of ``chunk`` and the first mixture sample it reads."""
        padded = self.model.chunk_input_length(chunk.length, self.segment)
        return padded, chunk.offset - (padded - chunk.length) // 2

    def margin(self) -> int:
        """Samples before ``next_offset`` that a later chunk may still read (conservative)."""
        return self.model.chunk_input_length(self.segment, self.segment) + self.segment


def plan_passes(model: SeparationModel, options: ApplyOptions, rng: random.Random) -> list[Pass]:
    """Expand ``model`` into passes, drawing shift offsets from ``rng`` member by member.

    A single model with k offsets gives k passes of factor 1/k; an ensemble gives its members'
    passes scaled by ``w[m][s] / sum_m w[m][s]``.
    """
    members = model.weighted_members()
    sources = len(model.sources)
    if not members:
        offsets = draw_offsets(options.shifts, int(0.5 * model.samplerate), rng)
        factor = torch.full((sources,), 1.0 / len(offsets))
        segment = options.segment_samples(model.samplerate) or model.segment_length
        stride = max(1, int((1 - options.overlap) * segment))
        return [Pass(model, pad, factor, segment, stride, options.split) for pad in offsets]
    totals = torch.zeros(sources)
    planned: list[tuple[list[Pass], torch.Tensor]] = []
    for member, weights in members:
        w = torch.tensor([float(x) for x in weights])
        planned.append((plan_passes(member, options, rng), w))
        totals += w
    return [
        Pass(p.model, p.left_pad, p.factor * w / totals, p.segment, p.stride, p.split)
        for member_passes, w in planned
        for p in member_passes
    ]


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
    with autocast(precision, device):
        out = model(windows.to(device))  # (B, S, C, L'')
    return center_trim(out, length).float().cpu()


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
    """

    def __init__(
        self,
        model: SeparationModel,
        options: ApplyOptions,
        device: torch.device,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.passes = plan_passes(model, options, random.Random(options.seed))
        self.batch_size = max(1, options.batch_size)
        self.split = options.split
        self.transition_power = options.transition_power
        self.precision = options.precision
        self.device = device
        self.progress = progress
        self.sources = len(model.sources)
        self._buf = torch.zeros(model.audio_channels, 0)
        self._origin = 0  # track coordinate of self._buf[..., 0]
        self._emitted = 0
        self._length: int | None = None

    @property
    def max_segment(self) -> int:
        """Longest chunk of any pass, in samples."""
        return max(p.segment for p in self.passes)

    @property
    def buffered_end(self) -> int:
        """One past the last mixture sample received."""
        return self._origin + self._buf.shape[-1]

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Append (C, n) mixture samples; returns the newly finished (S, C, m) estimate."""
        if self._length is not None:
            raise RuntimeError("push after finish")
        keep_from = min(p.next_offset - p.margin() for p in self.passes)
        drop = max(0, min(keep_from - self._origin, self._buf.shape[-1]))
        if drop or self._buf.shape[-1] == 0:
            self._buf = self._buf[..., drop:]
            self._origin += drop
        block = block.detach().float().cpu()
        self._buf = block if self._buf.shape[-1] == 0 else torch.cat([self._buf, block], -1)
        for p in self.passes:
            self._advance(p)
        return self._collect(min(p.next_offset for p in self.passes))

    def finish(self) -> torch.Tensor:
        """Mark the end of the track and return the remaining (S, C, m) estimate."""
        if self.buffered_end == 0:
            raise ValueError("cannot separate an empty mixture")
        self._length = self.buffered_end
        for p in self.passes:
            self._advance(p)
        return self._collect(self._length)

    def _advance(self, p: Pass) -> None:
        """Run every chunk of ``p`` whose input is buffered (all of them after the end)."""
        length = self._length
        if not self.split:
            if length is not None:
                self._run(p, [Chunk(p.next_offset, length - p.next_offset)])
            return
        if length is None:
            while True:
                group = [
                    Chunk(p.next_offset + k * p.stride, p.segment) for k in range(self.batch_size)
                ]
                padded, first = p.window(group[-1])
                if first + padded > self.buffered_end:
                    return
                self._run(p, group)
            return
        rest = [
            Chunk(o, min(p.segment, length - o)) for o in range(p.next_offset, length, p.stride)
        ]
        for group in batches(rest, self.batch_size):
            self._run(p, group)

    def _run(self, p: Pass, group: list[Chunk]) -> None:
        """Run the model on ``group`` (track coordinates) and accumulate into ``p``."""
        first = p.window(group[0])[1]
        if self._origin > 0 and first < self._origin:
            raise RuntimeError("sliding buffer dropped samples a chunk still needs")
        local = [Chunk(c.offset - self._origin, c.length) for c in group]
        out = run_batch(p.model, self._buf, local, p.segment, self.device, self.precision)
        if p.acc is None:
            weight = (
                triangle_weight(p.segment, self.transition_power)
                if self.split
                else torch.ones(group[0].length)
            )
            p.acc = OverlapAdd(self.sources, self._buf.shape[0], -p.left_pad, weight)
        for chunk, chunk_out in zip(group, out, strict=True):
            p.acc.add(chunk, chunk_out)
        p.next_offset = group[-1].offset + (p.stride if self.split else group[-1].length)
        reached = min(max(group[-1].end, 0), self.buffered_end)
        if self.progress is not None and reached > p.done:
            self.progress(reached - p.done)
        p.done = max(p.done, reached)

    def _collect(self, until: int) -> torch.Tensor:
        """Pop ``[emitted, until)`` from every pass and combine: (S, C, until - emitted)."""
        channels = self._buf.shape[0]
        if until <= self._emitted or any(p.acc is None for p in self.passes):
            return torch.zeros(self.sources, channels, 0)
        total: torch.Tensor | None = None
        for p in self.passes:
            assert p.acc is not None
            origin = p.acc.origin
            piece = p.acc.pop(until)[..., self._emitted - origin :]
            piece = piece * p.factor[:, None, None]
            total = piece if total is None else total + piece
        assert total is not None
        self._emitted = until
        return total
