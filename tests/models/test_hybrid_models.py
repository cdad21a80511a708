"""Demucs 3/4 models (DemucsV3, HDemucs, HTDemucs): official parity and the model contract."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from demucs_rr.hub.loader import load_model
from demucs_rr.hub.official_th import load_official_package, model_from_official_package
from demucs_rr.hub.package import save_package
from demucs_rr.models import spec
from demucs_rr.models.base import PackagedModel, SeparationModel
from demucs_rr.models.dconv import WindowedBLSTM
from demucs_rr.models.demucs_v3 import DemucsV3
from demucs_rr.models.hdemucs import HDemucs
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.registry import get_model_class
from demucs_rr.sources import MUSDB_SOURCES
from tests.helpers.checks import assert_matches

SOURCES = list(MUSDB_SOURCES)
CASES = {"v3_demucs": DemucsV3, "v4_hdemucs": HDemucs, "v4_htdemucs": HTDemucs}


def _forward_case(official: Path, case: str) -> tuple[Any, dict[str, np.ndarray]]:
    model = model_from_official_package(official / case / "package.th")
    with np.load(official / case / "forward.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return model, arrays


def _run(model: Any, x: np.ndarray | torch.Tensor) -> np.ndarray:
    tensor = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    with torch.no_grad():
        return model(tensor).numpy()  # type: ignore[no-any-return]


def _release_kwargs(official: Path, name: str) -> dict[str, Any]:
    kwargs = dict(
        json.loads((official / "keys" / "index.json").read_text())[name]["constructor_kwargs"]
    )
    segment = kwargs["segment"]
    if isinstance(segment, dict):
        kwargs["segment"] = Fraction(segment["numerator"], segment["denominator"])
    return kwargs


def _tiny_htdemucs(**overrides: Any) -> HTDemucs:
    kwargs: dict[str, Any] = {
        "sources": SOURCES,
        "channels": 8,
        "depth": 4,
        "bottom_channels": 16,
        "t_layers": 2,
        "t_heads": 2,
        "dconv_mode": 3,
        "segment": Fraction(1, 10),
    }
    return HTDemucs(**{**kwargs, **overrides}).eval()


# ----------------------------------------------------------------------------- official parity


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_official(official_fixtures: Path, one_thread: None, case: str) -> None:
    model, arrays = _forward_case(official_fixtures, case)
    assert not model.training
    assert type(model) is CASES[case]
    assert isinstance(model, PackagedModel) and isinstance(model, SeparationModel)
    meta = json.loads((official_fixtures / case / "meta.json").read_text())
    attributes = meta["model_attributes"]
    assert model.sources == attributes["sources"] and model.samplerate == 44100
    assert model.segment_length == attributes["int(samplerate*segment)"]
    assert_matches(_run(model, arrays["x"]), arrays["y"], f"{case}/forward.npz y")


@pytest.mark.parametrize(("name", "klass"), [("v3_hdemucs", HDemucs), ("v4_htdemucs", HTDemucs)])
def test_state_dict_layout_matches_release(
    official_fixtures: Path, name: str, klass: type[HDemucs] | type[HTDemucs]
) -> None:
    expected = json.loads((official_fixtures / "keys" / f"{name}.json").read_text())
    with torch.device("meta"):
        model = klass(**_release_kwargs(official_fixtures, name))
    got = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert got == [(key, list(shape)) for key, shape in expected.items()]


def test_htdemucs_seeded_init_matches_official(official_fixtures: Path, one_thread: None) -> None:
    """Same seed -> same initial weights (module order, rescaling, embeddings, transformer)."""
    meta = json.loads((official_fixtures / "v4_htdemucs" / "meta.json").read_text())
    stored = load_official_package(official_fixtures / "v4_htdemucs" / "package.th").state
    torch.manual_seed(meta["seed"])
    ours = HTDemucs(**meta["constructor"]["kwargs_at_construction"]).state_dict()
    assert list(ours) == list(stored)
    for key, ref in stored.items():
        err = (ours[key].half().float() - ref.float()).abs().max().item()
        # float16 storage: one-ulp flips from reduction order in the initial rescaling.
        assert err <= 1e-3 * ref.float().abs().max().item() + 1e-7, f"{key}: {err:.3e}"


@pytest.mark.parametrize(
    ("kwargs", "params"),
    [
        ({"cac": False, "norm_starts": 999}, 83_607_872),  # MDX magnitude hybrid (c511e2ab)
        ({"norm_starts": 999, "multi_freqs": [0.25, 0.5], "multi_freqs_depth": 2}, 83_884_248),
    ],
)
def test_mdx_hybrid_sizes(kwargs: dict[str, Any], params: int) -> None:
    """The MDX-era hybrid variants have the parameter counts implied by the released files."""
    with torch.device("meta"):
        model = HDemucs(SOURCES, **kwargs)
    assert sum(value.numel() for value in model.state_dict().values()) == params
    if "multi_freqs" in kwargs:
        assert "encoder.0.layers.2.conv.weight" in model.state_dict()
        assert "decoder.5.layers.0.rewrite.weight" in model.state_dict()


# ------------------------------------------------------------------------------ spectral front


@pytest.mark.parametrize("length", [1, 1000, 15434])
@pytest.mark.parametrize("padding", ["reflect", "zeros"])
def test_real_stft_matches_complex(one_thread: None, length: int, padding: spec.PrePadding) -> None:
    x = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    z_complex = spec.hybrid_stft(x, 4096, padding, real=False)
    z_real = spec.hybrid_stft(x, 4096, padding, real=True)
    assert z_complex.shape == z_real.shape == (2, 2, 2048, -(-length // 1024), 2)
    assert_matches(z_real.numpy(), z_complex.numpy(), "stft")
    back_complex = spec.hybrid_istft(z_complex, length, padding, real=False)
    back_real = spec.hybrid_istft(z_complex, length, padding, real=True)
    assert_matches(back_real.numpy(), back_complex.numpy(), "istft")


def test_real_stft_is_picked_for_mps_and_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert spec.use_real_stft(torch.device("mps"))
    assert not spec.use_real_stft(torch.device("cpu"))
    monkeypatch.setattr(spec, "FORCE_REAL_STFT", True)
    assert spec.use_real_stft(torch.device("cpu"))
    assert not spec.use_real_stft(torch.device("cpu"), real=False)


@pytest.mark.parametrize("case", ["v4_hdemucs", "v4_htdemucs"])
def test_model_with_real_stft_matches(
    official_fixtures: Path, one_thread: None, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, arrays = _forward_case(official_fixtures, case)
    monkeypatch.setattr(spec, "FORCE_REAL_STFT", True)
    out = _run(model, arrays["x"])
    rel = np.abs(out - arrays["y"]).max() / np.abs(arrays["y"]).max()
    assert rel <= 1e-5, f"real-valued STFT path: relative error {rel:.2e}"


# ------------------------------------------------------------------------------ lengths, shapes


def test_htdemucs_short_input_is_right_padded(official_fixtures: Path, one_thread: None) -> None:
    model, arrays = _forward_case(official_fixtures, "v4_htdemucs")
    assert model.max_segment_length == 17199 == model.valid_length(1000)
    x = torch.from_numpy(arrays["x"][..., :1000])
    padded = torch.nn.functional.pad(x, (0, 17199 - 1000))
    short = _run(model, x)
    assert short.shape == (1, 4, 2, 1000)
    np.testing.assert_array_equal(short, _run(model, padded)[..., :1000])
    with pytest.raises(ValueError, match="at most 17199"):
        model.valid_length(17200)


@pytest.mark.parametrize("length", [5, 700, 5000])
def test_hdemucs_short_inputs(official_fixtures: Path, one_thread: None, length: int) -> None:
    model, arrays = _forward_case(official_fixtures, "v4_hdemucs")
    assert model.valid_length(length) == length
    out = _run(model, arrays["x"][..., :length])
    assert out.shape == (1, 4, 2, length) and np.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cac": False},
        {"hybrid_old": True},
        {"multi_freqs": [0.25, 0.5], "norm_starts": 999},
        {"dconv_mode": 3, "norm_starts": 999},
        {"channels_time": 6, "depth": 7},
    ],
)
def test_hdemucs_variants_run(one_thread: None, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = HDemucs(SOURCES, channels=4, **kwargs).eval()
    out = _run(model, torch.randn(2, 2, 3000))
    assert out.shape == (2, 4, 2, 3000) and np.isfinite(out).all()


def test_six_source_htdemucs(one_thread: None) -> None:
    sources = [*SOURCES, "guitar", "piano"]
    torch.manual_seed(0)
    model = _tiny_htdemucs(sources=sources)
    assert model.state_dict()["decoder.3.conv_tr.weight"].shape[1] == 6 * 2 * 2
    out = _run(model, torch.randn(1, 2, 4410))
    assert out.shape == (1, 6, 2, 4410) and np.isfinite(out).all()


def test_fraction_segment_metadata() -> None:
    with torch.device("meta"):
        exact = HTDemucs(SOURCES, segment=Fraction(39, 5), t_layers=1, channels=8)
        text = HTDemucs(SOURCES, segment="39/5", t_layers=1, channels=8)
    assert exact.segment_length == text.segment_length == exact.max_segment_length == 343_980
    assert exact.init_kwargs["segment"] == "39/5" and text.segment == Fraction(39, 5)
    with torch.device("meta"):
        assert HDemucs(SOURCES, segment=0.35, channels=4).segment_length == 15434


def test_demucs_v3_lengths_and_old_keys() -> None:
    with torch.device("meta"):
        model = DemucsV3(SOURCES)
    assert model.valid_length(1_940_400) == 1_942_186
    assert model.segment_length == 40 * 44100
    upgraded = model.upgrade_state({"encoder.0.2.weight": 1, "decoder.1.3.bias": 2})
    assert upgraded == {"encoder.0.3.weight": 1, "decoder.1.3.bias": 2}


def test_windowed_blstm_stitches_windows(one_thread: None) -> None:
    """Past 200 steps the BLSTM runs on 200-step windows: the first 150 outputs only see the
    first window."""
    torch.manual_seed(0)
    blstm = WindowedBLSTM(4, layers=2, max_steps=200, skip=True).eval()
    x = torch.randn(1, 4, 350)
    with torch.no_grad():
        full = blstm(x)
        first = blstm(x[..., :200])
    assert full.shape == x.shape
    torch.testing.assert_close(full[..., :150], first[..., :150], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- packaging


@pytest.mark.parametrize("name", ["DemucsV3", "HDemucs", "HTDemucs"])
def test_package_round_trip(tmp_path: Path, one_thread: None, name: str) -> None:
    klass = get_model_class(name)
    torch.manual_seed(0)
    if name == "HTDemucs":
        model: Any = _tiny_htdemucs()
    else:
        model = klass(SOURCES, channels=4, segment=0.2).eval()
    assert json.loads(json.dumps(model.init_kwargs)) == model.init_kwargs
    path = save_package(model, tmp_path / f"{name}.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.init_kwargs == model.init_kwargs
    x = torch.randn(1, 2, 4000, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(_run(loaded, x), _run(model, x))
