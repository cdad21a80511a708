"""The one separation engine: chunked, batched, shift-averaged model application.

The CLI, the Python API, validation during training and evaluation all call :func:`apply_model`
(on an already normalised mixture) or :func:`separate_normalized` (which adds the whole-track
normalisation of the official tool). It relies only on the model contract of
:mod:`demucs_rr.models.base`, and never on a model's class:

- an ensemble (``weighted_members()`` not empty) is expanded into its members, each with its
  own chunk grid and shifts, and the outputs are averaged per source with the members' weights;
- a single model is applied with the shift trick outermost, then chunking: each chunk of the
  grid is centred in ``chunk_input_length(chunk, segment)`` samples of real audio;
- every (member, shift) pass runs side by side over a sliding buffer
  (:class:`~demucs_rr.separate.passes.SlidingApplier`), which the in-memory path feeds in large
  blocks and :mod:`demucs_rr.separate.to_files` feeds from a file being decoded, so the work per
  chunk is constant and a file never needs to fit in memory;
- segments longer than ``max_segment_length`` (and unsplit tracks that do not fit in it) are
  refused with a :class:`~demucs_rr.errors.ConfigError` before anything runs.

Everything the engine does to the audio outside the model (windows, weights, overlap-add) is
real-valued float32, so it runs unchanged on CPU, CUDA and Apple MPS.

Dimension letters: B batch, S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.passes import ProgressCallback, SlidingApplier, draw_offsets

DEFAULT_OPTIONS = ApplyOptions()
"""The engine's default options (chunked, 25 % overlap, no shifts, batch 1)."""

__all__ = [
    "ApplyOptions",
    "ProgressCallback",
    "apply_model",
    "check_segment",
    "count_passes",
    "normalize",
    "separate_normalized",
    "shift_offsets",
]


def shift_offsets(shifts: int, max_shift: int, seed: int) -> list[int]:
    """Left paddings of the shift passes: ``[0]`` without shifts, else ``shifts`` draws.

    Each draw is ``max_shift - randint(0, max_shift)``, the official offset convention, from a
    private ``random.Random(seed)``.
    """
    return draw_offsets(shifts, max_shift, random.Random(seed))


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
    segment = options.segment_samples(rate)
    if segment is not None and segment > limit:
        raise ConfigError(
            f"segment {_seconds(segment, rate)} s is longer than this model's maximum "
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


def apply_model(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions = DEFAULT_OPTIONS,
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
        applier = SlidingApplier(model, options, device, progress)
        block = max(2**16, 4 * applier.max_segment) if options.split else mix.shape[-1]
        pieces = [applier.push(mix[:, i : i + block]) for i in range(0, mix.shape[-1], block)]
        pieces.append(applier.finish())
    return torch.cat(pieces, -1)


STATS_BLOCK = 2**17
"""Samples per block of :func:`mono_stats` when it runs over a whole tensor."""


def mono_stats(blocks: Iterable[torch.Tensor], eps: float = 1e-8) -> tuple[int, float, float]:
    """Length, mean and std of the mono (channel-averaged) mix of consecutive (C, n) blocks.

    float64, merged block by block (Chan et al.), so a streamed file and the same audio in
    memory give the same statistics whatever their length. The std is the unbiased one plus
    ``eps`` (as the v4 tool does), so silence normalises to zeros, not NaN.
    """
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
    std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
    return n, mean, std + eps


def normalize(mix: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, float, float]:
    """Whole-track normalisation of the official tool, with :func:`mono_stats`'s statistics.

    Args:
        mix: (C, T) mixture.

    Returns:
        ((C, T) normalised copy, mean, std).
    """
    _, mean, std = mono_stats(torch.split(mix, STATS_BLOCK, dim=-1), eps)
    return (mix - mean) / std, mean, std


def separate_normalized(
    model: SeparationModel,
    mix: torch.Tensor,
    options: ApplyOptions = DEFAULT_OPTIONS,
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
