"""The one separation engine: chunked, batched, shift-averaged model application.

The CLI, the Python API, validation during training and evaluation all call :func:`apply_model`
(on an already normalised mixture) or :func:`separate_normalized` (which adds the whole-track
normalisation of the official tool). It relies only on the model contract of
:mod:`demucs_rr.models.base`.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from demucs_rr.models.base import SeparationModel, center_trim
from demucs_rr.separate.chunking import (
    Chunk,
    OverlapAdd,
    centred_window,
    plan_chunks,
    triangle_weight,
)

ProgressCallback = Callable[[int], None]
"""Called with the number of new track samples covered; each shift pass covers the track once."""


@dataclass(frozen=True)
class ApplyOptions:
    """How the engine applies a model.

    Attributes:
        segment: chunk length in samples; ``None`` uses the model's ``segment_length``.
        overlap: fraction of overlap between neighbouring chunks, in [0, 1).
        split: cut the track into chunks; ``False`` runs the whole track in one call.
        shifts: number of random time shifts averaged (shift trick); 0 disables it.
        seed: seed of the shift offsets, so that shifted runs are reproducible.
        batch_size: number of chunks per forward pass.
        transition_power: sharpness of the triangular cross-fade (>= 1).
    """

    segment: int | None = None
    overlap: float = 0.25
    split: bool = True
    shifts: int = 0
    seed: int = 0
    batch_size: int = 1
    transition_power: float = 1.0


def shift_offsets(shifts: int, max_shift: int, seed: int) -> list[int]:
    """Left paddings of the shift passes: ``[0]`` without shifts, else ``shifts`` draws.

    Each draw is ``max_shift - randint(0, max_shift)``, the official offset convention, from a
    private ``random.Random(seed)``.
    """
    if shifts <= 0:
        return [0]
    rng = random.Random(seed)
    return [max_shift - rng.randint(0, max_shift) for _ in range(shifts)]


def _batches(chunks: Sequence[Chunk], batch_size: int) -> Iterator[list[Chunk]]:
    """Group consecutive chunks of equal length, at most ``batch_size`` per group."""
    group: list[Chunk] = []
    for chunk in chunks:
        if group and (len(group) == batch_size or chunk.length != group[0].length):
            yield group
            group = []
        group.append(chunk)
    if group:
        yield group


def _run_batch(
    model: SeparationModel, mix: torch.Tensor, group: list[Chunk], device: torch.device
) -> torch.Tensor:
    """Run the model on the centred windows of ``group``.

    Returns:
        (B, S, C, L) outputs on the CPU, centre-trimmed to the chunk length L.
    """
    length = group[0].length
    padded = model.valid_length(length)
    windows = torch.stack([centred_window(mix, chunk, padded) for chunk in group])  # (B, C, L')
    out = model(windows.to(device))  # (B, S, C, L'')
    return center_trim(out, length).float().cpu()


def _apply_pass(
    model: SeparationModel,
    mix: torch.Tensor,
    left_pad: int,
    options: ApplyOptions,
    device: torch.device,
    progress: ProgressCallback | None,
) -> torch.Tensor:
    """One pass over the track whose chunk grid starts ``left_pad`` samples before it.

    Returns:
        (S, C, T) estimate for the samples of the track.
    """
    length = mix.shape[-1]
    start = -left_pad
    if options.split:
        segment = options.segment or model.segment_length
        chunks = plan_chunks(start, length, segment, options.overlap)
        weight = triangle_weight(segment, options.transition_power)
    else:
        chunks = [Chunk(start, length - start)]
        weight = torch.ones(length - start)
    acc = OverlapAdd(len(model.sources), mix.shape[0], start, weight)
    done = 0
    for group in _batches(chunks, max(1, options.batch_size)):
        out = _run_batch(model, mix, group, device)
        for chunk, chunk_out in zip(group, out, strict=True):
            acc.add(chunk, chunk_out)
        reached = min(max(group[-1].end, 0), length)
        if progress is not None and reached > done:
            progress(reached - done)
        done = max(done, reached)
    return acc.pop(length)[..., left_pad:]


def apply_model(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions = ApplyOptions(),
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Separate a (normalised) mixture with chunked overlap-add and the shift trick.

    With ``shifts == 0`` and ``split`` this reproduces the official v2 ``apply_model`` exactly.
    The shift trick follows the official v4 order: each pass delays the whole track by a random
    amount up to 0.5 s (zeros in front), separates it, and the passes are averaged.

    Args:
        model: a separation model (see :mod:`demucs_rr.models.base`) already on ``device``.
        mix: (C, T) mixture in the model's sample rate and channel count.
        options: chunking, shifts and batching.
        device: where the model runs; defaults to the device of the model's parameters.
        progress: optional callback, see :data:`ProgressCallback`.

    Returns:
        (S, C, T) float32 estimates on the CPU.
    """
    if mix.dim() != 2:
        raise ValueError(f"expected a (channels, time) mixture, got shape {tuple(mix.shape)}")
    if mix.shape[0] != model.audio_channels:
        raise ValueError(f"model takes {model.audio_channels} channels, got {mix.shape[0]}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    mix = mix.detach().float().cpu()
    offsets = shift_offsets(options.shifts, int(0.5 * model.samplerate), options.seed)
    total: torch.Tensor | None = None
    with torch.inference_mode():
        for left_pad in offsets:
            out = _apply_pass(model, mix, left_pad, options, device, progress)
            total = out if total is None else total + out
    assert total is not None
    return total / len(offsets)


def normalize(mix: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, float, float]:
    """Whole-track normalisation of the official tool.

    Statistics are the mean and unbiased std of the channel average (mono reference), with
    ``eps`` added to the std (as the v4 tool does) so that silence gives zeros, not NaN.

    Args:
        mix: (C, T) mixture.

    Returns:
        ((C, T) normalised copy, mean, std).
    """
    ref = mix.mean(0)
    mean = float(ref.mean())
    std = float(ref.std()) if ref.numel() > 1 else 0.0
    std += eps
    return (mix - mean) / std, mean, std


def separate_normalized(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions = ApplyOptions(),
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Normalise ``mix`` (C, T) over the whole track, separate, and undo the normalisation.

    The official tool adds the whole mean back to every stem, so its stems sum to the mixture
    plus ``(S - 1) * mean``; here each stem gets ``mean / S``, so that stems that add up to the
    normalised mixture add up to the mixture itself. The mean of music is tiny, so metrics do not
    move, but written stems then sum to the input within quantisation.

    Returns:
        (S, C, T) float32 estimates in the units of ``mix``.
    """
    normed, mean, std = normalize(mix.float())
    out = apply_model(model, normed, options, device, progress)
    return out * std + mean / out.shape[0]
