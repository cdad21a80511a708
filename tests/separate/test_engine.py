"""The separation engine: exact reconstruction, chunk planning, batching, shifts, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.chunking import Chunk, OverlapAdd, plan_chunks, triangle_weight, window
from demucs_rr.separate.engine import ApplyOptions, apply_model, separate_normalized

SOURCES = ["drums", "bass", "other", "vocals"]


def identity(crop: int = 0, segment: int = 1000) -> FractionModel:
    return FractionModel(SOURCES, [1.0] * 4, segment_length=segment, crop=crop)


def noise(length: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(channels, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [1, 7, 999, 1000, 1001, 4321])
@pytest.mark.parametrize("segment,overlap", [(1000, 0.25), (333, 0.5), (64, 0.0), (5000, 0.9)])
@pytest.mark.parametrize("crop", [0, 37])
def test_identity_model_gives_input_back(length: int, segment: int, overlap: float, crop: int):
    mix = noise(length)
    opts = ApplyOptions(segment=segment / 44100, overlap=overlap, batch_size=3)
    out = apply_model(identity(crop, segment), mix, opts)
    assert out.shape == (4, 2, length)
    torch.testing.assert_close(out, mix.expand(4, -1, -1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shifts", [1, 3])
def test_identity_with_shifts_and_no_split(shifts: int):
    mix = noise(30000)
    model = FractionModel(SOURCES, [1.0] * 4, samplerate=8000, segment_length=4000, crop=11)
    for split in (True, False):
        out = apply_model(model, mix, ApplyOptions(shifts=shifts, split=split, seed=5))
        torch.testing.assert_close(out, mix.expand(4, -1, -1), atol=1e-6, rtol=1e-6)


def test_plan_chunks_follows_official_offsets():
    chunks = plan_chunks(0, 29107, 8820, 0.25)
    assert [c.offset for c in chunks] == [0, 6615, 13230, 19845, 26460]
    assert chunks[-1].length == 29107 - 26460
    assert all(c.length == 8820 for c in chunks[:-1])
    with pytest.raises(ValueError):
        plan_chunks(0, 10, 10, 1.0)


def test_triangle_weight_never_zero_and_peaks_at_one():
    w = triangle_weight(10)
    assert w.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert float(triangle_weight(11, 2.0).min()) > 0


def test_window_pads_with_zeros_only_outside_the_track():
    mix = torch.arange(10.0)[None]
    assert window(mix, -2, 5).tolist() == [[0, 0, 0, 1, 2]]
    assert window(mix, 8, 4).tolist() == [[8, 9, 0, 0]]
    assert window(mix, 20, 2).tolist() == [[0, 0]]


def test_overlap_add_pop_in_blocks_equals_pop_at_end():
    weight = triangle_weight(100)
    chunks = plan_chunks(0, 470, 100, 0.25)
    outs = [
        torch.randn(2, 1, c.length, generator=torch.Generator().manual_seed(i))
        for i, c in enumerate(chunks)
    ]
    whole = OverlapAdd(2, 1, 0, weight)
    for c, o in zip(chunks, outs, strict=True):
        whole.add(c, o)
    expected = whole.pop(470)
    streamed = OverlapAdd(2, 1, 0, weight)
    parts = []
    for i, (c, o) in enumerate(zip(chunks, outs, strict=True)):
        streamed.add(c, o)
        nxt = chunks[i + 1].offset if i + 1 < len(chunks) else 470
        parts.append(streamed.pop(nxt))
    torch.testing.assert_close(torch.cat(parts, -1), expected)
    with pytest.raises(ValueError):
        streamed.add(Chunk(0, 10), torch.zeros(2, 1, 10))


def test_progress_reports_each_sample_once_per_pass():
    seen = []
    opts = ApplyOptions(segment=300 / 44100, shifts=2, batch_size=2)
    apply_model(identity(segment=300), noise(1234), opts, progress=seen.append)
    assert sum(seen) == 2 * 1234


def test_silence_gives_zeros_not_nan():
    out = separate_normalized(identity(crop=5), torch.zeros(2, 5000))
    assert torch.isfinite(out).all() and float(out.abs().max()) == 0.0


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="2 channels"):
        apply_model(identity(), torch.zeros(3, 100))


# --- real models -------------------------------------------------------------------------------


def tiny_demucs(**kwargs):
    from demucs_rr.models import demucs_v2 as demucs

    torch.manual_seed(0)
    cfg = dict(sources=SOURCES, channels=4, depth=4, segment_length=8820)
    cfg.update(kwargs)
    return demucs.Demucs(**cfg).eval()


def test_batching_does_not_change_results():
    model = tiny_demucs()
    mix = noise(30000)
    one = apply_model(model, mix, ApplyOptions(batch_size=1))
    many = apply_model(model, mix, ApplyOptions(batch_size=4))
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-4)


def test_seeded_shifts_are_reproducible():
    model = tiny_demucs()
    mix = noise(20000)
    a = apply_model(model, mix, ApplyOptions(shifts=2, seed=1))
    b = apply_model(model, mix, ApplyOptions(shifts=2, seed=1))
    c = apply_model(model, mix, ApplyOptions(shifts=2, seed=2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_chunked_agrees_with_unchunked():
    """Chunked and one-pass outputs of a real model agree closely (strided convolutions are not
    shift-invariant, so they are never identical, as in the official implementation)."""
    model = tiny_demucs()
    mix = noise(60000)
    split = apply_model(model, mix, ApplyOptions(segment=20000 / 44100, overlap=0.25))
    whole = apply_model(model, mix, ApplyOptions(split=False))
    diff = split - whole
    assert float(diff.norm() / whole.norm()) < 0.02
    assert float(diff.abs().max() / whole.abs().max()) < 0.05


def _load(official_fixtures, case: str, name: str):
    return {k: torch.from_numpy(v) for k, v in np.load(official_fixtures / case / name).items()}


def _within(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err = float((out - ref).abs().max())
    assert err <= 1e-5 * float(ref.abs().max()) + 1e-6, f"max abs error {err:.3g}"


@pytest.mark.parametrize("split,name", [(True, "apply_split.npz"), (False, "apply_nosplit.npz")])
def test_engine_matches_official_apply(official_fixtures, split: bool, name: str):
    import json

    from demucs_rr.models import demucs_v2 as demucs

    meta = json.loads((official_fixtures / "v2_demucs" / "meta.json").read_text())
    model = demucs.Demucs(**meta["constructor"]["kwargs"]).eval()
    state = torch.load(official_fixtures / "v2_demucs" / "state.th", weights_only=True)
    model.load_state_dict(state)
    data = _load(official_fixtures, "v2_demucs", name)
    torch.set_num_threads(1)
    try:
        out = apply_model(model, data["mix"], ApplyOptions(split=split, overlap=0.25))
    finally:
        torch.set_num_threads(2)
    _within(out, data["out"])
