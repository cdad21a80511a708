"""Conv-TasNet: official v2 parity (forward, split apply, seeded init, state-dict layout),
causality of the causal variant, and the model contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from demucs_rr.models.base import PackagedModel, SeparationModel
from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.separate.engine import ApplyOptions, apply_model
from tests.helpers.checks import assert_matches

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def tasnet_case(official_fixtures: Path) -> tuple[dict, dict[str, torch.Tensor], ConvTasNet]:
    """(meta, official state, our model strictly loaded with it, in eval mode)."""
    case = official_fixtures / "v2_tasnet"
    meta = json.loads((case / "meta.json").read_text())
    state = torch.load(case / "state.th", map_location="cpu", weights_only=True)
    model = ConvTasNet(**meta["constructor"]["kwargs"])
    model.load_state_dict(state, strict=True)
    return meta, state, model.eval()


def test_forward_matches_official(official_fixtures: Path, tasnet_case, one_thread: None) -> None:
    _, _, model = tasnet_case
    with np.load(official_fixtures / "v2_tasnet" / "forward.npz") as data:
        x, y = data["x"], data["y"]
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    assert_matches(out.numpy(), y, "v2_tasnet/forward.npz y")
    # Right zero-padding: 15001 samples -> K = 1499 frames covering 15000 samples.
    assert float(out[..., -1].abs().max()) == 0.0
    assert model.valid_length(15001) == 15001
    assert model.segment_length == 8820


def test_apply_split_matches_official(
    official_fixtures: Path, tasnet_case, one_thread: None
) -> None:
    _, _, model = tasnet_case
    with np.load(official_fixtures / "v2_tasnet" / "apply_split.npz") as data:
        mix, ref = data["mix"], data["out"]
    options = ApplyOptions(segment=model.segment_length / model.samplerate, split=True)
    out = apply_model(model, torch.from_numpy(mix), options)
    assert_matches(out.numpy(), ref, "v2_tasnet/apply_split.npz out")


def test_seeded_init_matches_official(tasnet_case) -> None:
    """Same seed -> same weights: creation order and the xavier quirk (gamma/beta drawn too)."""
    meta, state, _ = tasnet_case
    torch.manual_seed(meta["seed"])
    ours = ConvTasNet(**meta["constructor"]["kwargs"]).state_dict()
    assert list(ours) == list(state)
    for key, ref in state.items():
        assert torch.allclose(ours[key], ref, rtol=0, atol=1e-7), key
    assert ours["separator.network.0.gamma"].std() > 0  # not the nominal ones


def test_state_keys_match_released(official_fixtures: Path) -> None:
    """The released architecture (X=10) has the official names, order and shapes."""
    ref = json.loads((official_fixtures / "keys" / "v2_tasnet.json").read_text())
    with torch.device("meta"):
        model = ConvTasNet(sources=SOURCES, X=10)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(ours.items()) == list(ref.items())
    assert sum(p.numel() for p in model.parameters()) == 10_977_872


def test_causal_variant_structure() -> None:
    """Causal blocks insert a parameter-free Chomp1d: depthwise keys at net.3.net.{0,2,3,4}."""
    model = ConvTasNet(SOURCES, N=8, B=4, H=6, X=2, R=1, causal=True, norm_type="cLN")
    keys = [k for k in model.state_dict() if k.startswith("separator.network.2.0.1.net.3.")]
    assert keys == [
        "separator.network.2.0.1.net.3.net.0.weight",
        "separator.network.2.0.1.net.3.net.2.weight",
        "separator.network.2.0.1.net.3.net.3.gamma",
        "separator.network.2.0.1.net.3.net.3.beta",
        "separator.network.2.0.1.net.3.net.4.weight",
    ]


@pytest.mark.parametrize("causal", [True, False])
def test_named_parts_are_the_official_modules(causal: bool) -> None:
    """The named parts are the very modules behind the official state-dict keys."""
    model = ConvTasNet(SOURCES, N=8, B=4, H=6, P=3, X=3, R=2, causal=causal, norm_type="cLN")
    sep, params = model.separator, dict(model.named_parameters())
    assert model.num_sources == sep.num_sources == 4 and not hasattr(model, "C")
    assert sep.bottleneck_norm.gamma is params["separator.network.0.gamma"]
    assert sep.bottleneck.weight is params["separator.network.1.weight"]
    assert sep.mask_conv.weight is params["separator.network.3.weight"]
    assert sep.mask_conv.weight.shape == (4 * 8, 4, 1)
    blocks = sep.blocks
    assert [b.dsconv.dilation for b in blocks] == [1, 2, 4] * 2
    assert [b.dsconv.padding for b in blocks] == [(2 * d if causal else d) for d in [1, 2, 4] * 2]
    assert all(b.dsconv.context == 2 * b.dsconv.dilation for b in blocks)
    last = blocks[-1]
    prefix = "separator.network.2.1.2.net."
    named = {
        "0.weight": last.conv_in.weight,
        "1.weight": last.act_in.weight,
        "2.gamma": last.norm_in.gamma,
        "3.net.0.weight": last.dsconv.depthwise.weight,
        f"3.net.{1 + causal}.weight": last.dsconv.act.weight,
        f"3.net.{2 + causal}.gamma": last.dsconv.norm.gamma,
        f"3.net.{3 + causal}.weight": last.dsconv.pointwise.weight,
    }
    for key, param in named.items():
        assert params[prefix + key] is param, key


@pytest.mark.parametrize("causal", [True, False])
def test_causality(causal: bool) -> None:
    """Changing input from sample t0 on leaves causal outputs before t0 - (L - 1) untouched."""
    torch.manual_seed(0)
    model = ConvTasNet(SOURCES, N=16, B=8, H=16, X=4, R=2, causal=causal, norm_type="cLN").eval()
    x = torch.randn(1, 2, 2000)
    t0 = 1239  # t0 - (L - 1) = 1220 starts a hop
    y = x.clone()
    y[..., t0:] = torch.randn(1, 2, 2000 - t0)
    with torch.no_grad():
        out_x, out_y = model(x), model(y)
    before = slice(0, t0 - (model.L - 1))
    diff_before = float((out_x[..., before] - out_y[..., before]).abs().max())
    assert float((out_x[..., t0:] - out_y[..., t0:]).abs().max()) > 1e-3
    if causal:
        assert diff_before <= 1e-6 * float(out_x.abs().max())
        # Sample t0 - L + 1 starts a hop whose frame reads sample t0: the latency bound is tight.
        edge = t0 - (model.L - 1)
        assert edge % model.hop == 0
        assert float((out_x[..., edge] - out_y[..., edge]).abs().max()) > 0
    else:
        assert diff_before > 1e-3


def test_contract_and_init_kwargs() -> None:
    model = ConvTasNet(
        SOURCES,
        N=8,
        B=4,
        H=6,
        X=2,
        R=1,
        causal=True,
        norm_type="cLN",
        mask_nonlinear="softmax",
        segment_length=4410,
    )
    assert isinstance(model, SeparationModel) and isinstance(model, PackagedModel)
    rebuilt = ConvTasNet(**json.loads(json.dumps(model.init_kwargs)))
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert rebuilt.init_kwargs == model.init_kwargs
    assert (model.samplerate, model.audio_channels, model.hop) == (44100, 2, 10)


def test_softmax_masks_sum_to_the_unmasked_decoding() -> None:
    torch.manual_seed(1)
    model = ConvTasNet(SOURCES, N=8, B=4, H=6, X=2, R=1, mask_nonlinear="softmax").eval()
    x = torch.randn(2, 2, 333)
    with torch.no_grad():
        stems = model(x)
        w = model.encoder(x)
        whole = model.decoder(w, torch.ones(2, 1, 8, w.size(-1)))[:, 0]
    assert torch.allclose(stems.sum(1)[..., : whole.size(-1)], whole, atol=1e-5)


def test_short_input_and_bad_shapes() -> None:
    model = ConvTasNet(SOURCES, N=8, B=4, H=6, X=2, R=1)
    assert torch.equal(model(torch.ones(1, 2, 19)), torch.zeros(1, 4, 2, 19))
    assert model(torch.ones(1, 2, 20)).shape == (1, 4, 2, 20)
    for bad in (torch.zeros(2, 100), torch.zeros(1, 1, 100)):
        with pytest.raises(ValueError, match=re.escape(str(tuple(bad.shape)))):
            model(bad)
    with pytest.raises(ValueError, match="norm_type"):
        ConvTasNet(SOURCES, norm_type="LN")
    with pytest.raises(ValueError, match="mask_nonlinear"):
        ConvTasNet(SOURCES, mask_nonlinear="sigmoid")
