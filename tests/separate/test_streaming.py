"""Streaming a causal Conv-TasNet block by block == one offline pass; stream errors."""

from __future__ import annotations

import random

import pytest
import torch

from demucs_rr.errors import DemucsRRError
from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.separate.causal import StreamError, StreamingSeparator, stream_separate
from demucs_rr.separate.engine import ApplyOptions, separate_normalized

SOURCES = ["drums", "bass", "other", "vocals"]
TINY = dict(N=16, L=20, B=8, H=16, P=3, X=6, R=2, causal=True, norm_type="cLN")


def tiny_model(**overrides) -> ConvTasNet:
    torch.manual_seed(0)
    return ConvTasNet(SOURCES, **{**TINY, **overrides}).eval()


def signal(length: int = 3001, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, length, generator=torch.Generator().manual_seed(seed))


def block_sizes(spec: int | str, length: int) -> list[int]:
    """Sizes covering ``length``: a constant, or a random mix of 1 .. 700."""
    rng = random.Random(3)
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(spec if isinstance(spec, int) else rng.choice([1, 2, 9, 10, 19, 20, 333, 700]))
    return sizes


def stream(streamer: StreamingSeparator, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed ``x`` in blocks, checking the lag bound after each; return all outputs + flush."""
    outs, start, emitted = [], 0, 0
    L, hop = streamer.model.L, streamer.hop
    for size in sizes:
        outs.append(streamer.process(x[:, start : start + size]))
        start = min(start + size, x.size(-1))
        emitted += outs[-1].size(-1)
        if streamer.fixed_latency:
            assert emitted == start
        elif start >= L:  # once a frame exists, the lag is within [L - hop, L - 1]
            assert L - hop <= start - emitted <= L - 1
    outs.append(streamer.flush())
    return torch.cat(outs, dim=-1)


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err = float((out - ref).abs().max())
    assert err <= 1e-5 * float(ref.abs().max()) + 1e-7, f"max abs error {err:.3e}"


@pytest.mark.parametrize("sizes", [1, 7, 160, 1024, "random"])
def test_stream_equals_offline(sizes: int | str) -> None:
    model = tiny_model()
    x = signal()
    with torch.no_grad():
        ref = model(x[None])[0]  # (S, C, T)
    out = stream(StreamingSeparator(model), x, block_sizes(sizes, x.size(-1)))
    assert_close(out, ref)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(L=21, P=2, mask_nonlinear="softmax"),  # odd L: three frames overlap per sample
        dict(L=8, norm_type="id", audio_channels=1, R=1),
        dict(norm_type="BN", X=3),  # BatchNorm1d in eval mode is frame-local too
    ],
)
def test_stream_equals_offline_variants(overrides: dict) -> None:
    model = tiny_model(**overrides)
    x = signal(1501)[: model.audio_channels]
    with torch.no_grad():
        ref = model(x[None])[0]
    assert_close(stream(StreamingSeparator(model), x, block_sizes("random", 1501)), ref)


def test_fixed_latency_and_reuse_after_flush() -> None:
    model = tiny_model()
    x = signal(2000)
    with torch.no_grad():
        ref = model(x[None])[0]
    streamer = StreamingSeparator(model, fixed_latency=True)
    assert (streamer.latency_samples, streamer.min_latency_samples) == (19, 10)
    assert streamer.latency_ms == pytest.approx(19 / 44.1)
    for _ in range(2):  # flush resets: the same object streams a second time identically
        out = stream(streamer, x, block_sizes(64, 2000))
        assert out.shape[-1] == 2000 + 19
        assert float(out[..., :19].abs().max()) == 0.0
        assert_close(out[..., 19:], ref)


def test_stream_shorter_than_a_frame() -> None:
    streamer = StreamingSeparator(tiny_model())
    assert streamer.process(signal(12)).shape == (4, 2, 0)
    assert torch.equal(streamer.flush(), torch.zeros(4, 2, 12))


def test_stream_separate_matches_engine_single_pass() -> None:
    model = tiny_model()
    mix = 0.3 * signal(2500) + 0.05
    pieces: list[torch.Tensor] = []
    stems, report = stream_separate(model, mix, block_size=256, on_block=pieces.append)
    ref = separate_normalized(model, mix, ApplyOptions(split=False))
    assert_close(stems, ref)
    assert torch.equal(torch.cat(pieces, dim=-1), stems)
    assert len(report.block_ms) == 10 and report.rtf > 0
    assert report.latency_samples == 19


def test_model_errors() -> None:
    with pytest.raises(StreamError, match=r"needs a causal model \(causal=True\)"):
        StreamingSeparator(tiny_model(causal=False))
    with pytest.raises(StreamError, match="frame-local norm"):
        StreamingSeparator(tiny_model(norm_type="gLN"))
    with pytest.raises(StreamError, match="eval mode"):
        StreamingSeparator(tiny_model(norm_type="BN").train())
    with pytest.raises(StreamError, match="Conv-TasNet"):
        StreamingSeparator(torch.nn.Linear(2, 2))


def test_block_errors() -> None:
    streamer = StreamingSeparator(tiny_model())
    with pytest.raises(StreamError, match="empty block"):
        streamer.process(torch.zeros(2, 0))
    with pytest.raises(StreamError, match=r"2 audio channels, got a block of shape \(1, 100\)"):
        streamer.process(torch.zeros(1, 100))
    with pytest.raises(StreamError, match=r"\(2, n\) tensor, got \(1, 2, 100\)"):
        streamer.process(torch.zeros(1, 2, 100))
    with pytest.raises(StreamError, match="resample"):
        streamer.process(torch.zeros(2, 100), samplerate=48000)
    streamer.process(torch.zeros(2, 100), samplerate=44100)
    with pytest.raises(StreamError, match="changed mid-stream: 44100 Hz, then 48000 Hz"):
        streamer.process(torch.zeros(2, 100), samplerate=48000)
    with pytest.raises(StreamError, match="block size"):
        stream_separate(tiny_model(), signal(100), block_size=0)
    assert issubclass(StreamError, DemucsRRError)
