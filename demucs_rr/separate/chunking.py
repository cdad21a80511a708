"""Pure tensor pieces of chunked inference: planning, windows, weights and overlap-add.

Nothing here reads files or knows about models, so the same pieces serve the in-memory engine
and block-by-block processing: chunks are planned on a timeline, each chunk's model input is a
window of the mixture (zeros beyond the track), and outputs are accumulated with triangular
weights by :class:`OverlapAdd`, which can hand back finished samples as soon as no later chunk
can touch them.

Dimension letters: S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Chunk:
    """A span of the timeline processed by one model call.

    Attributes:
        offset: first sample of the span, in track coordinates (negative with the shift trick).
        length: number of samples of the span.
    """

    offset: int
    length: int

    @property
    def end(self) -> int:
        """One past the last sample of the span."""
        return self.offset + self.length


def plan_chunks(start: int, end: int, segment: int, overlap: float) -> list[Chunk]:
    """Cut ``[start, end)`` into chunks of ``segment`` samples with ``overlap`` between neighbours.

    Offsets are ``start, start + stride, ...`` below ``end`` with ``stride = int((1 - overlap) *
    segment)``, as the official implementation does; the last chunk may be shorter.

    Args:
        start: first sample of the timeline.
        end: one past the last sample (``end > start``).
        segment: chunk length in samples (>= 1).
        overlap: fraction of a chunk shared with the next one, in [0, 1).

    Returns:
        Chunks in increasing offset order.
    """
    if segment < 1:
        raise ValueError(f"segment must be at least 1 sample, got {segment}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, int((1 - overlap) * segment))
    return [Chunk(off, min(segment, end - off)) for off in range(start, end, stride)]


def triangle_weight(segment: int, transition_power: float = 1.0) -> torch.Tensor:
    """Overlap-add weight of a full chunk: a triangle that never reaches zero.

    Values ``1 .. segment//2`` then ``segment - segment//2 .. 1``, divided by their maximum and
    raised to ``transition_power`` (>= 1 sharpens the cross-fade). A short final chunk uses the
    first part of this weight.

    Returns:
        (segment,) float32 weights in (0, 1].
    """
    if transition_power < 1:
        raise ValueError(f"transition_power must be >= 1, got {transition_power}")
    half = segment // 2
    weight = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)]).float()
    return (weight / weight.max()) ** transition_power


def window(mix: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Samples ``[start, start + length)`` of ``mix`` with zeros outside the track.

    Args:
        mix: (C, T) mixture.
        start: first sample (may be negative).
        length: window length.

    Returns:
        (C, length) tensor (a copy when padding was needed).
    """
    total = mix.shape[-1]
    lo, hi = max(0, start), min(total, start + length)
    if lo >= hi:
        return mix.new_zeros(mix.shape[0], length)
    part = mix[..., lo:hi]
    if lo - start == 0 and start + length - hi == 0:
        return part
    return torch.nn.functional.pad(part, (lo - start, start + length - hi))


def centred_window(mix: torch.Tensor, chunk: Chunk, padded_length: int) -> torch.Tensor:
    """Model input for ``chunk``: the chunk centred in ``padded_length`` samples of real context.

    The extra ``padded_length - chunk.length`` samples are split left ``delta // 2`` and right the
    rest, filled with neighbouring audio where the track has some and zeros beyond its edges.

    Returns:
        (C, padded_length) tensor.
    """
    delta = padded_length - chunk.length
    if delta < 0:
        raise ValueError(f"padded length {padded_length} < chunk length {chunk.length}")
    return window(mix, chunk.offset - delta // 2, padded_length)


class OverlapAdd:
    """Weighted overlap-add accumulator over a timeline ``[start, end)``.

    Chunks must be added in increasing offset order. :meth:`pop` returns finished samples
    (normalised by the accumulated weight) and frees them, so memory stays bounded by a few
    chunks when the caller pops regularly.

    Args:
        sources: number of sources S.
        channels: number of channels C.
        start: first sample of the timeline.
        weight: (segment,) weight of a full chunk.
    """

    def __init__(self, sources: int, channels: int, start: int, weight: torch.Tensor) -> None:
        self.weight = weight
        self.origin = start
        self._out = torch.zeros(sources, channels, 0)
        self._sum = torch.zeros(0)
        self._filled = 0

    def _reserve(self, needed: int) -> None:
        """Make room for ``needed`` samples after ``origin``, at least doubling the capacity so
        that growing costs amortised constant time per sample."""
        capacity = self._sum.shape[0]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity)
        out = self._out.new_zeros(*self._out.shape[:-1], capacity)
        total = self._sum.new_zeros(capacity)
        out[..., : self._filled] = self._out[..., : self._filled]
        total[: self._filled] = self._sum[: self._filled]
        self._out, self._sum = out, total

    def add(self, chunk: Chunk, out: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Accumulate ``out`` (S, C, chunk.length) for ``chunk``, weighted by the first
        ``chunk.length`` values of ``weight`` (default: the accumulator's weight)."""
        if chunk.offset < self.origin:
            raise ValueError("chunks must be added in increasing order and after the last pop")
        if out.shape[-1] != chunk.length:
            raise ValueError(f"chunk output has {out.shape[-1]} samples, expected {chunk.length}")
        lo = chunk.offset - self.origin
        self._reserve(lo + chunk.length)
        self._filled = max(self._filled, lo + chunk.length)
        w = (self.weight if weight is None else weight)[: chunk.length].to(out.dtype)
        self._out[..., lo : lo + chunk.length] += w * out
        self._sum[lo : lo + chunk.length] += w

    def pop(self, until: int) -> torch.Tensor:
        """Return the finished samples ``[origin, until)`` as (S, C, until - origin) and drop them.

        The caller guarantees that no chunk added later starts before ``until``. The cost is
        proportional to the samples returned plus those still pending.
        """
        n = until - self.origin
        if n < 0 or n > self._filled:
            raise ValueError(
                f"cannot pop up to {until}: accumulated [{self.origin}, "
                f"{self.origin + self._filled})"
            )
        ready = self._out[..., :n] / self._sum[:n]
        self._out = self._out[..., n : self._filled].clone()
        self._sum = self._sum[n : self._filled].clone()
        self._filled -= n
        self.origin = until
        return ready
