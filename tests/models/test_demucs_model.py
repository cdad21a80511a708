"""Demucs v2 model: official parity (forward, init, state-dict layout) and valid_length."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from demucs_rr.models.base import PackagedModel, SeparationModel, as_module, center_trim
from demucs_rr.models.demucs_v2 import (
    DEMUCS_V2_CONFIGS,
    Demucs,
    demucs_v2,
)
from demucs_rr.sources import MUSDB_SOURCES
from tests.helpers.checks import assert_matches


def _case(official: Path, case: str) -> tuple[dict, dict, dict[str, np.ndarray]]:
    meta = json.loads((official / case / "meta.json").read_text())
    state = torch.load(official / case / "state.th", map_location="cpu", weights_only=True)
    with np.load(official / case / "forward.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, state, arrays


@pytest.mark.parametrize("case", ["v2_demucs", "v2_demucs_variant"])
def test_forward_matches_official(official_fixtures: Path, one_thread: None, case: str) -> None:
    meta, state, arrays = _case(official_fixtures, case)
    model = Demucs(**meta["constructor"]["kwargs"])
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(arrays["x"]))
    assert_matches(y.numpy(), arrays["y"], f"{case}/forward.npz y")
    for attr, value in meta["model_attributes"].items():
        if attr.startswith("valid_length("):
            assert model.valid_length(int(attr[len("valid_length(") : -1])) == value
        else:
            assert getattr(model, attr) == value


@pytest.mark.parametrize("case", ["v2_demucs", "v2_demucs_variant"])
def test_seeded_init_matches_official(official_fixtures: Path, one_thread: None, case: str) -> None:
    """Same seed -> same initial weights: module creation order and the initial weight
    rescaling match."""
    meta, state, _ = _case(official_fixtures, case)
    torch.manual_seed(meta["seed"])
    model = Demucs(**meta["constructor"]["kwargs"])
    ours = model.state_dict()
    assert list(ours) == list(state)
    for key, ref in state.items():
        # Last-ulp differences only (std reduction order differs between CPUs).
        err = (ours[key] - ref).abs().max().item()
        assert err <= 1e-6 * ref.abs().max().item() + 1e-7, f"{key}: {err:.3e}"


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("demucs", "v2_demucs.json"),
        ("demucs48_hq", "v2_demucs48_hq.json"),
        ("demucs_unittest", "v2_demucs_unittest.json"),
    ],
)
def test_state_dict_layout_matches_release(official_fixtures: Path, name: str, file: str) -> None:
    expected = json.loads((official_fixtures / "keys" / file).read_text())
    with torch.device("meta"):  # no weight allocation (the full model is ~1 GB)
        model = demucs_v2(name)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(k, list(v)) for k, v in expected.items()]


def test_variant_layouts() -> None:
    """glu=False halves the rewrite convs; rewrite=False puts the transposed conv at index 0."""
    with torch.device("meta"):
        no_glu = Demucs(list(MUSDB_SOURCES), channels=4, depth=2, glu=False, lstm_layers=0)
        no_rw = Demucs(list(MUSDB_SOURCES), channels=4, depth=2, rewrite=False, lstm_layers=1)
    shapes = {k: tuple(v.shape) for k, v in no_glu.state_dict().items()}
    assert shapes == {
        "encoder.0.0.weight": (4, 2, 8),
        "encoder.0.0.bias": (4,),
        "encoder.0.2.weight": (4, 4, 1),
        "encoder.0.2.bias": (4,),
        "encoder.1.0.weight": (8, 4, 8),
        "encoder.1.0.bias": (8,),
        "encoder.1.2.weight": (8, 8, 1),
        "encoder.1.2.bias": (8,),
        "decoder.0.0.weight": (8, 8, 3),
        "decoder.0.0.bias": (8,),
        "decoder.0.2.weight": (8, 4, 8),
        "decoder.0.2.bias": (4,),
        "decoder.1.0.weight": (4, 4, 3),
        "decoder.1.0.bias": (4,),
        "decoder.1.2.weight": (4, 8, 8),
        "decoder.1.2.bias": (8,),
    }
    assert list(no_rw.state_dict())[:8] == [
        "encoder.0.0.weight",
        "encoder.0.0.bias",
        "encoder.1.0.weight",
        "encoder.1.0.bias",
        "decoder.0.0.weight",
        "decoder.0.0.bias",
        "decoder.1.0.weight",
        "decoder.1.0.bias",
    ]
    assert tuple(no_rw.decoder[1][0].weight.shape) == (4, 8, 8)  # ConvTranspose (in, out, k)
    assert isinstance(no_rw.decoder[0][1], torch.nn.ReLU) and len(no_rw.decoder[1]) == 1
    assert "lstm.lstm.weight_ih_l0" in no_rw.state_dict()


@pytest.fixture(scope="module")
def meta_default() -> Demucs:
    with torch.device("meta"):
        return Demucs(list(MUSDB_SOURCES))


@pytest.mark.parametrize(
    ("length", "valid"), [(44100, 49834), (441000, 447146), (1764000, 1770154), (1, 8874)]
)
def test_valid_length_default(meta_default: Demucs, length: int, valid: int) -> None:
    assert meta_default.valid_length(length) == valid


@pytest.mark.parametrize("length", [1, 1000, 44100])
def test_output_is_5460_shorter(meta_default: Demucs, length: int) -> None:
    valid = meta_default.valid_length(length)
    out = meta_default(torch.empty(1, 2, valid, device="meta"))
    assert tuple(out.shape) == (1, 4, 2, valid - 5460)
    assert valid - 5460 >= length


def test_small_model_lengths_and_contract(one_thread: None) -> None:
    """A real channels=4 model has the same lengths; the output is finite and source-major."""
    torch.manual_seed(0)
    model = demucs_v2("demucs_unittest").eval()
    assert isinstance(model, SeparationModel) and isinstance(model, PackagedModel)
    assert as_module(model) is model
    with pytest.raises(TypeError, match="torch.nn.Module"):
        as_module(object())  # type: ignore[arg-type]
    valid = model.valid_length(1)
    assert valid == 8874
    x = torch.randn(2, 2, valid, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
        y_single = model(x[1:])
    assert y.shape == (2, 4, 2, valid - 5460)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1:], y_single, rtol=1e-5, atol=1e-6)  # no batch mixing


def test_init_kwargs_rebuild_and_presets() -> None:
    with torch.device("meta"):
        model = Demucs(["a", "b"], channels=4, depth=3, glu=False, normalize=True)
        json.dumps(model.init_kwargs)
        assert model.init_kwargs["sources"] == ["a", "b"]
        assert model.init_kwargs["segment_length"] == 4 * 10 * 44100
        assert len(model.init_kwargs) == 16
        again = Demucs(**model.init_kwargs)
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    assert set(DEMUCS_V2_CONFIGS) == {"demucs", "demucs_extra", "demucs48_hq", "demucs_unittest"}
    with pytest.raises(ValueError, match="demucs_quantized"):
        demucs_v2("demucs_quantized")


def test_forward_rejects_bad_shapes() -> None:
    with torch.device("meta"):
        model = demucs_v2("demucs_unittest")
        with pytest.raises(ValueError, match=r"\(2, 8874\)"):
            model(torch.empty(2, 8874))
        with pytest.raises(ValueError, match=r"2 audio channels.*\(1, 1, 8874\)"):
            model(torch.empty(1, 1, 8874))


def test_center_trim() -> None:
    x = torch.arange(10.0)
    assert center_trim(x, 7).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # odd one on right
    assert center_trim(x, torch.zeros(2, 6)).tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert center_trim(x, 10) is x
    with pytest.raises(ValueError):
        center_trim(x, 11)


def test_normalize_quirk_scales_input_without_normalize() -> None:
    """normalize=False still divides by (1e-5 + 1): an identity network would show it."""
    model = Demucs(["s"], audio_channels=1, channels=1, depth=0, lstm_layers=0, resample=False)
    x = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(2))
    # depth 0 -> no layers: output = x / (1 + 1e-5), reshaped (B, S=1, C=1, T)
    assert model.valid_length(16) == 16
    torch.testing.assert_close(model(x)[:, 0], x / (1e-5 + 1), rtol=0, atol=0)
    assert not math.isclose(float((model(x)[:, 0] - x).abs().max()), 0.0)
