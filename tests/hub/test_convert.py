"""Official 4.1.0 hub files and ``demucs-rr models convert``: every official format converts
into a demucs_rr package that computes exactly what the original computes."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from demucs_rr.cli import main
from demucs_rr.errors import ConfigError, PackageFormatError
from demucs_rr.hub.convert import convert_model
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.official_safetensors import load_hub_package, model_from_hub_file
from demucs_rr.hub.official_th import load_official_package, model_from_official_package
from demucs_rr.hub.package import read_package_metadata
from demucs_rr.models.bag import BagOfModels

CASES = ["v3_demucs", "v4_hdemucs", "v4_htdemucs"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """The fixtures were produced with one thread."""


def _encode(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    raise TypeError(f"not JSON-able: {value!r}")


def write_hub_file(package: Path, dst: Path, structure: bool = False) -> Path:
    """The official 4.1.0 hub layout of a pickled package: tensors + klass/args/kwargs JSON."""
    content = load_official_package(package)
    tensors = {f"t{i}": value for i, value in enumerate(content.state.values())}
    if not structure:
        tensors = dict(content.state)
    metadata = {
        "klass": content.klass_name,
        "args": json.dumps(content.args),
        "kwargs": json.dumps(content.kwargs, default=_encode),
    }
    if structure:
        pairs = [[key, {"_tensor": f"t{i}"}] for i, key in enumerate(content.state)]
        metadata["structure"] = json.dumps({"_dict": pairs})
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def _short(official: Path, case: str, length: int = 6000) -> torch.Tensor:
    with np.load(official / case / "forward.npz") as data:
        return torch.from_numpy(data["x"][..., :length])


def _run(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", CASES)
def test_official_package_converts_exactly(official_fixtures: Path, tmp_path: Path, case: str):
    package = official_fixtures / case / "package.th"
    done = convert_model(str(package), tmp_path / f"{case}.safetensors")
    assert (done.members, done.half) == (1, True)  # the official weights are float16
    meta = read_package_metadata(done.path)
    assert meta["format_version"] == 1 and meta["name"] == "package"
    original = model_from_official_package(package)
    converted = load_model(done.path)
    assert type(converted) is type(original) and not converted.training
    assert converted.segment_length == original.segment_length
    x = _short(official_fixtures, case)
    assert torch.equal(_run(converted, x), _run(original, x))


@pytest.mark.parametrize("structure", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_hub_safetensors_loads_and_converts(
    official_fixtures: Path, tmp_path: Path, case: str, structure: bool
) -> None:
    package = official_fixtures / case / "package.th"
    hub = write_hub_file(package, tmp_path / "955717e8.safetensors", structure)
    content = load_hub_package(hub)
    assert content.kwargs == load_official_package(package).kwargs  # Fractions restored
    original = model_from_official_package(package)
    x = _short(official_fixtures, case)
    assert torch.equal(_run(model_from_hub_file(hub), x), _run(original, x))
    assert torch.equal(_run(load_model(str(hub)), x), _run(original, x))
    done = convert_model(str(hub), tmp_path / "out.safetensors")
    assert torch.equal(_run(load_model(done.path), x), _run(original, x))


def test_hub_files_are_checked(official_fixtures: Path, tmp_path: Path) -> None:
    package = official_fixtures / "v4_hdemucs" / "package.th"
    hub = write_hub_file(package, tmp_path / "good.safetensors")
    state = {"w": torch.zeros(2)}
    cases = {
        "os.system": ({"klass": "os.system"}, "not an official Demucs model class"),
        "json": ({"klass": "demucs.hdemucs.HDemucs", "kwargs": "{"}, "'kwargs' is not valid JSON"),
        "diffq": (
            {
                "klass": "demucs.hdemucs.HDemucs",
                "structure": json.dumps(
                    {"_dict": [["__quantized", True], ["meta", {"_class": "diffq.Packed"}]]}
                ),
            },
            "DiffQ",
        ),
    }
    for name, (metadata, words) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        save_file(state, str(bad), metadata=metadata)
        with pytest.raises(PackageFormatError, match=words) as err:
            load_model(str(bad))
        assert "\n" not in str(err.value)
    assert isinstance(load_model(str(hub)), torch.nn.Module)


def test_bag_yaml_converts_to_one_bag_package(official_fixtures: Path, tmp_path: Path) -> None:
    yaml = official_fixtures / "bag" / "tinybag_a.yaml"
    done = convert_model(str(yaml), tmp_path / "tinybag.safetensors")
    assert (done.members, done.half) == (2, True)
    meta = read_package_metadata(done.path)
    assert (meta["kind"], meta["name"], meta["segment"]) == ("bag", "tinybag_a", 0.3)
    assert meta["signatures"] == ["e2b7f16b", "ec76c682"]
    original = load_model(str(yaml))
    converted = load_model(done.path)
    assert isinstance(converted, BagOfModels) and isinstance(original, BagOfModels)
    assert converted.weights == original.weights and converted.segment == 0.3
    assert [m.segment_length for m in converted.models] == [13230, 13230]
    x = _short(official_fixtures, "v4_hdemucs", 9000)
    assert torch.equal(_run(converted, x), _run(original, x))
    assert torch.equal(_run(load_model(str(done.path)), x), _run(original, x))


def test_cli_convert(official_fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    repo = official_fixtures / "bag"
    dst = tmp_path / "bag.safetensors"
    assert main(["models", "convert", "tinybag_a", str(dst), "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {dst} (bag of 2 models, float16 (exact) weights)" in out
    v2 = tmp_path / "v2.safetensors"
    argv = ["models", "convert", str(official_fixtures / "v2_demucs" / "package.th"), str(v2)]
    assert main([*argv, "--name", "demucs_v2"]) == 0
    assert "(model, float32 weights)" in capsys.readouterr().out  # v2 weights are float32
    assert read_package_metadata(v2)["name"] == "demucs_v2"
    assert main(["models", "convert", str(v2), str(tmp_path / "x.th")]) == 2
    assert main(["models", "convert", "no_such_model", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "must be a .safetensors file" in err
    assert "unknown model 'no_such_model'" in err
    with pytest.raises(ConfigError, match="onto itself"):
        convert_model(str(v2), v2)
