"""Safe loading of official v2 files: hub state dicts and pickled packages."""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickletools
import sys
import types
import zipfile
from fractions import Fraction
from pathlib import Path, PosixPath
from typing import Any

import numpy as np
import pytest
import torch

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.official_th import (
    OfficialPackage,
    load_official_package,
    load_state_file,
    model_from_official_package,
)
from demucs_rr.hub.safety import load_weights
from demucs_rr.models.demucs_v2 import Demucs
from demucs_rr.sources import MUSDB_SOURCES
from tests.helpers.checks import assert_matches


def _globals_in(path: Path) -> set[str]:
    """Globals a torch.save zip pickle references (read with pickletools, nothing executed)."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    found: set[str] = set()
    strings: list[Any] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str):
            strings.append(arg)
    return found


# ------------------------------------------------------------------------------ official files


def test_package_loads_like_state(official_fixtures: Path) -> None:
    case = official_fixtures / "v2_demucs"
    meta = json.loads((case / "meta.json").read_text())
    package = load_official_package(case / "package.th")
    assert isinstance(package, OfficialPackage)
    assert package.klass_name == "demucs.model.Demucs"
    assert package.args == []
    assert package.kwargs == meta["files"]["package.th"]["kwargs"]
    # argparse.Namespace -> plain dict, PosixPath -> str
    assert type(package.training_args) is dict
    assert package.training_args == meta["files"]["package.th"]["training_args"]
    assert package.training_args["musdb"] == "musdb18"
    state = load_state_file(case / "state.th")
    assert list(package.state) == list(state)
    for key, value in state.items():
        assert value.dtype == torch.float32
        assert torch.equal(package.state[key], value), key


def test_package_model_forward_matches_official(official_fixtures: Path, one_thread: None) -> None:
    case = official_fixtures / "v2_demucs"
    model = model_from_official_package(case / "package.th")
    assert isinstance(model, Demucs) and not model.training
    assert model.segment_length == 8820 and model.sources == list(MUSDB_SOURCES)
    with np.load(case / "forward.npz") as data:
        x, ref = data["x"], data["y"]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape
    assert float(np.abs(y - ref).max()) <= 1e-5 * float(np.abs(ref).max()) + 1e-6


def test_package_is_not_a_state_file(official_fixtures: Path) -> None:
    with pytest.raises(PackageFormatError, match="load_official_package") as info:
        load_state_file(official_fixtures / "v2_demucs" / "package.th")
    assert "\n" not in str(info.value) and "package.th" in str(info.value)


@pytest.mark.parametrize(
    ("case", "klass", "class_name"),
    [
        ("v2_demucs", "demucs.model.Demucs", "Demucs"),
        ("v3_demucs", "demucs.demucs.Demucs", "DemucsV3"),
        ("v4_hdemucs", "demucs.hdemucs.HDemucs", "HDemucs"),
        ("v4_htdemucs", "demucs.htdemucs.HTDemucs", "HTDemucs"),
    ],
)
def test_one_loader_builds_every_official_package(
    official_fixtures: Path, one_thread: None, case: str, klass: str, class_name: str
) -> None:
    """v2 and v3/v4 packages go through the same restricted loader and entry point."""
    path = official_fixtures / case / "package.th"
    package = load_official_package(path)
    assert package.klass_name == klass
    model = model_from_official_package(path)
    assert type(model).__name__ == class_name and not model.training
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    if case == "v4_htdemucs":  # the exact Fraction segment survives
        assert package.kwargs["segment"] == Fraction(39, 100)
        assert model.segment_length == 17199
    with np.load(official_fixtures / case / "forward.npz") as data:
        x, ref = data["x"], data["y"]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    assert_matches(y, ref, f"{case}/forward.npz")


# ------------------------------------------------------------------------------ malicious files


class _Payload:
    def __init__(self, func: Any, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (self.func, (self.arg,))


@pytest.mark.parametrize("where", ["klass", "state", "training_args"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, where: str, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Payload(os.system, f"touch {marker}")
        reference = f"{os.system.__module__}.system"  # posix.system on Linux
    else:
        payload = _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")
        reference = "builtins.eval"
    package: dict[str, Any] = {
        "klass": "x",
        "args": (),
        "kwargs": {},
        "state": {"w": torch.zeros(2)},
        "training_args": None,
    }
    package[where] = payload if where != "state" else {"w": torch.zeros(2), "evil": payload}
    path = tmp_path / "evil.th"
    torch.save(package, path)
    # the payload really is in the file (protocol 2 writes builtins as __builtin__)
    assert reference.replace("builtins.", "__builtin__.") in _globals_in(path)
    with pytest.raises(PackageFormatError, match=f"refusing to load .*evil.th.*{reference}"):
        load_official_package(path)
    with pytest.raises(PackageFormatError):
        model_from_official_package(path)
    assert not marker.exists()


class _Reduce:
    """An object whose unpickling calls ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


@pytest.fixture
def fake_v4(monkeypatch: pytest.MonkeyPatch) -> type:
    """An importable stand-in for demucs.htdemucs.HTDemucs (torch.save pickles its path)."""
    module = types.ModuleType("demucs.htdemucs")
    klass = type("HTDemucs", (), {"__module__": "demucs.htdemucs"})
    module.HTDemucs = klass  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "demucs", types.ModuleType("demucs"))
    monkeypatch.setitem(sys.modules, "demucs.htdemucs", module)
    return klass


@pytest.mark.parametrize(
    ("kind", "protocol", "reference"),
    [
        ("os.system", 2, f"{os.system.__module__}.system"),
        ("builtins.open", 2, f"{open.__module__}.open"),
        ("Path.touch", 2, "builtins.getattr"),  # protocol 2 reaches methods via getattr
        ("Path.touch", 4, "pathlib.Path.touch"),
    ],
)
@pytest.mark.parametrize("where", ["kwargs", "state", "metrics"])
def test_malicious_v4_package_is_refused_without_running(
    tmp_path: Path, fake_v4: type, kind: str, protocol: int, reference: str, where: str
) -> None:
    """A v4-style package (HTDemucs class, Fraction segment, float16 state, metrics) carrying a
    payload that would create a file is refused on one line, and the file never appears."""
    from demucs_rr.hub.formats import load_member
    from demucs_rr.hub.loader import load_model

    marker = tmp_path / "pwned"
    payloads = {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.open": _Reduce(builtins.open, str(marker), "w"),
        "Path.touch": _Reduce(Path.touch, marker),
    }
    package: dict[str, Any] = {
        "klass": fake_v4,
        "args": (),
        "kwargs": {"sources": list(MUSDB_SOURCES), "segment": Fraction(39, 5)},
        "state": {"encoder.0.conv.weight": torch.zeros(2, dtype=torch.float16)},
        "training_args": {"model": "htdemucs"},
        "metrics": ({"loss": 0.1}, {"nsdr": 9.0}),
    }
    if where == "kwargs":
        package["kwargs"]["segment"] = payloads[kind]
    elif where == "state":
        package["state"]["evil"] = payloads[kind]
    else:
        package["metrics"] = payloads[kind]
    repo = tmp_path / "repo"
    repo.mkdir()
    path = repo / "955717e8.th"
    torch.save(package, path, pickle_protocol=protocol)
    for load in (
        load_official_package,
        model_from_official_package,
        load_member,
        lambda p: load_model(str(p)),
        lambda p: load_model("955717e8", repo=p.parent),
    ):
        with pytest.raises(PackageFormatError) as info:
            load(path)
        message = str(info.value)
        assert f"refusing to load {path}: it references {reference}," in message
        assert "\n" not in message
    assert not marker.exists()


def test_non_package_pickles_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.th"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(PackageFormatError, match="not an official model package"):
        load_official_package(path)
    path = tmp_path / "garbage.th"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(PackageFormatError, match="garbage.th"):
        load_official_package(path)
    with pytest.raises(PackageFormatError, match="garbage.th"):
        load_state_file(path)
    with pytest.raises(ModelNotFoundError):
        load_official_package(tmp_path / "missing.th")
    with pytest.raises(ModelNotFoundError):
        load_state_file(tmp_path / "missing.th")


# ------------------------------------------------------------------------------ state files


def test_state_file_checks(tmp_path: Path) -> None:
    good = tmp_path / "good.th"
    torch.save({"a": torch.ones(2), "b": torch.zeros(1, 3)}, good)
    state = load_state_file(good)
    assert list(state) == ["a", "b"] and torch.equal(state["a"], torch.ones(2))

    quantized = tmp_path / "demucs_quantized-07afea75.th"
    torch.save({"compressed": b"\x78\x9c zlib bytes"}, quantized)
    with pytest.raises(PackageFormatError, match="quantized.*`demucs` or `demucs_extra`") as info:
        load_state_file(quantized)
    assert "demucs_quantized-07afea75.th" in str(info.value) and "\n" not in str(info.value)

    not_tensors = tmp_path / "mixed.th"
    torch.save({"a": torch.ones(1), "b": 3}, not_tensors)
    with pytest.raises(PackageFormatError, match="mixed.th.*'b'"):
        load_state_file(not_tensors)

    a_list = tmp_path / "list.th"
    torch.save([torch.ones(1)], a_list)
    with pytest.raises(PackageFormatError, match="list.th.*list"):
        load_state_file(a_list)


def test_strict_loading_reports_missing_extra_and_shape() -> None:
    model = Demucs(list(MUSDB_SOURCES), channels=2, depth=2, lstm_layers=1)
    state = model.state_dict()

    missing = {k: v for k, v in state.items() if k != "lstm.linear.bias"}
    with pytest.raises(PackageFormatError, match=r"^x.th: .* missing keys \[lstm.linear.bias\]$"):
        load_weights(model, missing, "x.th")

    extra = {**state, "encoder.9.0.weight": torch.zeros(1)}
    with pytest.raises(PackageFormatError, match=r"unexpected keys \[encoder.9.0.weight\]"):
        load_weights(model, extra, "x.th")

    wrong = {**state, "encoder.0.0.weight": torch.zeros(2, 2, 7)}
    with pytest.raises(
        PackageFormatError, match=r"shape mismatch \[encoder.0.0.weight: stored \(2, 2, 7\)"
    ):
        load_weights(model, wrong, "x.th")

    both = {**missing, "encoder.0.0.weight": torch.zeros(2, 2, 7)}
    with pytest.raises(PackageFormatError) as err:  # every problem, on one line
        load_weights(model, both, "x.th")
    assert "missing keys [lstm.linear.bias]; shape mismatch [encoder.0.0.weight" in str(err.value)
    assert "\n" not in str(err.value)

    half = {k: v.half() for k, v in state.items()}
    load_weights(model, half, "x.th")  # fp16 packages are cast to float32
    assert model.encoder[0][0].weight.dtype == torch.float32


# ------------------------------------------------------------------------------ crafted packages


@pytest.fixture
def fake_official(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    """Importable stand-ins for demucs.model.Demucs / demucs.tasnet.ConvTasNet, so that
    torch.save writes the same class references as the official save_model."""
    classes = {}
    for module_name, class_name in (("demucs.model", "Demucs"), ("demucs.tasnet", "ConvTasNet")):
        module = types.ModuleType(module_name)
        klass = type(class_name, (), {"__module__": module_name})
        setattr(module, class_name, klass)
        monkeypatch.setitem(sys.modules, module_name, module)
        classes[class_name] = klass
    monkeypatch.setitem(sys.modules, "demucs", types.ModuleType("demucs"))
    return classes


def test_unknown_kwargs_are_dropped_with_warning(
    tmp_path: Path, fake_official: dict[str, type], caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    kwargs = {"sources": list(MUSDB_SOURCES), "channels": 2, "depth": 2, "lstm_layers": 1}
    state = Demucs(**kwargs).state_dict()
    path = tmp_path / "pkg.th"
    training_args = {"musdb": PosixPath("/data/musdb")}
    package = {
        "klass": fake_official["Demucs"],
        "args": (),
        "kwargs": {**kwargs, "no_such_option": 3},
        "state": state,
        "training_args": training_args,
    }
    torch.save(package, path)
    with caplog.at_level(logging.WARNING, logger="demucs_rr.hub.official_th"):
        model = model_from_official_package(path)
    assert "no_such_option" in caplog.text
    assert isinstance(model, Demucs) and model.init_kwargs["channels"] == 2
    assert load_official_package(path).training_args == {"musdb": "/data/musdb"}
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_package_with_quantized_state_is_refused(
    tmp_path: Path, fake_official: dict[str, type]
) -> None:
    path = tmp_path / "q.th"
    package = {"klass": fake_official["Demucs"], "args": (), "kwargs": {}}
    torch.save({**package, "state": {"compressed": b"zz"}, "training_args": None}, path)
    with pytest.raises(PackageFormatError, match="quantized"):
        load_official_package(path)


def test_tasnet_package_resolves_lazily(tmp_path: Path, fake_official: dict[str, type]) -> None:
    path = tmp_path / "tasnet.th"
    package = {"klass": fake_official["ConvTasNet"], "args": (), "kwargs": {"X": 2}}
    torch.save({**package, "state": {"w": torch.zeros(1)}, "training_args": None}, path)
    assert load_official_package(path).klass_name == "demucs.tasnet.ConvTasNet"
    with pytest.raises(PackageFormatError):  # the bogus one-tensor state is a mismatch
        model_from_official_package(path)
