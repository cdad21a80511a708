"""MSST's chunking (:class:`~demucs_rr.models.base.FadedChunks`) as a pass of the sliding engine.

MSST's ``demix`` reflect-pads the whole track by ``border = chunk - step`` on both ends (when the
track is longer than ``2 * border``), cuts chunks every ``step`` samples from the start of the
padded track, pads a chunk that runs past its end to the full chunk (reflecting itself when it
holds more than half a chunk, zeros otherwise), weights each output with a window of ones with
linear fades of ``chunk // 10`` samples (none in on the first chunk, none out on the last) and
divides the weighted sum by the sum of the windows.

:class:`FadedPass` does exactly that on a mixture fed block by block. The padded track is
never built: a chunk's input is gathered from the sliding buffer through reflected indices. A
chunk runs as soon as its input is buffered and it is known not to be the last one (its input
ends before the buffered end); whether the track is padded is known once more than
``2 * border`` samples are buffered (or at the end for a shorter track); the last chunks, whose
input reflects the end of the track, run when the engine is told the track has ended. Memory
stays bounded by a few chunks.

With the shift trick, a pass separates the track delayed by ``left_pad`` zeros exactly as MSST
would separate that delayed track (the timeline starts at ``-left_pad``).

Where MSST's summed window is zero (``num_overlap = 1``: consecutive chunks do not overlap, so
MSST writes 0 at every chunk edge after replacing the NaN of 0 / 0) this pass uses no fades, so
every sample is the model's output.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.chunking import Chunk, OverlapAdd
from demucs_rr.separate.feed import Feed, forward
from demucs_rr.separate.normalization import Affine

__all__ = ["FadedPass", "fade_window", "faded_step"]


def faded_step(segment: int, num_overlap: int, overlap: float | None) -> int:
    """Distance between faded chunks of ``segment`` samples.

    ``overlap`` None: MSST's ``segment // num_overlap``. An overlap ``1 - 1/n`` for an integer
    n (0.5, 0.75, ...) is ``num_overlap = n``, so exactly ``segment // n``; any other overlap
    gives ``int((1 - overlap) * segment)``, as for Demucs. At least 1.
    """
    if overlap is None:
        return max(1, segment // num_overlap)
    ratio = 1 / (1 - overlap)
    if abs(ratio - round(ratio)) < 1e-9:
        return max(1, segment // round(ratio))
    return max(1, int((1 - overlap) * segment))


def fade_window(segment: int, fade: int, first: bool, last: bool) -> torch.Tensor:
    """(segment,) weights: ones, ``linspace(0, 1, fade)`` in unless ``first``,
    ``linspace(1, 0, fade)`` out unless ``last`` (MSST's ``_getWindowingArray``)."""
    window = torch.ones(segment)
    if fade > 0:
        if not last:
            window[-fade:] = torch.linspace(1, 0, fade)
        if not first:
            window[:fade] = torch.linspace(0, 1, fade)
    return window


@dataclass
class FadedPass:
    """One pass of one leaf model with MSST's faded chunks.

    Chunks are numbered by their start ``index`` in the padded track; track coordinate of index
    i is ``start - pad + i``.

    Attributes:
        model: the leaf model.
        left_pad: the track is delayed by this many zeros (shift trick; 0 without shifts).
        factor: (S,) weight of this pass in the combined output.
        segment: chunk length L in samples.
        step: distance between chunks.
        convert: affine maps to and from the model's normalisation, None when it is the top one.
        take: for each stem of the whole model, the index of the leaf's stem (None: the same
            stems in the same order).
        pad: reflect padding on each end, None until known.
        next_index: padded-track index of the next chunk to run.
        acc: overlap-add accumulator, created once ``pad`` is known.
        done: track samples covered so far (for progress).
    """

    model: SeparationModel
    left_pad: int
    factor: torch.Tensor
    segment: int
    step: int
    convert: Affine | None = None
    take: torch.Tensor | None = None
    pad: int | None = None
    next_index: int = 0
    acc: OverlapAdd | None = None
    done: int = 0
    fade: int = field(init=False)

    def __post_init__(self) -> None:
        self.fade = self.segment // 10 if self.step < self.segment else 0

    @property
    def start(self) -> int:
        """Track coordinate of the first sample of the (delayed) track."""
        return -self.left_pad

    @property
    def border(self) -> int:
        """MSST's ``chunk - step``: the reflect padding of a long enough track."""
        return max(0, self.segment - self.step)

    @property
    def next_offset(self) -> int:
        """Track coordinate before which the output is final."""
        if self.pad is None:
            return self.start - self.border
        return self.start - self.pad + self.next_index

    def keep_from(self, buffered_end: int) -> int:
        """First buffered sample a later chunk may still read (the end's reflection included)."""
        if self.pad is None:
            return self.start
        return min(self.next_offset, buffered_end - self.pad - 1)

    def advance(self, feed: Feed) -> None:
        """Run every chunk whose input is known (all of them once the length is)."""
        if feed.length is None:
            if self.pad is None:
                if self.border and feed.buffered_end - self.start <= 2 * self.border:
                    return
                self.pad = self.border
            pad = self.pad
            while True:
                group = [self.next_index + k * self.step for k in range(feed.batch_size)]
                if self.start - pad + group[-1] + self.segment >= feed.buffered_end:
                    return
                self._run(feed, group, None)
        length = feed.length - self.start
        if self.pad is None:
            self.pad = self.border if self.border and length > 2 * self.border else 0
        total = length + 2 * self.pad
        rest = list(range(self.next_index, total, self.step))
        for k in range(0, len(rest), feed.batch_size):
            self._run(feed, rest[k : k + feed.batch_size], total)

    def _input(self, feed: Feed, index: int, total: int | None) -> torch.Tensor:
        """(C, L) model input of the chunk at ``index`` of a padded track of ``total`` samples
        (None: not known yet, the chunk lies inside the buffered track)."""
        assert self.pad is not None
        count = self.segment if total is None else min(self.segment, total - index)
        first = self.start - self.pad + index
        t = torch.arange(first, first + count)
        t = torch.where(t < self.start, 2 * self.start - t, t)
        if feed.length is not None:
            t = torch.where(t >= feed.length, 2 * (feed.length - 1) - t, t)
        real = t >= 0  # the delay of a shift pass is zeros
        if bool((t[real] < feed.origin).any()):
            raise RuntimeError("sliding buffer dropped samples a chunk still needs")
        part = feed.buf[:, (t - feed.origin).clamp(min=0)]
        if self.convert is not None:
            part = part * self.convert.in_scale + self.convert.in_shift
        part = torch.where(real, part, part.new_zeros(()))
        if count < self.segment:
            mode = "reflect" if count > self.segment // 2 else "constant"
            part = F.pad(part[None], (0, self.segment - count), mode=mode)[0]
        return part

    def _run(self, feed: Feed, group: list[int], total: int | None) -> None:
        """Run the chunks at padded-track ``group`` indices and accumulate their outputs."""
        assert self.pad is not None
        windows = torch.stack([self._input(feed, index, total) for index in group])
        out = forward(self.model, windows, feed.device, feed.precision)  # (B, S, C, L)
        if self.acc is None:
            origin = self.start - self.pad
            self.acc = OverlapAdd(out.shape[1], out.shape[2], origin, torch.ones(self.segment))
        for index, chunk_out in zip(group, out, strict=True):
            count = self.segment if total is None else min(self.segment, total - index)
            last = total is not None and index + self.step >= total
            weight = fade_window(self.segment, self.fade, index == 0, last)
            chunk = Chunk(self.start - self.pad + index, count)
            self.acc.add(chunk, chunk_out[..., :count], weight)
        self.next_index = group[-1] + self.step
        self.done = feed.covered(self.done, self.start - self.pad + group[-1] + self.segment)
