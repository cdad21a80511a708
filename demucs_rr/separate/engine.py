"""The one separation engine: chunked, batched, shift-averaged model application.

The CLI, the Python API, validation during training and evaluation all call :func:`apply_model`
(on an already normalised mixture) or :func:`separate_normalized` (which adds the whole-track
normalisation of the official tool). It relies only on the model contract of
:mod:`demucs_rr.models.base`, and never on a model's class:

- an ensemble (``weighted_members()`` not empty) is applied member by member, each with its own
  chunk grid and shifts, and the outputs are averaged per source with the members' weights;
- a single model is applied with the shift trick outermost, then chunking: each chunk of the
  grid is centred in ``chunk_input_length(chunk, segment)`` samples of real audio;
- segments longer than ``max_segment_length`` (and unsplit tracks that do not fit in it) are
  refused with a :class:`~demucs_rr.errors.ConfigError` before anything runs.

Everything the engine does to the audio outside the model (windows, weights, overlap-add) is
real-valued float32, so it runs unchanged on CPU, CUDA and Apple MPS.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from demucs_rr.errors import ConfigError
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
        segment: chunk length in samples; ``None`` uses the model's ``segment_length`` (each
            member's own for an ensemble).
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
    return _draw_offsets(shifts, max_shift, random.Random(seed))


def _draw_offsets(shifts: int, max_shift: int, rng: random.Random) -> list[int]:
    """``shifts`` left paddings drawn from ``rng`` (``[0]`` when ``shifts <= 0``)."""
    if shifts <= 0:
        return [0]
    return [max_shift - rng.randint(0, max_shift) for _ in range(shifts)]


def _seconds(samples: int, samplerate: int) -> str:
    """``samples`` as seconds for messages: ``7.8``, ``0.39``, ``7.801``."""
    return f"{round(samples / samplerate, 3):g}"


def check_segment(model: SeparationModel, options: ApplyOptions, length: int | None = None) -> None:
    """Refuse what the model cannot run: a segment above its maximum, or (``split=False``) a
    track of ``length`` samples that does not fit in one maximum segment.

    Raises:
        ConfigError: one line naming the model's maximum segment in seconds.
    """
    limit = model.max_segment_length
    if limit is None:
        return
    rate = model.samplerate
    if options.segment is not None and options.segment > limit:
        raise ConfigError(
            f"segment {_seconds(options.segment, rate)} s is longer than this model's maximum "
            f"segment of {_seconds(limit, rate)} s"
        )
    if options.split or length is None:
        return
    needed = length + (int(0.5 * rate) if options.shifts > 0 else 0)
    if needed > limit:
        extra = " plus 0.5 s for the shifts" if options.shifts > 0 else ""
        raise ConfigError(
            f"cannot separate {_seconds(length, rate)} s{extra} in one pass (no split): this "
            f"model's maximum segment is {_seconds(limit, rate)} s; split the track instead"
        )


def count_passes(model: SeparationModel, options: ApplyOptions) -> int:
    """How many times the engine covers the track: one per shift and per ensemble member."""
    members = model.weighted_members()
    if not members:
        return max(1, options.shifts)
    return sum(count_passes(member, options) for member, _ in members)


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
    model: SeparationModel,
    mix: torch.Tensor,
    group: list[Chunk],
    segment: int,
    device: torch.device,
) -> torch.Tensor:
    """Run the model on the centred windows of ``group`` (chunks of a ``segment`` grid).

    Returns:
        (B, S, C, L) outputs on the CPU, centre-trimmed to the chunk length L.
    """
    length = group[0].length
    padded = model.chunk_input_length(length, segment)
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
    segment = options.segment or model.segment_length
    if options.split:
        chunks = plan_chunks(start, length, segment, options.overlap)
        weight = triangle_weight(segment, options.transition_power)
    else:
        chunks = [Chunk(start, length - start)]
        weight = torch.ones(length - start)
    acc = OverlapAdd(len(model.sources), mix.shape[0], start, weight)
    done = 0
    for group in _batches(chunks, max(1, options.batch_size)):
        out = _run_batch(model, mix, group, segment, device)
        for chunk, chunk_out in zip(group, out, strict=True):
            acc.add(chunk, chunk_out)
        reached = min(max(group[-1].end, 0), length)
        if progress is not None and reached > done:
            progress(reached - done)
        done = max(done, reached)
    return acc.pop(length)[..., left_pad:]


def _apply_single(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions,
    device: torch.device,
    progress: ProgressCallback | None,
    rng: random.Random,
) -> torch.Tensor:
    """Shift trick (outermost) around chunked passes of one model: (S, C, T)."""
    offsets = _draw_offsets(options.shifts, int(0.5 * model.samplerate), rng)
    total: torch.Tensor | None = None
    for left_pad in offsets:
        out = _apply_pass(model, mix, left_pad, options, device, progress)
        total = out if total is None else total + out
    assert total is not None
    return total / len(offsets)


def _apply_any(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions,
    device: torch.device,
    progress: ProgressCallback | None,
    rng: random.Random,
) -> torch.Tensor:
    """Apply a model, or each member of an ensemble with its own chunking and shifts, then
    ``sum_m w[m][s] * out_m[s] / sum_m w[m][s]`` per source s: (S, C, T)."""
    members = model.weighted_members()
    if not members:
        return _apply_single(model, mix, options, device, progress, rng)
    total: torch.Tensor | None = None
    weight_sums = [0.0] * len(model.sources)
    for member, weights in members:
        out = _apply_any(member, mix, options, device, progress, rng)
        out = out * torch.tensor(list(weights), dtype=out.dtype)[:, None, None]
        total = out if total is None else total + out
        weight_sums = [acc + float(w) for acc, w in zip(weight_sums, weights, strict=True)]
    assert total is not None
    return total / torch.tensor(weight_sums, dtype=total.dtype)[:, None, None]


def apply_model(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions = ApplyOptions(),
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Separate a (normalised) mixture with chunked overlap-add and the shift trick.

    With ``shifts == 0`` this reproduces the official ``apply_model`` (v2, and v4 for Demucs,
    HDemucs, HTDemucs and bags of them) to float32 rounding. The shift trick follows the
    official v4 order: each pass delays the whole track by a random amount up to 0.5 s (zeros
    in front), separates it, and the passes are averaged; ensemble members draw their own
    offsets, one after the other, from the same seeded generator.

    Args:
        model: a separation model (see :mod:`demucs_rr.models.base`) already on ``device``.
        mix: (C, T) mixture in the model's sample rate and channel count.
        options: chunking, shifts and batching.
        device: where the model runs; defaults to the device of the model's parameters.
        progress: optional callback, see :data:`ProgressCallback`.

    Returns:
        (S, C, T) float32 estimates on the CPU.

    Raises:
        ConfigError: the segment or the unsplit track exceeds the model's maximum segment.
    """
    if mix.dim() != 2:
        raise ValueError(f"expected a (channels, time) mixture, got shape {tuple(mix.shape)}")
    if mix.shape[0] != model.audio_channels:
        raise ValueError(f"model takes {model.audio_channels} channels, got {mix.shape[0]}")
    check_segment(model, options, mix.shape[-1])
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    mix = mix.detach().float().cpu()
    with torch.inference_mode():
        return _apply_any(model, mix, options, device, progress, random.Random(options.seed))


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
