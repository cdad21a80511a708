"""SCNet and MDX23C against MSST: fixture parity, released structures, edges, config mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from demucs_rr.errors import ConfigError
from demucs_rr.hub.msst import read_msst_config as read_config
from demucs_rr.hub.msst_tfc import tfc_kwargs
from demucs_rr.models.mdx23c import MDX23C
from demucs_rr.models.mdx23c_layers import activate_, make_act
from demucs_rr.models.registry import build_model
from demucs_rr.models.scnet import SCNet
from tests.conftest import SHARED
from tests.helpers.checks import assert_matches

MSST = SHARED / "fixtures" / "msst"
HUB = Path(__file__).resolve().parents[2] / "demucs_rr" / "hub" / "msst"
CASES = ["scnet_4stem", "mdx23c_4stem"]
RELEASED = ["msst_scnet_musdb18", "msst_scnet_large_musdb18", "msst_mdx23c_musdb18",
            "msst_mdx23c_vocals"]  # fmt: skip


@pytest.fixture(scope="session")
def msst_fixtures() -> Path:
    """Folder of the MSST parity fixtures; skips when ../shared is absent (user's clone)."""
    if not MSST.is_dir():
        pytest.skip(f"MSST parity fixtures not found at {MSST} (present in CI only)")
    return MSST


def build_case(case_dir: Path) -> nn.Module:
    """The fixture model of ``case_dir``, built from its config, checkpoint strict-loaded."""
    name, kwargs = tfc_kwargs(read_config(case_dir / "config.yaml"))
    model = build_model(name, kwargs)
    assert isinstance(model, nn.Module)
    model.load_state_dict(torch.load(case_dir / "model.ckpt", weights_only=True), strict=True)
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_msst(msst_fixtures: Path, case: str, one_thread: None) -> None:
    case_dir = msst_fixtures / case
    model = build_case(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text())
    assert model.sources == meta["instruments_out"]
    data = np.load(case_dir / "forward.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(data["x"])).numpy()
    assert_matches(out, data["y"], f"{case} forward")


def _meta_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):
        model = build_model(name, kwargs)
    assert isinstance(model, nn.Module)
    return model


@pytest.mark.parametrize("release", RELEASED)
def test_released_structure(msst_fixtures: Path, release: str) -> None:
    """The shipped config builds exactly MSST's keys, order and shapes (on the meta device)."""
    index = json.loads((msst_fixtures / "keys" / "index.json").read_text())[release]
    name, kwargs = tfc_kwargs(read_config(HUB / f"{release}.yaml"), index["model_type"])
    assert kwargs["sources"] == index["instruments"]
    assert kwargs["segment_length"] == index["chunk_size"]
    model = _meta_build(name, kwargs)
    built = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    expected = json.loads((msst_fixtures / "keys" / f"{release}.json").read_text())
    assert built == list(expected.items())
    assert len(built) == index["tensors"]
    assert sum(int(np.prod(shape)) for _, shape in built) == index["values"]


@pytest.mark.parametrize("case", CASES)
def test_meta_build_path_is_exact(msst_fixtures: Path, case: str) -> None:
    """meta -> to_empty -> strict load -> reset_buffers gives the normal build's output."""
    case_dir = msst_fixtures / case
    reference = build_case(case_dir)
    name, kwargs = tfc_kwargs(read_config(case_dir / "config.yaml"))
    model = _meta_build(name, kwargs).to_empty(device="cpu")
    model.load_state_dict(torch.load(case_dir / "model.ckpt", weights_only=True), strict=True)
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    mix = torch.randn(1, 2, 20000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.eval()(mix), reference(mix))


def tiny_scnet(**overrides: Any) -> SCNet:
    """A small seeded SCNet (fast tests): n_fft 512, 2 dual-path layers."""
    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(
        sources=["vocals", "other"], dims=[4, 8, 16], nfft=512, hop_size=128, win_size=512,
        num_dplayer=2, segment_length=44100,
    )  # fmt: skip
    kwargs.update(overrides)
    return SCNet(**kwargs).eval()


def tiny_mdx23c(**overrides: Any) -> MDX23C:
    """A small seeded MDX23C (fast tests): n_fft 512, 3 scales."""
    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(
        sources=["vocals", "other"], n_fft=512, hop_length=128, dim_f=256, num_subbands=2,
        num_scales=3, num_blocks_per_scale=1, num_channels=8, growth=4, segment_length=44100,
    )  # fmt: skip
    kwargs.update(overrides)
    return MDX23C(**kwargs).eval()


TINY = {"scnet": tiny_scnet, "mdx23c": tiny_mdx23c}


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("length", [1, 127, 128, 1000, 4410, 44100 - 7])
def test_any_length_gives_same_length(family: str, length: int) -> None:
    """Shorter than one frame, not a multiple of the hop: (B, S, C, T) with the input's T."""
    model = TINY[family]()
    mix = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        out = model(mix)
    assert out.shape == (2, 2, 2, length)
    assert torch.isfinite(out).all()
    with torch.inference_mode():  # batch items are separated independently
        assert torch.allclose(model(mix[1:]), out[1:], atol=1e-6, rtol=1e-5)


def test_mono_models() -> None:
    """One-channel models: SCNet with dims[0] = 2, MDX23C with audio.num_channels 1."""
    scnet = tiny_scnet(audio_channels=1, dims=[2, 8, 16], sources=["vocals"])
    mdx = tiny_mdx23c(audio_channels=1, sources=["vocals"])
    for model in (scnet, mdx):
        with torch.inference_mode():
            out = model(torch.randn(1, 1, 5000))
        assert out.shape == (1, 1, 1, 5000)
        with pytest.raises(ValueError, match="expects a"):
            model(torch.randn(1, 2, 5000))


@pytest.mark.parametrize("family", TINY)
def test_init_kwargs_rebuild_and_training(family: str) -> None:
    """``Cls(**init_kwargs)`` rebuilds the structure (JSON-able); training backpropagates."""
    model = TINY[family]()
    rebuilt = type(model)(**json.loads(json.dumps(model.init_kwargs)))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    loss = rebuilt.train()(torch.randn(1, 2, 4000) * 0.1).square().mean()
    loss.backward()
    grads = [p.grad for p in rebuilt.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


@pytest.mark.parametrize("act", ["gelu", "relu", "elu1.0", "elu0.5"])
def test_in_place_activations_match_the_modules(act: str) -> None:
    module = make_act(act)
    x = torch.randn(3, 4, 5, 6)
    assert torch.equal(activate_(x.clone(), module), module(x))


@pytest.mark.parametrize("norm", ["BatchNorm", "GroupNorm2", "Identity"])
def test_mdx23c_norm_variants(norm: str) -> None:
    """MSST's other norms build and separate (BatchNorm in eval uses its running stats)."""
    model = tiny_mdx23c(norm=norm, act="elu1.0")
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randn(1, 2, 3000))).all()


def _scnet_config(**model: Any) -> dict[str, Any]:
    return {
        "audio": {"chunk_size": 485100, "sample_rate": 44100},
        "model": {"sources": ["vocals", "other"], **model},
        "training": {"instruments": ["vocals", "instrumental"], "target_instrument": None},
        "inference": {"num_overlap": 4, "normalize": False},
    }


def test_config_mapping_rules(msst_fixtures: Path) -> None:
    """Output names from training, chunk size from inference first, then audio."""
    name, kwargs = tfc_kwargs(_scnet_config(), "scnet")
    assert name == "SCNet" and kwargs["sources"] == ["vocals", "instrumental"]
    config = _scnet_config()
    config["inference"]["chunk_size"] = 44100
    assert tfc_kwargs(config, "scnet")[1]["segment_length"] == 44100
    config = read_config(HUB / "msst_mdx23c_vocals.yaml")
    config["training"]["target_instrument"] = "vocals"
    name, kwargs = tfc_kwargs(config, "mdx23c")
    assert name == "MDX23C" and kwargs["sources"] == ["vocals"]
    assert kwargs["audio_channels"] == 2 and kwargs["dim_f"] == 4096


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["model"].update(heads=8), "unknown key model.heads for scnet"),
        (lambda c: c["model"].update(sources=["a", "b", "c"]), "model.sources has 3"),
        (lambda c: c["training"].update(target_instrument="vocals"), "model.sources has 2"),
        (lambda c: c["training"].update(instruments=[]), "training.instruments"),
        (lambda c: c["audio"].update(chunk_size=0), "audio.chunk_size"),
        (lambda c: c["audio"].update(sample_rate="44k"), "audio.sample_rate"),
        (lambda c: c.update(model=[1]), "section 'model'"),
    ],
)
def test_config_mapping_refusals(edit: Any, message: str) -> None:
    config = _scnet_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        tfc_kwargs(config, "scnet")


def test_mdx23c_mapping_refusals() -> None:
    config = read_config(HUB / "msst_mdx23c_musdb18.yaml")
    with pytest.raises(ConfigError, match="model_type 'htdemucs'"):
        tfc_kwargs(config, "htdemucs")
    del config["model"]["growth"]
    with pytest.raises(ConfigError, match="model.growth is missing"):
        tfc_kwargs(config, "mdx23c")
    config = read_config(HUB / "msst_mdx23c_musdb18.yaml")
    del config["audio"]["dim_f"]
    with pytest.raises(ConfigError, match="audio.dim_f"):
        tfc_kwargs(config, "mdx23c")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: tiny_scnet(num_dplayer=3), "num_dplayer must be even"),
        (lambda: tiny_scnet(dims=[2, 8]), "model.dims"),
        (lambda: tiny_scnet(band_SR=[0.5, 0.5]), "model.band_SR needs 3"),
        (lambda: tiny_scnet(conv_kernel=4), "conv_kernel must be odd"),
        (lambda: tiny_mdx23c(norm="LayerNorm"), "unknown model.norm 'LayerNorm'"),
        (lambda: tiny_mdx23c(act="tanh"), "unknown model.act 'tanh'"),
        (lambda: tiny_mdx23c(dim_f=250), "audio.dim_f"),
        (lambda: tiny_mdx23c(scale=[2]), "model.scale"),
    ],
)
def test_constructor_refusals(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize("family", TINY)
def test_bf16_autocast(family: str) -> None:
    """Under CPU bf16 autocast: float32 stems close to the fp32 ones. bf16 rounds to 2^-9
    (about 54 dB per rounding); some 20 roundings in sequence leave about 41 dB: 35 dB bound."""
    model = TINY[family]()
    mix = torch.randn(2, 2, 20000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        ref = model(mix)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(mix)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    snr = 10 * torch.log10(ref.square().sum() / (out - ref).square().sum())
    assert snr > 35, f"{family}: bf16 SNR {float(snr):.1f} dB"
