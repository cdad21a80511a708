"""Demucs 3/4 models and bags through the separation engine: official apply parity, the model
contract (segment limits, context rules, ensembles), 6-source CLI runs and the real-valued STFT."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from demucs_rr.cli import main
from demucs_rr.errors import ConfigError
from demucs_rr.hub.official_th import model_from_official_package
from demucs_rr.hub.package import save_package
from demucs_rr.models import spec
from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.base import SeparationModel
from demucs_rr.models.demucs_v2 import Demucs
from demucs_rr.models.demucs_v3 import DemucsV3
from demucs_rr.models.hdemucs import HDemucs
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate.api import Separator
from demucs_rr.separate.engine import ApplyOptions, apply_model, count_passes, shift_offsets
from demucs_rr.sources import MUSDB_SOURCES
from tests.helpers.audio import make_tone_mix
from tests.helpers.checks import assert_matches

SOURCES = list(MUSDB_SOURCES)
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]


def _load_npz(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def _tiny_htdemucs(sources: list[str] = SOURCES, **overrides: Any) -> HTDemucs:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {
        "sources": sources,
        "channels": 8,
        "depth": 4,
        "bottom_channels": 16,
        "t_layers": 1,
        "t_heads": 2,
        "dconv_mode": 3,
        "segment": Fraction(1, 10),
    }
    return HTDemucs(**{**kwargs, **overrides}).eval()


def _bag(official: Path) -> tuple[BagOfModels, dict[str, Any]]:
    folder = official / "bag"
    spec_ = yaml.safe_load((folder / "tinybag_a.yaml").read_text())
    members = [model_from_official_package(folder / f"{sig}.th") for sig in spec_["models"]]
    bag = BagOfModels(members, weights=spec_["weights"], segment=spec_["segment"]).eval()
    return bag, spec_


# ----------------------------------------------------------------------------- official parity


@pytest.mark.parametrize("case", ["v3_demucs", "v4_hdemucs", "v4_htdemucs", "bag"])
def test_engine_matches_official_apply(official_fixtures: Path, one_thread: None, case: str):
    """``apply_model(model, mix[None], shifts=0, split=True, overlap=0.25)`` through the options
    a :class:`Separator` builds (the CLI path), on the un-normalised fixture mixture."""
    if case == "bag":
        model: SeparationModel = _bag(official_fixtures)[0]
    else:
        model = model_from_official_package(official_fixtures / case / "package.th")
    data = _load_npz(official_fixtures / case / "apply.npz")
    sep = Separator(model, device="cpu", overlap=0.25)
    out = apply_model(sep.model, data["mix"], sep.options, sep.device)
    assert_matches(out[None].numpy(), data["out"].numpy(), f"{case}/apply.npz out")


def test_bag_follows_the_yaml(official_fixtures: Path):
    bag, spec_ = _bag(official_fixtures)
    members = [member for member, _ in bag.weighted_members()]
    assert [type(m) for m in members] == [DemucsV3, HDemucs]
    assert [m.segment_length for m in members] == [13230, 13230] == [bag.segment_length] * 2
    assert [list(w) for _, w in bag.weighted_members()] == spec_["weights"]
    assert bag.max_segment_length is None and isinstance(bag, SeparationModel)
    assert list(bag.state_dict())[0].startswith("models.0.")


def test_seeded_shifts_on_a_v4_model(official_fixtures: Path, one_thread: None):
    """Each shift pass is the split apply of the track delayed by its offset, then averaged."""
    model = model_from_official_package(official_fixtures / "v4_htdemucs" / "package.th")
    mix = _load_npz(official_fixtures / "v4_htdemucs" / "apply.npz")["mix"][:, :30000]
    shifted = apply_model(model, mix, ApplyOptions(shifts=2, seed=3))
    assert shifted.shape == (4, 2, 30000) and torch.isfinite(shifted).all()
    assert torch.equal(shifted, apply_model(model, mix, ApplyOptions(shifts=2, seed=3)))
    passes = []
    for left_pad in shift_offsets(2, 22050, seed=3):
        padded = torch.nn.functional.pad(mix, (left_pad, 0))
        passes.append(apply_model(model, padded, ApplyOptions())[..., left_pad:])
    torch.testing.assert_close(shifted, sum(passes) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(shifted, apply_model(model, mix, ApplyOptions()), atol=1e-4)


# ----------------------------------------------------------------------------- the contract


def test_contract_segment_rules():
    tiny = _tiny_htdemucs()
    assert tiny.max_segment_length == tiny.segment_length == 4410
    assert tiny.chunk_input_length(100, 4410) == 4410  # real context up to the segment
    assert tiny.chunk_input_length(100, 3000) == 3000  # the model pads the rest itself
    hdemucs = HDemucs(SOURCES, channels=4, depth=5)
    assert hdemucs.valid_length(1234) == hdemucs.chunk_input_length(1234, 9999) == 1234
    assert hdemucs.max_segment_length is None and not hdemucs.weighted_members()
    demucs = Demucs(SOURCES, channels=4, depth=4)
    assert demucs.chunk_input_length(8000, 20000) == demucs.valid_length(8000) > 8000
    for model in (hdemucs, demucs, ConvTasNet(SOURCES, N=8, B=4, H=8, X=2, R=1)):
        assert model.max_segment_length is None and isinstance(model, SeparationModel)


def test_htdemucs_explicit_segment_zero_pads_the_rest():
    """A shorter chunk grid feeds the segment as context; the model pads it on the right."""
    model = _tiny_htdemucs()
    mix = torch.randn(2, 6000, generator=torch.Generator().manual_seed(1))
    out = apply_model(model, mix, ApplyOptions(segment=3000 / model.samplerate))
    with torch.no_grad():
        first = model(mix[None, :, :3000])[0]  # chunk 0: [0, 3000), weight 1 up to 2250
    torch.testing.assert_close(out[..., :1000], first[..., :1000], atol=1e-6, rtol=1e-5)
    default = apply_model(model, mix, ApplyOptions())
    assert not torch.allclose(out, default, atol=1e-4)


def test_bag_weights_per_source_and_member_segments():
    a = FractionModel(SOURCES, [1.0, 0.0, 0.5, 0.25], segment_length=1000, crop=3)
    b = FractionModel(SOURCES, [0.0, 1.0, 0.5, 0.75], segment_length=700)
    tiny = _tiny_htdemucs()
    bag = BagOfModels([a, b, tiny], weights=[[1, 0, 1, 3], [1, 1, 1, 1], [0, 0, 0, 1e-9]])
    assert bag.max_segment_length == 4410 and a.segment_length == 1000
    mix = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    out = apply_model(bag, mix, ApplyOptions(overlap=0.5))
    expected = torch.tensor([0.5, 1.0, 0.5, 0.375])[:, None, None] * mix
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    BagOfModels([a, b, tiny], segment=0.2)  # longer than tiny's 0.1 s: it keeps its own
    assert (a.segment_length, b.segment_length, tiny.segment_length) == (8820, 8820, 4410)
    BagOfModels([a, tiny], segment=0.05)
    assert a.segment_length == tiny.segment_length == tiny.max_segment_length == 2205


def test_bag_members_draw_their_own_shifts():
    """Member m is applied alone with the next ``shifts`` offsets of the seeded generator."""
    members = []
    for seed, segment in ((0, 8820), (1, 6000)):
        torch.manual_seed(seed)
        members.append(Demucs(SOURCES, channels=4, depth=4, segment_length=segment).eval())
    bag = BagOfModels(members, weights=[[1, 1, 1, 1], [1, 3, 1, 0]])
    mix = torch.randn(2, 20000, generator=torch.Generator().manual_seed(0))
    options = ApplyOptions(shifts=1, seed=7)
    seen: list[int] = []
    out = apply_model(bag, mix, options, progress=seen.append)
    assert sum(seen) == 2 * 20000 == count_passes(bag, options) * 20000
    alone = []
    for member, left_pad in zip(members, shift_offsets(2, 22050, seed=7), strict=True):
        padded = torch.nn.functional.pad(mix, (left_pad, 0))
        alone.append(apply_model(member, padded, ApplyOptions())[..., left_pad:])
    weights = torch.tensor([[1.0, 1, 1, 1], [1, 3, 1, 0]])[..., None, None]
    expected = (weights[0] * alone[0] + weights[1] * alone[1]) / weights.sum(0)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": []}, "at least one"),
        ({"models": "mixed"}, "samplerate"),
        ({"weights": [[1, 1, 1, 1]]}, "2 weight lists"),
        ({"weights": [[1, 1, 1], [1, 1, 1]]}, "one value per source"),
        ({"weights": [[1, 0, 1, 1], [1, 0, 1, 1]]}, "'bass'"),
    ],
)
def test_bag_rejects_bad_input(kwargs: dict[str, Any], message: str):
    members = [FractionModel(SOURCES), FractionModel(SOURCES)]
    if kwargs.get("models") == "mixed":
        kwargs["models"] = [members[0], FractionModel(SOURCES, samplerate=8000)]
    with pytest.raises(ConfigError, match=message):
        BagOfModels(**{"models": members, **kwargs})


# ----------------------------------------------------------------------------- segment limits


def test_separator_refuses_a_segment_above_the_maximum():
    model = _tiny_htdemucs()
    with pytest.raises(ConfigError, match=r"maximum segment of 0\.1 s") as info:
        Separator(model, device="cpu", segment=0.2)
    assert "\n" not in str(info.value)
    Separator(model, device="cpu", segment=0.1)
    sep = Separator(model, device="cpu", split=False)
    with pytest.raises(ConfigError, match=r"maximum segment is 0\.1 s"):
        sep.separate_tensor(torch.zeros(2, 5000))
    assert sep.separate_tensor(torch.zeros(2, 4000))["vocals"].shape == (2, 4000)
    bag = BagOfModels([FractionModel(SOURCES, samplerate=44100), model])
    with pytest.raises(ConfigError, match=r"maximum segment of 0\.1 s"):
        Separator(bag, device="cpu", segment=1.0)


@pytest.fixture(scope="module")
def six_source_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _tiny_htdemucs(SIX)
    return save_package(model, tmp_path_factory.mktemp("models") / "ht6.safetensors")


@pytest.fixture
def song(tmp_path: Path) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, make_tone_mix(0.25).T.numpy(), 44100, subtype="PCM_16")
    return path


def _separate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["separate", "-q", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("extra", [["--segment", "0.2"], ["--no-split"]])
def test_cli_refuses_too_long_segments(six_source_package, song, tmp_path, capsys, extra):
    out = tmp_path / "out"
    code, err = _separate(
        [str(song), "-n", str(six_source_package), "-o", str(out), *extra], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) <= 2, err
    assert "0.1 s" in err and err.startswith("error:")
    assert not list(out.rglob("*.wav"))


@pytest.mark.parametrize(
    ("extra", "stems"),
    [
        ([], SIX),
        (["--two-stems", "guitar"], ["guitar", "no_guitar"]),
        (["--stems", "piano,vocals"], ["piano", "vocals"]),
    ],
)
def test_six_source_model_through_the_cli(six_source_package, song, tmp_path, capsys, extra, stems):
    out = tmp_path / "out"
    code, err = _separate(
        [str(song), "-n", str(six_source_package), "-o", str(out), *extra], capsys
    )
    assert code == 0, err
    written = sorted(p.stem for p in (out / "ht6" / "song").glob("*.wav"))
    assert written == sorted(stems)
    data, rate = sf.read(out / "ht6" / "song" / f"{stems[0]}.wav", always_2d=True)
    assert rate == 44100 and data.shape == (int(0.25 * 44100), 2)


# ----------------------------------------------------------------------------- real-valued STFT


def test_real_valued_stft_through_the_engine(monkeypatch: pytest.MonkeyPatch):
    """The path a model on ``mps`` takes (no complex FFT, no complex tensor anywhere) gives the
    same stems as the complex STFT, through the engine."""
    assert spec.use_real_stft(torch.device("mps")) and not spec.use_real_stft(torch.device("cpu"))
    model = _tiny_htdemucs()
    mix = torch.randn(2, 9000, generator=torch.Generator().manual_seed(2))
    options = ApplyOptions(shifts=1, seed=4)
    reference = apply_model(model, mix, options)

    def no_complex(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("complex FFT used on the real-valued path")

    for name in ("stft", "istft", "view_as_complex", "view_as_real", "polar"):
        monkeypatch.setattr(torch, name, no_complex)
    monkeypatch.setattr(spec, "FORCE_REAL_STFT", True)
    real = apply_model(model, mix, options)
    assert real.dtype == torch.float32 and not real.is_complex()
    torch.testing.assert_close(real, reference, atol=1e-5, rtol=1e-5)
