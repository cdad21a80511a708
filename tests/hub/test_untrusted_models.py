"""Untrusted model files: absurd kwargs, malformed safetensors headers and malicious pickles
are refused on one line, before anything large is allocated or anything from the file runs."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from demucs_rr.errors import PackageFormatError
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.official_safetensors import model_from_hub_file
from demucs_rr.hub.official_th import load_state_file, model_from_official_package
from tests.helpers.untrusted_files import (
    TINY_KWARGS,
    raw_safetensors,
    tiny_model,
    write_hub,
    write_official,
    write_package,
)

GB = 1024**3


def _refused(load: Callable[[Path], Any], path: Path, words: str = "") -> str:
    """``load(path)`` raises a one-line PackageFormatError naming ``path`` (and ``words``)."""
    with pytest.raises(PackageFormatError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert words in message, message
    return message


_PEAK = """
import json, resource, sys
import torch
from demucs_rr.errors import PackageFormatError
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.official_safetensors import model_from_hub_file
from demucs_rr.hub.official_th import model_from_official_package
loaders = {"model": load_model, "hub": model_from_hub_file, "official": model_from_official_package}
def peak():
    # VmHWM: this process's own high-water mark (ru_maxrss starts from the parent's at exec)
    try:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
torch.zeros(1)
before, seen = peak(), []
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        loaders[kind](path)
        outcome = "loaded"
    except PackageFormatError:
        outcome = "refused"
    seen.append([path, outcome, peak() - before])
print(json.dumps(seen))
"""


def _peak_growth(files: list[tuple[str, Path]]) -> list[tuple[str, str, int]]:
    """Load each ``(loader, path)`` in order in a fresh process: ``(path, loaded|refused, growth
    of the peak resident size since before the first load, in bytes)``."""
    argv = [str(x) for kind, path in files for x in (kind, path)]
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return [tuple(row) for row in json.loads(run.stdout.strip().splitlines()[-1])]


def _with_kwargs(src: Path, dst: Path, **changes: Any) -> Path:
    """``src`` package with its stored kwargs changed (tensors kept)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as handle:
        metadata = dict(handle.metadata())
    meta = json.loads(metadata["demucs_rr"])
    meta["kwargs"].update(changes)
    metadata["demucs_rr"] = json.dumps(meta)
    save_file(load_file(str(src)), str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize(
    "changes",
    [
        {"channels": -4},
        {"channels": 100000},
        {"depth": 40},
        {"lstm_layers": 10**6},  # would take hours to build, even on the meta device
        {"depth": 500, "growth": 1.0},
    ],
)
def test_absurd_package_kwargs_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    good = write_package(tmp_path / "good.safetensors")
    bad = _with_kwargs(good, tmp_path / "bad.safetensors", **changes)
    _refused(load_model, bad)
    assert isinstance(load_model(good), torch.nn.Module)


@pytest.mark.integration
def test_absurd_kwargs_are_refused_without_allocating(tmp_path: Path) -> None:
    """Peak memory of a fresh process that is handed every absurd file in turn."""
    good = write_package(tmp_path / "good.safetensors")
    files: list[tuple[str, Path]] = []
    for i, changes in enumerate(({"channels": 100000}, {"lstm_layers": 10**6}, {"depth": 40})):
        files.append(("model", _with_kwargs(good, tmp_path / f"bad{i}.safetensors", **changes)))
    files.append(
        ("hub", write_hub(tmp_path / "hub.safetensors", {**TINY_KWARGS, "channels": 10**5}))
    )
    files.append(
        ("official", write_official(tmp_path / "p.th", {**TINY_KWARGS, "channels": 10**5}))
    )
    seen = _peak_growth(files)
    assert [outcome for _, outcome, _ in seen] == ["refused"] * len(files), seen
    assert all(growth < GB / 2 for _, _, growth in seen), seen


def test_250_byte_package_without_tensors(tmp_path: Path) -> None:
    meta = {"format_version": 1, "model_class": "Demucs", "kwargs": {**TINY_KWARGS}}
    meta["kwargs"]["channels"] = 100000
    path = tmp_path / "small.safetensors"
    path.write_bytes(raw_safetensors({"__metadata__": {"demucs_rr": json.dumps(meta)}}))
    assert path.stat().st_size < 400
    _refused(load_model, path, "weights do not match Demucs: missing keys")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (raw_safetensors(b"{not json"), "not valid JSON"),
        (raw_safetensors(b"[1, 2]"), ""),
        (raw_safetensors({"w": {}}, length=10**15), "exceeds the file size"),
        (raw_safetensors({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}},
                         b"\0" * 8), "lies outside the file"),
        (raw_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                         b"\0" * 8), "lies outside the file"),
        (raw_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}),
         "malformed"),
        (raw_safetensors({"w": {"dtype": "EVIL", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
         "malformed"),
        (b"\x01\x02", ""),
    ],
)  # fmt: skip
def test_malformed_safetensors_headers(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    _refused(load_model, path, words)
    _refused(model_from_hub_file, path)


def test_hub_header_with_absurd_shapes(tmp_path: Path) -> None:
    """Hub metadata is fine but a tensor declares a huge shape past the end of the file."""
    meta = {"klass": "demucs.model.Demucs", "kwargs": json.dumps(TINY_KWARGS)}
    header = {
        "__metadata__": meta,
        "w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]},
    }
    path = tmp_path / "hub.safetensors"
    path.write_bytes(raw_safetensors(header, b"\0" * 16))
    _refused(model_from_hub_file, path, "lies outside the file")


@pytest.mark.parametrize("changes", [{"channels": -4}, {"channels": 100000}])
def test_absurd_official_kwargs_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    kwargs = {**TINY_KWARGS, **changes}
    _refused(model_from_hub_file, write_hub(tmp_path / "hub.safetensors", kwargs))
    _refused(model_from_official_package, write_official(tmp_path / "pkg.th", kwargs))
    assert isinstance(model_from_hub_file(write_hub(tmp_path / "ok.safetensors")), torch.nn.Module)
    assert isinstance(
        model_from_official_package(write_official(tmp_path / "ok.th")), torch.nn.Module
    )


def test_weight_mismatch_is_one_short_line(tmp_path: Path) -> None:
    good = write_package(tmp_path / "good.safetensors")
    bad = _with_kwargs(good, tmp_path / "bad.safetensors", channels=3, depth=1)
    message = _refused(load_model, bad, "shape mismatch")
    assert "more)" in message and len(message) < 1000


# ------------------------------------------------------------------------- malicious pickles


class _Reduce:
    """An object whose unpickling calls ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)

    def __call__(self) -> None:
        """Callable so that the pickler accepts it as the function of another reduce."""


def _payloads(marker: Path) -> dict[str, Any]:
    """Pickled objects that would create ``marker`` if anything of them ran."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "eval": _Reduce(builtins.eval, touch),
        "exec": _Reduce(builtins.exec, touch),
        "compile+exec": _Reduce(builtins.exec, _Reduce(builtins.compile, touch, "x", "exec")),
        "nested reduce": _Reduce(_Reduce, _Reduce(os.system, f"touch {marker}")),
        "getattr gadget": _Reduce(
            _Reduce(getattr, _Reduce(builtins.__import__, "builtins"), "exec"), touch
        ),
        "getattr os": _Reduce(
            _Reduce(getattr, _Reduce(builtins.__import__, "os"), "system"), f"touch {marker}"
        ),
        "torch.load gadget": _Reduce(torch.storage._load_from_bytes, b"x"),
        "rebuild_from_type": _Reduce(
            torch._tensor._rebuild_from_type_v2, builtins.exec, torch.Tensor, (touch,), {}
        ),
        "rebuild_tensor with eval": _Reduce(
            torch._utils._rebuild_tensor_v2, _Reduce(builtins.eval, touch), 0, (1,), (1,), False, {}
        ),
        "importlib": _Reduce(__import__("importlib").import_module, "os"),
    }


@pytest.mark.parametrize("kind", list(_payloads(Path("x"))))
@pytest.mark.parametrize("where", ["state", "kwargs", "training_args"])
def test_malicious_pickles_never_run(tmp_path: Path, kind: str, where: str) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    path = tmp_path / "evil.th"
    if where == "state":
        write_official(path, state={"w": torch.zeros(1), "evil": payload})
    elif where == "kwargs":
        write_official(path, kwargs={**TINY_KWARGS, "channels": payload})
    else:
        write_official(path, training_args=payload)
    for load in (model_from_official_package, load_state_file, load_model):
        _refused(load, path)
    assert not marker.exists()


def test_meta_tensor_state_is_refused(tmp_path: Path) -> None:
    """``torch._utils._rebuild_meta_tensor_no_storage`` is allowed for torch's own files, but a
    package whose weights have no data is refused on one line (not at ``load_state_dict``)."""
    state = {k: torch.empty(v.shape, device="meta") for k, v in tiny_model().state_dict().items()}
    path = write_official(tmp_path / "meta.th", state=state)
    _refused(model_from_official_package, path, "expected plain weights")
