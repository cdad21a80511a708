"""MSST's chunking in the sliding engine, against a transcription of MSST's ``demix``: short
tracks, chunk sizes off the STFT hop, channels, streaming, options, shifts, mixed bags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demucs_rr.audio import convert_audio
from demucs_rr.errors import ConfigError
from demucs_rr.hub.bag_package import save_bag_package
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.msst_roformer import roformer_kwargs
from demucs_rr.hub.msst_tfc import tfc_kwargs
from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.base import CentredChunks, FadedChunks, Normalization
from demucs_rr.models.bs_roformer import BSRoformer
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.api import Separator
from demucs_rr.separate.engine import apply_model, separate_normalized, shift_offsets
from demucs_rr.separate.faded import fade_window, faded_step
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.outputs import compose_stems, select_stems
from demucs_rr.separate.passes import SlidingApplier
from tests.helpers.checks import assert_matches

SOURCES = ["vocals", "bass", "drums", "other"]
RATE = 8000
CHUNK = 1000  # not a multiple of the STFT hop (16)


def tiny_roformer(seed: int = 0, **overrides: Any) -> BSRoformer:
    """A small BS-RoFormer with seeded random weights, eval mode."""
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        sources=SOURCES, dim=8, depth=1, heads=1, dim_head=8, stereo=True,
        time_transformer_depth=1, freq_transformer_depth=1, freqs_per_bands=[16, 17],
        stft_n_fft=64, stft_hop_length=16, stft_win_length=64, mlp_expansion_factor=1,
        samplerate=RATE, segment_length=CHUNK, num_overlap=4,
    )  # fmt: skip
    kwargs.update(overrides)
    return BSRoformer(**kwargs).eval()


def msst_demix(model: BSRoformer, mix: torch.Tensor, chunk: int, num_overlap: int) -> Any:
    """MSST's ``demix`` (generic mode, batch size 1), transcribed: (S, C, T) numpy array."""
    fade, step = chunk // 10, chunk // num_overlap
    border, length = chunk - step, mix.shape[-1]
    padded = length > 2 * border and border > 0
    if padded:
        mix = F.pad(mix[None], (border, border), mode="reflect")[0]
    window = torch.ones(chunk)
    window[-fade:] = torch.linspace(1, 0, fade)
    window[:fade] = torch.linspace(0, 1, fade)
    total = mix.shape[-1]
    result = torch.zeros(len(model.sources), mix.shape[0], total)
    counter = torch.zeros_like(result)
    i = 0
    with torch.inference_mode():
        while i < total:
            part = mix[:, i : i + chunk]
            n = part.shape[-1]
            mode = "reflect" if n > chunk // 2 else "constant"
            part = F.pad(part[None], (0, chunk - n), mode=mode)[0]
            x = model(part[None])[0]
            i += step
            w = window.clone()
            if i - step == 0:
                w[:fade] = 1
            elif i >= total:
                w[-fade:] = 1
            result[..., i - step : i - step + n] += x[..., :n] * w[:n]
            counter[..., i - step : i - step + n] += w[:n]
    out = np.nan_to_num((result / counter).numpy())
    return out[..., border:-border] if padded else out


def _mix(length: int, channels: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, length, generator=gen) * 0.1 + 0.01


def _stack(stems: dict[str, torch.Tensor], sources: list[str]) -> Any:
    return torch.stack([stems[name] for name in sources]).numpy()


@pytest.mark.parametrize("length", [1, 5, 300, 500, 501, 999, 1000, 1500, 1501, 1502, 4321])
def test_tracks_of_any_length_match_msst(length: int, one_thread: None) -> None:
    model = tiny_roformer()
    mix = _mix(length)
    stems = Separator(model, device="cpu").separate_tensor(mix)
    assert_matches(_stack(stems, SOURCES), msst_demix(model, mix, CHUNK, 4), f"T={length}")


@pytest.mark.parametrize("length", [1, 700, 2501])
def test_mono_model_and_two_overlaps(length: int, one_thread: None) -> None:
    model = tiny_roformer(seed=2, stereo=False, num_overlap=2, freqs_per_bands=[8, 25])
    mix = _mix(length, channels=1)
    stems = Separator(model, device="cpu").separate_tensor(mix)
    assert_matches(_stack(stems, SOURCES), msst_demix(model, mix, CHUNK, 2), f"mono T={length}")


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_conversion_as_for_other_models(channels: int, one_thread: None) -> None:
    model = tiny_roformer()
    raw = _mix(1800, channels=channels)
    stems = Separator(model, device="cpu").separate_tensor(raw[0] if channels == 1 else raw)
    mix = convert_audio(raw, RATE, RATE, 2)
    assert_matches(_stack(stems, SOURCES), msst_demix(model, mix, CHUNK, 4), f"C={channels}")


def test_options_map_onto_chunk_size_and_num_overlap(one_thread: None) -> None:
    model = tiny_roformer()
    mix = _mix(3000)
    by_overlap = Separator(model, device="cpu", overlap=0.5).separate_tensor(mix)
    assert_matches(_stack(by_overlap, SOURCES), msst_demix(model, mix, CHUNK, 2), "overlap 0.5")
    segment = 810 / RATE  # 810 samples, not a multiple of the hop either
    by_segment = Separator(model, device="cpu", segment=segment).separate_tensor(mix)
    assert_matches(_stack(by_segment, SOURCES), msst_demix(model, mix, 810, 4), "segment 810")
    assert [faded_step(1000, 4, o) for o in (None, 0.75, 0.5, 0.0, 0.3)] == [250, 250, 500, 1000,
                                                                              700]  # fmt: skip
    assert faded_step(352800, 3, 1 - 1 / 3) == 352800 // 3


def test_windows_are_msst_fades() -> None:
    window = fade_window(20, 2, first=False, last=False)
    assert window.tolist() == [0.0, 1.0] + [1.0] * 16 + [1.0, 0.0]
    assert fade_window(20, 2, first=True, last=True).tolist() == [1.0] * 20


def test_one_overlap_tiles_without_zeroed_edges(one_thread: None) -> None:
    model = tiny_roformer(num_overlap=1)
    mix = _mix(2500)
    out = _stack(Separator(model, device="cpu").separate_tensor(mix), SOURCES)
    with torch.inference_mode():
        first = model(mix[None, :, :CHUNK])[0].numpy()
    assert_matches(out[..., :CHUNK], first, "first tile")
    assert np.abs(out[..., CHUNK - 1 : CHUNK + 1]).min() > 0  # MSST writes 0 here


@pytest.mark.parametrize("block", [1, 37, 999, 4096])
def test_streamed_blocks_equal_the_whole_track(block: int, one_thread: None) -> None:
    model = tiny_roformer(num_overlap=2)
    mix = _mix(12345)
    options = ApplyOptions()
    whole = apply_model(model, mix, options)
    applier = SlidingApplier(model, options, torch.device("cpu"))
    pieces, longest = [], 0
    with torch.inference_mode():
        for i in range(0, mix.shape[-1], block):
            pieces.append(applier.push(mix[:, i : i + block]))
            longest = max(longest, applier.feed.buf.shape[-1])
        pieces.append(applier.finish())
    assert torch.equal(torch.cat(pieces, -1), whole)
    assert longest <= block + 3 * CHUNK  # constant memory: a few chunks plus one block


def test_batches_and_no_split(one_thread: None) -> None:
    model = tiny_roformer()
    mix = _mix(5000)
    ref = msst_demix(model, mix, CHUNK, 4)
    batched = Separator(model, device="cpu", batch_size=4).separate_tensor(mix)
    assert_matches(_stack(batched, SOURCES), ref, "batch 4")
    whole = Separator(model, device="cpu", split=False).separate_tensor(mix)
    with torch.inference_mode():
        assert_matches(_stack(whole, SOURCES), model(mix[None])[0].numpy(), "no split")


def test_shifts_average_msst_on_delayed_tracks(one_thread: None) -> None:
    model = tiny_roformer()
    mix = _mix(3000)
    stems = Separator(model, device="cpu", shifts=2, seed=5).separate_tensor(mix)
    offsets = shift_offsets(2, RATE // 2, 5)
    assert len(set(offsets)) == 2
    delayed = [msst_demix(model, F.pad(mix, (pad, 0)), CHUNK, 4)[..., pad:] for pad in offsets]
    assert_matches(_stack(stems, SOURCES), sum(delayed) / 2, "shifts 2")


def test_msst_normalisation_exact_and_silence(one_thread: None) -> None:
    model = tiny_roformer(normalize=True)
    assert model.normalization is Normalization.MSST
    mix = _mix(2600) * 3 + 0.2
    data = mix.numpy()
    mono = data.mean(0)
    mean, std = mono.mean(dtype=np.float64), mono.std(dtype=np.float64)
    normed = torch.from_numpy(((data - mean) / std).astype(np.float32))
    ref = msst_demix(model, normed, CHUNK, 4) * std + mean
    stems = Separator(model, device="cpu").separate_tensor(mix)
    assert_matches(_stack(stems, SOURCES), ref, "normalize: true")
    silent = Separator(model, device="cpu").separate_tensor(torch.zeros(2, 1500))
    assert all(bool(torch.isfinite(v).all()) for v in silent.values())


def test_bag_mixing_rules_uses_each_members_own(one_thread: None) -> None:
    demucs_like = FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4], samplerate=RATE, crop=7,
                                segment_length=700)  # fmt: skip
    roformer = tiny_roformer(normalize=True)
    weights = [[1.0, 0.0, 1.0, 2.0], [1.0, 1.0, 0.0, 1.0]]
    bag = BagOfModels([demucs_like, roformer], weights)
    assert bag.normalization is Normalization.TRACK
    mix = _mix(4100) * 2 + 0.05
    out = separate_normalized(bag, mix)
    alone = [separate_normalized(m, mix) for m in (demucs_like, roformer)]
    w = torch.tensor(weights)[:, :, None, None]
    ref = (w[0] * alone[0] + w[1] * alone[1]) / w.sum(0)
    assert_matches(out.numpy(), ref.numpy(), "mixed bag")


def test_config_mapping_keeps_inference_settings() -> None:
    config: dict[str, Any] = {
        "audio": {"chunk_size": 1000, "sample_rate": RATE},
        "model": {"dim": 8, "depth": 1, "stereo": True, "num_stems": 1, "freqs_per_bands": [16, 17],
                  "stft_n_fft": 64, "stft_hop_length": 16, "stft_win_length": 64},
        "training": {"model_type": "bs_roformer", "target_instrument": "vocals"},
        "inference": {"num_overlap": 2, "normalize": True},
    }  # fmt: skip
    name, kwargs = roformer_kwargs(config)
    assert (kwargs["num_overlap"], kwargs["normalize"]) == (2, True)
    model = BSRoformer(**kwargs)
    assert model.init_kwargs["num_overlap"] == 2 and model.init_kwargs["normalize"] is True
    assert model.chunking == FadedChunks(2) and model.normalization is Normalization.MSST
    del config["inference"]
    assert roformer_kwargs(config)[1]["num_overlap"] == 4
    for bad in ({"num_overlap": 0}, {"num_overlap": 1.5}, {"normalize": "yes"}):
        config["inference"] = bad
        with pytest.raises(ConfigError, match="inference"):
            roformer_kwargs(config)
    scnet = {"audio": {"chunk_size": 4410}, "model": {"sources": ["a", "b"]},
             "training": {"model_type": "scnet", "instruments": ["a", "b"]},
             "inference": {"num_overlap": 3}}  # fmt: skip
    assert tfc_kwargs(scnet)[1]["num_overlap"] == 3


def test_demucs_models_keep_their_rule() -> None:
    model = FractionModel(SOURCES)
    assert model.normalization is Normalization.TRACK
    assert model.chunking.overlap == 0.25


def test_bag_takes_member_stems_by_name(one_thread: None) -> None:
    bag_sources = ["drums", "bass", "other", "vocals"]
    demucs_like = FractionModel(bag_sources, [0.1, 0.2, 0.3, 0.4], samplerate=RATE, crop=5,
                                segment_length=600)  # fmt: skip
    four = tiny_roformer(seed=3)  # vocals, bass, drums, other
    vocals = tiny_roformer(seed=4, sources=["vocals"], normalize=True)
    weights = [[1.0, 1.0, 1.0, 0.5], [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]]
    bag = BagOfModels([demucs_like, four, vocals], weights)
    assert bag.sources == bag_sources
    mix = _mix(3300) * 2 + 0.05
    out = separate_normalized(bag, mix)
    alone = {}
    for index, member in enumerate((demucs_like, four, vocals)):
        stems = separate_normalized(member, mix)
        alone[index] = {name: stems[k] for k, name in enumerate(member.sources)}
    for s, name in enumerate(bag_sources):
        pairs = [(w[s], alone[m][name]) for m, w in enumerate(weights) if w[s]]
        ref = sum(w * stem for w, stem in pairs) / sum(w for w, _ in pairs)
        assert_matches(out[s].numpy(), ref.numpy(), f"bag {name}")
    with torch.inference_mode():
        assert bag(mix[None, :, :CHUNK]).shape == (1, 4, 2, CHUNK - 10)
    with pytest.raises(ConfigError, match="no stem 'drums'"):
        BagOfModels([demucs_like, vocals], [[1.0] * 4, [1.0, 0.0, 0.0, 1.0]])
    assert BagOfModels([demucs_like, vocals]).weights[1] == [0.0, 0.0, 0.0, 1.0]


def test_mixed_bag_package_keeps_each_members_rule(tmp_path: Path) -> None:
    demucs_like = FractionModel(["drums", "bass", "other", "vocals"], samplerate=RATE)
    vocals = tiny_roformer(sources=["vocals"], num_overlap=2, normalize=True)
    bag = LoadedModel("mixed", [demucs_like, vocals], ["d", "v"], [[1, 1, 1, 1], [0, 0, 0, 3]])
    path = save_bag_package(bag, tmp_path / "mixed.safetensors")
    loaded = load_model(str(path))
    rules = [(m.chunking, m.normalization) for m, _ in loaded.weighted_members()]
    assert rules == [
        (CentredChunks(), Normalization.TRACK),
        (FadedChunks(2), Normalization.MSST),
    ]
    mix = _mix(2000)
    assert torch.equal(separate_normalized(loaded, mix), separate_normalized(bag.build(), mix))


def test_single_target_outputs_two_stems_and_stems() -> None:
    mix = _mix(50)
    stems = {"vocals": mix * 0.25}
    assert select_stems(["vocals"], None, None, "add") == ["vocals", "no_vocals"]
    assert select_stems(["vocals"], None, "vocals", "add") == ["vocals", "no_vocals"]
    assert select_stems(["vocals"], ["vocals"], None, "add") == ["vocals"]
    for method in ("add", "minus"):
        out = compose_stems(stems, mix, ["vocals", "no_vocals"], method)
        assert torch.equal(out["no_vocals"], mix - stems["vocals"])


def test_bf16_forward_passes_stay_close_to_fp32(one_thread: None) -> None:
    model = tiny_roformer()
    mix = _mix(5000)
    try:
        low = Separator(model, device="cpu", precision="bf16").separate_tensor(mix)
    except ConfigError as exc:
        pytest.skip(f"no bf16 on this CPU: {exc}")
    full = Separator(model, device="cpu").separate_tensor(mix)
    for name in SOURCES:
        noise = float((full[name] - low[name]).pow(2).sum())
        assert noise > 0  # the forward passes did run in bf16
        snr = 10 * np.log10(float(full[name].pow(2).sum()) / noise)
        assert snr >= 40, f"{name}: {snr:.1f} dB"  # bf16 rounds to 2^-9: ~54 dB per operation
