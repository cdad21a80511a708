"""The engine's cost per chunk does not grow with the track, and the sliding buffer gives the
same result whichever way the mixture is cut into blocks."""

from __future__ import annotations

import time

import pytest
import torch

from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.demucs_v2 import Demucs
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.engine import ApplyOptions, apply_model
from demucs_rr.separate.passes import SlidingApplier

SOURCES = ["drums", "bass", "other", "vocals"]


def _cpu_seconds(model: FractionModel, mix: torch.Tensor, options: ApplyOptions) -> float:
    """Best of five process-time measurements of one in-memory separation."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        apply_model(model, mix, options)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.integration
def test_time_per_chunk_does_not_grow_with_the_track() -> None:
    """4x the length (4x the chunks) costs < 5x the time; the old quadratic overlap-add, which
    re-padded the whole output on every chunk, took ~20x here. Process time, best of five, and
    up to three attempts keep a busy shared machine from failing it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = FractionModel(SOURCES, segment_length=441, crop=20).eval()
        options = ApplyOptions(overlap=0.25)
        short = torch.randn(2, 5 * 44100, generator=torch.Generator().manual_seed(0))
        long = torch.randn(2, 20 * 44100, generator=torch.Generator().manual_seed(1))
        apply_model(model, short[:, :44100], options)  # warm-up
        ratio = float("inf")
        for _ in range(3):
            ratio = _cpu_seconds(model, long, options) / _cpu_seconds(model, short, options)
            if ratio < 5.0:
                break
    finally:
        torch.set_num_threads(threads)
    assert ratio < 5.0, f"4x the track cost {ratio:.1f}x the time"


def _in_blocks(applier: SlidingApplier, mix: torch.Tensor, block: int) -> torch.Tensor:
    """Feed ``mix`` (C, T) in blocks of ``block`` samples and join the pieces: (S, C, T)."""
    pieces = [applier.push(mix[:, i : i + block]) for i in range(0, mix.shape[-1], block)]
    pieces.append(applier.finish())
    return torch.cat(pieces, -1)


@pytest.mark.parametrize("length", [1, 999, 1000, 1001, 4097])
@pytest.mark.parametrize("block", [1, 333, 1000, 5000])
def test_blocks_equal_whole_track(length: int, block: int) -> None:
    model = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], segment_length=400, crop=17).eval()
    options = ApplyOptions(overlap=0.25, shifts=2, batch_size=3, seed=3)
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    expected = apply_model(model, mix, options)
    with torch.inference_mode():
        got = _in_blocks(SlidingApplier(model, options, torch.device("cpu")), mix, block)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_blocks_equal_whole_track_for_a_bag_of_convolutional_models() -> None:
    members = []
    for seed, segment in ((0, 3000), (1, 4100)):
        torch.manual_seed(seed)
        members.append(Demucs(SOURCES, channels=4, depth=4, segment_length=segment).eval())
    bag = BagOfModels(members, weights=[[1, 1, 1, 1], [1, 3, 1, 0.5]])
    options = ApplyOptions(shifts=1, seed=7, batch_size=2, overlap=0.5)
    mix = torch.randn(2, 12345, generator=torch.Generator().manual_seed(0))
    expected = apply_model(bag, mix, options)
    with torch.inference_mode():
        got = _in_blocks(SlidingApplier(bag, options, torch.device("cpu")), mix, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
