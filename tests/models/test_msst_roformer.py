"""BS-RoFormer and Mel-Band RoFormer against MSST: fixture parity, released structures, edges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from demucs_rr.errors import ConfigError
from demucs_rr.hub.msst import read_msst_config as read_config
from demucs_rr.hub.msst_roformer import roformer_kwargs
from demucs_rr.models.bs_roformer import BSRoformer
from demucs_rr.models.mel_band_roformer import MelBandRoformer
from demucs_rr.models.mel_bands import mel_band_layout, slaney_mel_filters
from demucs_rr.models.registry import build_model
from tests.conftest import SHARED
from tests.helpers.checks import assert_matches

MSST = SHARED / "fixtures" / "msst"
HUB = Path(__file__).resolve().parents[2] / "demucs_rr" / "hub" / "msst"
CASES = ["bs_roformer_4stem", "bs_roformer_vocals", "mel_band_roformer_4stem",
         "mel_band_roformer_vocals"]  # fmt: skip
RELEASED = ["viperx_bs_roformer_ep_317", "viperx_bs_roformer_ep_937",
            "viperx_mel_band_roformer_ep_3005", "kj_mel_band_roformer_vocals"]  # fmt: skip


@pytest.fixture(scope="session")
def msst_fixtures() -> Path:
    """Folder of the MSST parity fixtures; skips when ../shared is absent (user's clone)."""
    if not MSST.is_dir():
        pytest.skip(f"MSST parity fixtures not found at {MSST} (present in CI only)")
    return MSST


def build_case(case_dir: Path) -> torch.nn.Module:
    """The fixture model of ``case_dir``, built from its config, checkpoint strict-loaded."""
    name, kwargs = roformer_kwargs(read_config(case_dir / "config.yaml"))
    model = build_model(name, kwargs)
    assert isinstance(model, torch.nn.Module)
    state = torch.load(case_dir / "model.ckpt", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_msst(msst_fixtures: Path, case: str, one_thread: None) -> None:
    case_dir = msst_fixtures / case
    model = build_case(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text())
    assert model.sources == meta["instruments_out"][: len(model.sources)]
    data = np.load(case_dir / "forward.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(data["x"])).numpy()
    batch, channels, length = data["x"].shape
    assert out.shape == (batch, len(model.sources), channels, length)
    ref = data["y"].reshape(out.shape)  # MSST's Mel-Band RoFormer drops S = 1
    assert_matches(out, ref, f"{case} forward")
    short = length - 32  # not a multiple of the hop (like 352768 vs 352800 at hop 441)
    with torch.inference_mode():
        assert model(torch.from_numpy(data["x"][..., :short])).shape[-1] == short


def _meta_build(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    with torch.device("meta"):
        model = build_model(name, kwargs)
    assert isinstance(model, torch.nn.Module)
    return model


@pytest.mark.parametrize("release", RELEASED)
def test_released_structure(msst_fixtures: Path, release: str) -> None:
    """The shipped config builds exactly MSST's keys, order and shapes (on the meta device)."""
    index = json.loads((msst_fixtures / "keys" / "index.json").read_text())[release]
    config = read_config(HUB / f"{release}.yaml")
    name, kwargs = roformer_kwargs(config, index["model_type"])
    assert kwargs["sources"] == index["instruments"]
    assert kwargs["segment_length"] == index["chunk_size"]
    model = _meta_build(name, kwargs)
    built = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    expected = json.loads((msst_fixtures / "keys" / f"{release}.json").read_text())
    assert built == list(expected.items())
    assert sum(int(np.prod(shape)) for _, shape in built) == index["values"]


@pytest.mark.parametrize("case", ["bs_roformer_vocals", "mel_band_roformer_4stem"])
def test_meta_build_path_is_exact(msst_fixtures: Path, case: str) -> None:
    """meta -> to_empty -> strict load -> reset_buffers gives the normal build's output."""
    case_dir = msst_fixtures / case
    reference = build_case(case_dir)
    name, kwargs = roformer_kwargs(read_config(case_dir / "config.yaml"))
    model = _meta_build(name, kwargs).to_empty(device="cpu")
    for buffer in model.buffers():  # what uninitialised memory may hold
        buffer.fill_(True if buffer.dtype == torch.bool else 3)
    model.load_state_dict(torch.load(case_dir / "model.ckpt", weights_only=True), strict=True)
    resets = [m for m in model.modules() if hasattr(m, "reset_buffers")]
    assert bool(resets) == isinstance(model, MelBandRoformer)
    for module in resets:
        module.reset_buffers()
    for (key, ours), (_, ref) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(ours, ref), key
    mix = torch.randn(1, 2, 20000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.eval()(mix), reference(mix))


def tiny(cls: type, **overrides: Any) -> torch.nn.Module:
    """A small seeded model (fast tests), stereo, 2 stems, n_fft 512."""
    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(
        sources=["vocals", "other"], dim=16, depth=1, stereo=True, heads=2, dim_head=8,
        time_transformer_depth=1, freq_transformer_depth=1, linear_transformer_depth=1,
        stft_n_fft=512, stft_hop_length=128, stft_win_length=512, mlp_expansion_factor=1,
        segment_length=44100,
    )  # fmt: skip
    if cls is BSRoformer:
        kwargs["freqs_per_bands"] = (1,) * 8 + (8,) * 8 + (16,) * 11 + (9,)
    else:
        kwargs["num_bands"] = 16
    kwargs.update(overrides)
    model: torch.nn.Module = cls(**kwargs)
    return model.eval()


@pytest.mark.parametrize("cls", [BSRoformer, MelBandRoformer])
@pytest.mark.parametrize("length", [1, 255, 256, 257, 1000, 4410, 44100 - 7])
def test_any_length_gives_same_length(cls: type, length: int) -> None:
    """Shorter than one frame, not a multiple of the hop: (B, S, C, T) with the input's T."""
    model = tiny(cls)
    mix = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        out = model(mix)
    assert out.shape == (2, 2, 2, length)
    assert torch.isfinite(out).all()
    with torch.inference_mode():  # batch items are separated independently
        assert torch.allclose(model(mix[1:]), out[1:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [BSRoformer, MelBandRoformer])
def test_mono_and_single_stem(cls: type) -> None:
    """``stereo: false`` gives a one-channel model; one stem still comes out 4-D."""
    model = tiny(cls, stereo=False, sources=["vocals"], num_stems=1)
    assert model.audio_channels == 1
    with torch.inference_mode():
        out = model(torch.randn(1, 1, 3000))
    assert out.shape == (1, 1, 1, 3000)
    with pytest.raises(ValueError, match="expects a"):
        model(torch.randn(1, 2, 3000))


def test_tail_after_last_hop_is_kept() -> None:
    """A chunk that is not a multiple of the hop: the first samples do not depend on the tail,
    and the tail is real reconstruction (MSST's Mel-Band RoFormer drops it)."""
    model = tiny(MelBandRoformer, zero_dc=False)
    mix = torch.randn(1, 2, 128 * 40 + 77, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model(mix)
    assert out[..., -77:].abs().max() > 1e-3 * out.abs().max()


@pytest.mark.parametrize("cls", [BSRoformer, MelBandRoformer])
def test_init_kwargs_rebuild_and_training(cls: type) -> None:
    """``Cls(**init_kwargs)`` rebuilds the structure (JSON-able); training mode backpropagates,
    with or without activation checkpointing, to the same gradients."""
    model = tiny(cls, attn_dropout=0.0, ff_dropout=0.0)
    rebuilt = cls(**json.loads(json.dumps(model.init_kwargs)))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    grads = []
    for checkpointing in (False, True):
        clone = cls(**{**model.init_kwargs, "use_torch_checkpoint": checkpointing})
        clone.load_state_dict(model.state_dict())
        loss = clone.train()(torch.ones(1, 2, 2000) * 0.1).square().mean()
        loss.backward()
        grads.append(clone.band_split.to_features[0][1].weight.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


# librosa.filters.mel(sr, n_fft=2048, n_mels=60) > 0 with MSST's two forced bins, computed once
# with librosa 0.11.0: (first, last) covered bin of every band (each band is one run of bins).
LIBROSA_SPANS = {
    44100: [(0, 6), (4, 9), (7, 12), (10, 15), (13, 18), (16, 21), (19, 24), (22, 27), (25, 30),
            (28, 33), (31, 36), (34, 39), (37, 42), (40, 45), (43, 48), (46, 52), (49, 55),
            (53, 59), (56, 64), (60, 68), (65, 73), (69, 78), (74, 83), (79, 89), (84, 96),
            (90, 102), (97, 109), (103, 117), (110, 125), (118, 134), (126, 144), (135, 154),
            (145, 164), (155, 176), (165, 188), (177, 202), (189, 216), (203, 231), (217, 247),
            (232, 264), (248, 283), (265, 303), (284, 324), (304, 347), (325, 371), (348, 397),
            (372, 425), (398, 454), (426, 486), (455, 520), (487, 557), (521, 596), (558, 637),
            (597, 682), (638, 730), (683, 781), (731, 835), (782, 894), (836, 957), (895, 1024)],
    48000: [(0, 5), (3, 8), (6, 11), (9, 14), (12, 17), (15, 19), (18, 22), (20, 25), (23, 28),
            (26, 31), (29, 34), (32, 37), (35, 39), (38, 42), (40, 45), (43, 49), (46, 52),
            (50, 56), (53, 60), (57, 64), (61, 69), (65, 74), (70, 79), (75, 85), (80, 91),
            (86, 98), (92, 105), (99, 112), (106, 120), (113, 129), (121, 138), (130, 148),
            (139, 158), (149, 170), (159, 182), (171, 195), (183, 209), (196, 224), (210, 240),
            (225, 257), (241, 275), (258, 295), (276, 316), (296, 339), (317, 363), (340, 389),
            (364, 417), (390, 447), (418, 479), (448, 513), (480, 550), (514, 589), (551, 631),
            (590, 676), (632, 725), (677, 777), (726, 832), (778, 891), (833, 955), (892, 1024)],
}  # fmt: skip
# A few librosa weights, exact (float32 as hex), including the ~1.8e-18 last bin MSST mentions.
LIBROSA_WEIGHTS = {
    44100: {(0, 1): "0x1.4846480000000p-8", (5, 12): "0x0.0p+0",
            (59, 1000): "0x1.0d8c280000000p-12", (59, 1024): "0x1.0b0baa0000000p-59"},
    48000: {(0, 1): "0x1.5710660000000p-8", (5, 12): "0x0.0p+0",
            (59, 1000): "0x1.dc866e0000000p-13", (59, 1024): "0x1.b1be680000000p-60"},
}  # fmt: skip


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_mel_bands_equal_librosa(sample_rate: int) -> None:
    weights = slaney_mel_filters(sample_rate, 2048, 60)
    assert weights.dtype == np.float32 and weights.shape == (60, 1025)
    for (band, freq), value in LIBROSA_WEIGHTS[sample_rate].items():
        assert float(weights[band, freq]) == float.fromhex(value), (band, freq)
    expected = np.zeros((60, 1025), dtype=bool)
    for band, (first, last) in enumerate(LIBROSA_SPANS[sample_rate]):
        expected[band, first : last + 1] = True
    np.testing.assert_array_equal(mel_band_layout(sample_rate, 2048, 60), expected)


def _config(model_type: str = "bs_roformer", **model: Any) -> dict[str, Any]:
    return {
        "audio": {"chunk_size": 8820, "sample_rate": 44100},
        "model": {"dim": 8, "depth": 1, "stereo": True, **model},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals",
                     "model_type": model_type},
        "inference": {"num_overlap": 2},
    }  # fmt: skip


def test_config_mapping() -> None:
    name, kwargs = roformer_kwargs(_config(freqs_per_bands=(512, 513), use_pope=False))
    assert name == "BSRoformer"
    assert kwargs["sources"] == ["vocals"] and kwargs["num_stems"] == 1
    assert kwargs["freqs_per_bands"] == [512, 513]  # tuple -> list (JSON-able)
    assert (kwargs["samplerate"], kwargs["segment_length"]) == (44100, 8820)
    config = _config("mel_band_roformer", num_stems=2, num_bands=8)
    del config["training"]["target_instrument"]
    config["inference"]["chunk_size"] = 4410
    name, kwargs = roformer_kwargs(config)
    assert (name, kwargs["sources"], kwargs["segment_length"]) == (
        "MelBandRoformer", ["vocals", "other"], 4410)  # fmt: skip
    assert build_model(name, kwargs).sources == ["vocals", "other"]
    mono = _config("mel_band_roformer", num_bands=8, stereo=False)
    assert build_model(*roformer_kwargs(mono)).audio_channels == 1


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (_config("htdemucs"), "model_type"),
        (_config(stft_window_fn="hann"), "model.stft_window_fn"),
        (_config(num_bands=60), "model.num_bands"),
        (_config(num_stems=2), "model.num_stems"),
        ({**_config(), "audio": {}}, "audio.chunk_size"),
        ({**_config(), "training": {"model_type": "bs_roformer"}}, "training.instruments"),
    ],
)
def test_config_mapping_refusals(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        roformer_kwargs(config)


@pytest.mark.parametrize(
    ("cls", "overrides", "key"),
    [
        (BSRoformer, {"freqs_per_bands": (256, 256)}, "model.freqs_per_bands"),
        (BSRoformer, {"use_pope": True}, "model.use_pope"),
        (BSRoformer, {"dim_head": 7}, "model.dim_head"),
        (MelBandRoformer, {"num_bands": 200}, "model.num_bands"),
        (MelBandRoformer, {"sources": ["a", "b"], "num_stems": 3}, "model.num_stems"),
        (MelBandRoformer, {"stft_win_length": 1024}, "model.stft_win_length"),
    ],
)
def test_constructor_refusals(cls: type, overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny(cls, **overrides)
