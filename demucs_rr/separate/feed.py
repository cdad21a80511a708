"""What every pass of the sliding engine reads: the buffered mixture and the run's settings.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.normalization import Affine
from demucs_rr.separate.precision import autocast

ProgressCallback = Callable[[int], None]
"""Called with the number of new track samples covered; each shift pass covers the track once."""


@dataclass
class Feed:
    """The sliding buffer of the mixture and how to run the model on it.

    Attributes:
        buf: (C, n) buffered mixture (the top rule's normalised input).
        origin: track coordinate of ``buf[..., 0]``.
        length: the track length once known (after the last block), else None.
        batch_size: chunks per forward pass.
        device: where the model runs.
        precision: forward-pass precision (:func:`~demucs_rr.separate.precision.autocast`).
        progress: optional callback, see :data:`ProgressCallback`.
    """

    buf: torch.Tensor
    origin: int
    length: int | None
    batch_size: int
    device: torch.device
    precision: str
    progress: ProgressCallback | None = None

    @property
    def buffered_end(self) -> int:
        """One past the last mixture sample received."""
        return self.origin + self.buf.shape[-1]

    def view(self, convert: Affine | None) -> torch.Tensor:
        """The buffer as a pass whose rule differs from the top one sees it: (C, n)."""
        if convert is None:
            return self.buf
        return self.buf * convert.in_scale + convert.in_shift

    def covered(self, done: int, end: int) -> int:
        """Report the track samples a pass has covered up to ``end``; returns the new total."""
        reached = min(max(end, 0), self.buffered_end)
        if self.progress is not None and reached > done:
            self.progress(reached - done)
        return max(done, reached)


def forward(
    model: SeparationModel, windows: torch.Tensor, device: torch.device, precision: str
) -> torch.Tensor:
    """``model`` on (B, C, L) windows at ``precision``: (B, S, C, L') float32 on the CPU."""
    with autocast(precision, device):
        out = model(windows.to(device))
    return out.float().cpu()
