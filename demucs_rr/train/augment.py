"""Batch augmentations of Demucs v2 over (B, S, C, T) stems.

Each module draws its random parameters from an explicit CPU ``torch.Generator`` (no global RNG)
and changes nothing (beyond :class:`Shift`'s deterministic crop) unless in training mode.

Distributed training: parameters are drawn for the whole *global* batch (``rows.total`` items),
identically on every rank, and each rank keeps the rows ``rows.start : rows.start + B`` of its
local batch. So a sample's augmentation depends on its global index, never on the rank, and N
processes see exactly what 1 process with the same global batch sees. :class:`Remix` permutes
within groups of ``group_size`` consecutive items; a group never crosses ranks as long as the
group size divides the per-rank batch (checked before training).

Dimension letters: B batch (local), G global batch, S sources, C channels, T time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "AugmentPipeline",
    "BatchRows",
    "FlipChannels",
    "FlipSign",
    "Remix",
    "Scale",
    "Shift",
    "StemMixup",
    "step_generator",
]


@dataclass(frozen=True)
class BatchRows:
    """Which rows of the global batch the local batch holds.

    Attributes:
        start: global index of the first local item.
        total: global batch size G.
    """

    start: int
    total: int


def step_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (e.g. ``(seed, step)``)."""
    entropy = int(np.random.SeedSequence(list(seeds)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(entropy & ((1 << 63) - 1))


def _rows(wav: torch.Tensor, rows: BatchRows | None) -> BatchRows:
    if wav.dim() != 4:
        raise ValueError(
            f"augmentations expect (batch, sources, channels, time), got {tuple(wav.shape)}"
        )
    rows = rows or BatchRows(0, wav.shape[0])
    if rows.start < 0 or rows.start + wav.shape[0] > rows.total:
        raise ValueError(
            f"local batch of {wav.shape[0]} at row {rows.start} does not fit in a "
            f"global batch of {rows.total}"
        )
    return rows


def _local(params: torch.Tensor, rows: BatchRows, wav: torch.Tensor) -> torch.Tensor:
    """Rows of ``params`` (G, ...) for the local batch, on ``wav``'s device."""
    return params[rows.start : rows.start + wav.shape[0]].to(wav.device)


class Shift(nn.Module):
    """Crop ``T - shift`` samples at an offset drawn per (item, source) in ``[0, shift)``.

    In eval mode the first ``T - shift`` samples are kept (deterministic), as in v2.

    Args:
        shift: maximum offset in samples; 0 makes the module the identity.
    """

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = int(shift)

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T - shift)."""
        rows = _rows(wav, rows)
        if self.shift <= 0:
            return wav
        length = wav.shape[-1] - self.shift
        if length <= 0:
            raise ValueError(f"Shift({self.shift}) needs items longer than {self.shift} samples")
        if not self.training:
            return wav[..., :length]
        batch, sources = wav.shape[:2]
        drawn = torch.randint(self.shift, (rows.total, sources), generator=generator)
        offsets: list[list[int]] = drawn[rows.start : rows.start + batch].tolist()
        return torch.stack(
            [
                torch.stack([wav[b, s, :, o : o + length] for s, o in enumerate(row)])
                for b, row in enumerate(offsets)
            ]
        )  # (B, S, C, T - shift)


class FlipSign(nn.Module):
    """Multiply each (item, source) by -1 with probability 1/2."""

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T)."""
        rows = _rows(wav, rows)
        if not self.training:
            return wav
        signs = torch.randint(2, (rows.total, wav.shape[1]), generator=generator) * 2 - 1
        return wav * _local(signs, rows, wav).to(wav.dtype)[:, :, None, None]


class FlipChannels(nn.Module):
    """Swap left and right of each (item, source) with probability 1/2 (stereo only)."""

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T); identity unless C == 2."""
        rows = _rows(wav, rows)
        if not self.training or wav.shape[2] != 2:
            return wav
        swap = torch.randint(2, (rows.total, wav.shape[1]), generator=generator).bool()
        swap = _local(swap, rows, wav)[:, :, None, None]  # (B, S, 1, 1)
        return torch.where(swap, wav.flip(2), wav)


class Scale(nn.Module):
    """Multiply each (item, source) by a gain drawn uniformly in ``[low, high)``.

    Args:
        low: smallest gain (v2: 0.25).
        high: largest gain (v2: 1.25).
    """

    def __init__(self, low: float = 0.25, high: float = 1.25) -> None:
        super().__init__()
        self.low = float(low)
        self.high = float(high)

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T)."""
        rows = _rows(wav, rows)
        if not self.training:
            return wav
        gains = torch.rand((rows.total, wav.shape[1]), generator=generator)
        gains = self.low + (self.high - self.low) * gains
        return wav * _local(gains, rows, wav).to(wav.dtype)[:, :, None, None]


class Remix(nn.Module):
    """Shuffle each source independently across the items of groups of ``group_size``.

    Items ``[k * g, (k + 1) * g)`` form group ``k``; inside it, source ``s`` of item ``i`` is
    replaced by source ``s`` of item ``perm[k, i, s]`` (a random permutation per group and
    source), so new mixtures appear. Global and local batches must be multiples of the group
    size, and the local batch must start on a group boundary.

    Args:
        group_size: items per group g (v2: 4).
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"Remix group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T)."""
        rows = _rows(wav, rows)
        if not self.training:
            return wav
        batch, sources = wav.shape[:2]
        size = self.group_size
        _check_groups("Remix", size, rows, batch)
        noise = torch.rand((rows.total // size, size, sources), generator=generator)
        perm = noise.argsort(dim=1)[rows.start // size : (rows.start + batch) // size]
        perm = perm.to(wav.device)  # (B/g, g, S)
        groups = wav.reshape(batch // size, size, *wav.shape[1:])  # (B/g, g, S, C, T)
        group_idx = torch.arange(batch // size, device=wav.device)[:, None, None]
        source_idx = torch.arange(sources, device=wav.device)[None, None, :]
        return groups[group_idx, perm, source_idx].reshape(wav.shape)


def _check_groups(name: str, size: int, rows: BatchRows, batch: int) -> None:
    """Refuse groups of ``size`` items that would cross the local batch (ValueError)."""
    if rows.total % size or batch % size or rows.start % size:
        raise ValueError(
            f"{name}(group_size={size}) needs global batch ({rows.total}), local "
            f"batch ({batch}) and its start ({rows.start}) divisible by {size}"
        )


class StemMixup(nn.Module):
    """MSST's same-stem mixup: a stem becomes the mean of itself and, with probability
    ``probs[k]`` each, the same stem of another item, every part scaled by a gain drawn in
    ``[low, high)`` (MSST's ``mixup_probs`` and ``mixup_loudness_min/max``).

    MSST draws the extra stems from random tracks; here they are the same stem of a random item
    of the item's group of ``group_size`` (the :class:`Remix` groups, so ranks stay
    independent). As in MSST, a stem that gets no partner is still scaled by its gain.

    Args:
        probs: probability of each extra stem (MSST: 0.2, 0.02).
        low, high: gain range (MSST: 0.5, 1.5).
        group_size: items per group g.
    """

    def __init__(self, probs: list[float], low: float, high: float, group_size: int) -> None:
        super().__init__()
        self.probs = [float(p) for p in probs]
        self.low, self.high = float(low), float(high)
        self.group_size = max(1, int(group_size))

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T)."""
        rows = _rows(wav, rows)
        if not self.training:
            return wav
        batch, sources = wav.shape[:2]
        size, extra = self.group_size, len(self.probs)
        _check_groups("StemMixup", size, rows, batch)
        shape = (rows.total, sources, extra)
        used = _local(torch.rand(shape, generator=generator) < torch.tensor(self.probs), rows, wav)
        partner = _local(torch.randint(size, shape, generator=generator), rows, wav)
        gains = torch.rand((rows.total, sources, extra + 1), generator=generator)
        gains = _local(self.low + (self.high - self.low) * gains, rows, wav).to(wav.dtype)
        first = (torch.arange(batch, device=wav.device) // size * size)[:, None]  # (B, 1)
        stem = torch.arange(sources, device=wav.device)[None, :]  # (1, S)
        out = wav * gains[..., 0, None, None]
        for k in range(extra):
            other = wav[first + partner[..., k], stem] * gains[..., k + 1, None, None]
            out = out + torch.where(used[..., k, None, None], other, 0.0)
        return out / (1 + used.sum(-1)).to(wav.dtype)[..., None, None]


class AugmentPipeline(nn.Module):
    """The augmentations in order, all fed by the same generator.

    Args:
        modules: augmentation modules taking ``(wav, generator, rows)``.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(modules)

    def forward(
        self, wav: torch.Tensor, generator: torch.Generator, rows: BatchRows | None = None
    ) -> torch.Tensor:
        """(B, S, C, T) -> (B, S, C, T'), T' = T - shift."""
        for step in self.steps:
            wav = step(wav, generator, rows)
        return wav


def build_augment(
    shift: int,
    flip_sign: bool,
    flip_channels: bool,
    scale: tuple[float, float] | None,
    remix_group_size: int,
    mixup: tuple[list[float], float, float] | None = None,
) -> AugmentPipeline:
    """The v2 pipeline: Shift, FlipSign, FlipChannels, Scale, [StemMixup,] Remix (disabled ones
    left out).

    Args:
        shift: Shift range in samples (0: off).
        flip_sign: enable :class:`FlipSign`.
        flip_channels: enable :class:`FlipChannels`.
        scale: ``(low, high)`` gains of :class:`Scale`, or None (off).
        remix_group_size: :class:`Remix` group size (0: off); also :class:`StemMixup`'s.
        mixup: ``(probs, low, high)`` of :class:`StemMixup`, or None (off).
    """
    modules: list[nn.Module] = [Shift(shift)]
    if flip_sign:
        modules.append(FlipSign())
    if flip_channels:
        modules.append(FlipChannels())
    if scale is not None:
        modules.append(Scale(*scale))
    if mixup is not None:
        modules.append(StemMixup(*mixup, group_size=remix_group_size))
    if remix_group_size:
        modules.append(Remix(remix_group_size))
    return AugmentPipeline(modules)
