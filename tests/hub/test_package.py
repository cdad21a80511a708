"""Release package (one .safetensors file) and model class registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub import package as package_mod
from demucs_rr.hub.bag_package import save_bag_package
from demucs_rr.hub.formats import load_member
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.package import (
    FORMAT_VERSION,
    MODEL_FORMAT_VERSION,
    read_package_metadata,
    read_training_info,
    save_package,
)
from demucs_rr.hub.training_info import Lineage, TrainingInfo
from demucs_rr.models.registry import MODEL_CLASSES, build_model, register_model_class

SOURCES = ["drums", "bass", "other", "vocals"]


class TinySep(nn.Module):
    """Stand-in separation model: conv + LSTM + int buffer, enough to exercise the format."""

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        hidden: int = 3,
        samplerate: int = 8000,
        segment_length: int = 800,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment_length = segment_length
        self.init_kwargs = {
            "sources": list(sources),
            "audio_channels": audio_channels,
            "hidden": hidden,
            "samplerate": samplerate,
            "segment_length": segment_length,
        }
        self.conv = nn.Conv1d(audio_channels, hidden, 3, padding=1)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Conv1d(hidden, len(sources) * audio_channels, 1)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))

    def valid_length(self, length: int) -> int:
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(mix))  # (B, H, T)
        x = self.lstm(x.transpose(1, 2))[0].transpose(1, 2)  # (B, H, T)
        x = self.out(x)  # (B, S*C, T)
        return x.view(x.shape[0], len(self.sources), self.audio_channels, -1)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> TinySep:
    monkeypatch.setitem(MODEL_CLASSES, "TinySep", TinySep)
    torch.manual_seed(0)
    model = TinySep(SOURCES)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    return model.eval()


def _mix() -> torch.Tensor:
    return torch.randn(2, 2, 257, generator=torch.Generator().manual_seed(1))


def test_round_trip_is_bit_identical(tiny: TinySep, tmp_path) -> None:
    info = TrainingInfo(
        epochs=3,
        best_epoch=2,
        weights="ema",
        metrics={"valid_nsdr": 1.5},
        config={"seed": 1},
        train_tracks=["a", "b"],
        valid_tracks=["c"],
    )
    path = save_package(tiny, tmp_path / "m.safetensors", name="tiny", training=info)
    assert path == tmp_path / "m.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    loaded = load_model(path)
    assert isinstance(loaded, TinySep) and not loaded.training
    assert loaded.steps.dtype == torch.int64 and int(loaded.steps) == 7
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(_mix()), tiny(_mix()))

    meta = read_package_metadata(path)
    assert meta["format_version"] == MODEL_FORMAT_VERSION == 1  # readable by older demucs_rr
    assert meta["model_class"] == "TinySep"
    assert meta["kwargs"] == tiny.init_kwargs
    assert meta["sources"] == SOURCES
    assert (meta["samplerate"], meta["audio_channels"], meta["segment_length"]) == (8000, 2, 800)
    assert meta["name"] == "tiny"
    assert meta["training"] == info.to_json()
    assert read_training_info(meta) == info and info.valid_nsdr == 1.5


def test_half_round_trip_within_fp16_tolerance(tiny: TinySep, tmp_path) -> None:
    full = save_package(tiny, tmp_path / "full.safetensors")
    half = save_package(tiny, tmp_path / "half.safetensors", half=True)
    stored = load_file(str(half))
    assert stored["conv.weight"].dtype == torch.float16
    assert stored["steps"].dtype == torch.int64
    assert load_file(str(full))["conv.weight"].dtype == torch.float32
    loaded = load_model(half)
    for key, value in tiny.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype, key
        if value.is_floating_point():
            assert torch.equal(got, value.half().float()), key
    with torch.no_grad():
        ref, out = tiny(_mix()), loaded(_mix())
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


@pytest.mark.parametrize("version", [None, 0, "1", True])
def test_unknown_format_version_refused(tmp_path, version) -> None:
    meta = {"model_class": "TinySep", "kwargs": {}}
    if version is not None:
        meta["format_version"] = version
    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"demucs_rr": json.dumps(meta)})
    with pytest.raises(PackageFormatError, match="unknown package format version"):
        load_model(path)


def test_newer_format_version_refused(tmp_path) -> None:
    meta = {"format_version": FORMAT_VERSION + 1, "model_class": "TinySep", "kwargs": {}}
    path = tmp_path / "new.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"demucs_rr": json.dumps(meta)})
    with pytest.raises(
        PackageFormatError, match=rf"newer demucs_rr \(format {FORMAT_VERSION + 1}\); upgrade"
    ):
        read_package_metadata(path)


def test_non_safetensors_file_refused(tmp_path, tiny: TinySep) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model at all")
    with pytest.raises(PackageFormatError, match="not a safetensors"):
        load_model(garbage)
    pickled = tmp_path / "pickled.safetensors"
    torch.save(tiny.state_dict(), pickled)
    with pytest.raises(PackageFormatError, match="not a safetensors"):
        load_model(pickled)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(PackageFormatError, match="not a demucs_rr package"):
        load_model(plain)
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- bag packages


def _tiny_bag(tiny: TinySep) -> LoadedModel:
    torch.manual_seed(1)
    other = TinySep(SOURCES).eval()
    weights = [[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 1.0]]
    return LoadedModel("trio", [tiny, other, tiny], ["aaaa0001", "bbbb0002", "aaaa0001"], weights)


def test_bag_package_round_trip(tiny: TinySep, tmp_path) -> None:
    from demucs_rr.models.bag import BagOfModels

    bag = _tiny_bag(tiny)
    path = save_bag_package(bag, tmp_path / "trio.safetensors")
    meta = read_package_metadata(path)
    assert (meta["format_version"], meta["kind"], meta["models"]) == (2, "bag", [0, 1, 0])
    assert meta["signatures"] == bag.signatures and meta["weights"] == bag.weights
    assert len(meta["members"]) == 2  # a repeated member is stored once
    assert all(k.startswith(("members.0.", "members.1.")) for k in load_file(str(path)))
    loaded = load_model(path)
    assert isinstance(loaded, BagOfModels) and not loaded.training
    assert loaded.weights == bag.weights and loaded.sources == SOURCES
    reference = BagOfModels(bag.members, weights=bag.weights).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_mix()), reference(_mix()))
    with pytest.raises(PackageFormatError, match="bag of models, not a single model"):
        load_member(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"kind": "ensemble"}, "'ensemble' package, which this demucs_rr does not know; upgrade"),
        ({"format_version": 1}, "a bag package needs format version 2"),
        ({"members": []}, "lacks a non-empty 'members' list"),
        ({"models": [0, 5, 0]}, "'models' must list member indices"),
        ({"weights": [[1, 1, 1, 1]]}, "'weights' must hold one list of numbers per model"),
        ({"members": [{"kwargs": {}}, {"kwargs": {}}]}, "lacks a valid 'model_class'"),
    ],
)
def test_bad_bag_metadata_refused(tiny: TinySep, tmp_path, change: dict, words: str) -> None:
    path = save_bag_package(_tiny_bag(tiny), tmp_path / "trio.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["demucs_rr"])
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"demucs_rr": json.dumps(meta | change)})
    with pytest.raises(PackageFormatError, match=re.escape(words)) as info:
        load_model(bad)
    assert "\n" not in str(info.value)


def test_atomic_save_leaves_no_temp_file(tiny: TinySep, tmp_path, monkeypatch) -> None:
    path = save_package(tiny, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(package_mod, "save_file", failing_save)
    with torch.no_grad():
        tiny.out.bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_package(tiny, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert path.read_bytes() == before


def test_model_without_init_kwargs_refused(tmp_path) -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(PackageFormatError, match="init_kwargs"):
        save_package(model, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unregistered_class_refused(tmp_path) -> None:
    class Unregistered(TinySep):
        pass

    with pytest.raises(PackageFormatError, match="register_model_class"):
        save_package(Unregistered(SOURCES), tmp_path / "x.safetensors")


def test_registry_unknown_class_and_bad_kwargs(monkeypatch) -> None:
    with pytest.raises(PackageFormatError, match="Demucs") as info:
        build_model("NoSuchNet", {})
    assert "ConvTasNet" in str(info.value)
    register_model_class("TinySep", TinySep)
    try:
        with pytest.raises(PackageFormatError, match="do not fit"):
            build_model("TinySep", {"sources": SOURCES, "bogus": 1})
        assert isinstance(build_model("TinySep", {"sources": SOURCES}), TinySep)
    finally:
        del MODEL_CLASSES["TinySep"]


def test_shape_mismatch_is_a_format_error(tiny: TinySep, tmp_path) -> None:
    path = save_package(tiny, tmp_path / "m.safetensors")
    meta = read_package_metadata(path)
    meta["kwargs"]["hidden"] = 5
    save_file(load_file(str(path)), str(path), metadata={"demucs_rr": json.dumps(meta)})
    with pytest.raises(PackageFormatError, match="do not match TinySep"):
        load_model(path)


def test_real_demucs_round_trip(tmp_path) -> None:
    from demucs_rr.models import demucs_v2 as demucs

    torch.manual_seed(0)
    model = demucs.Demucs(
        sources=SOURCES, channels=4, depth=4, lstm_layers=1, segment_length=8820
    ).eval()
    path = save_package(model, tmp_path / "demucs_tiny.safetensors", name="demucs_tiny")
    loaded = load_model(path)
    assert type(loaded) is demucs.Demucs and not loaded.training
    assert read_package_metadata(path)["model_class"] == "Demucs"
    assert loaded.init_kwargs == model.init_kwargs
    mix = torch.randn(1, 2, model.valid_length(2000), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(mix), model(mix))


# --------------------------------------------------------------------------- training block


def test_training_block_is_validated(tiny: TinySep, tmp_path) -> None:
    with pytest.raises(PackageFormatError, match="training.metrics.valid_nsdr must be a number"):
        save_package(tiny, tmp_path / "m.safetensors", training={"metrics": {"valid_nsdr": "x"}})
    assert list(tmp_path.iterdir()) == []
    path = save_package(tiny, tmp_path / "m.safetensors", training={"train_tracks": ["a"]})
    meta = read_package_metadata(path)
    assert read_training_info(meta) == TrainingInfo(train_tracks=["a"])
    for bad in (
        {"epochs": -1},
        {"best_epoch": "3"},
        {"weights": "best"},
        {"train_tracks": [1]},
        [],
    ):
        meta["training"] = bad
        save_file(load_file(str(path)), str(path), metadata={"demucs_rr": json.dumps(meta)})
        with pytest.raises(PackageFormatError, match=f"{path}.*training"):
            read_package_metadata(path)


def test_training_block_of_the_first_exporter_is_read() -> None:
    """The first exporter kept the best epoch and the weight kind inside ``metrics``."""
    old = {
        "epochs": 5,
        "metrics": {"epoch": 4, "weights": "ema", "valid_loss": 0.1, "valid_nsdr": 3.25},
    }
    info = TrainingInfo.from_json(old)
    assert (info.best_epoch, info.weights, info.valid_nsdr) == (4, "ema", 3.25)
    assert info.metrics == {"valid_loss": 0.1, "valid_nsdr": 3.25}
    assert TrainingInfo.from_json(info.to_json()) == info


def test_lineage_block_round_trips_and_is_validated() -> None:
    lineage = Lineage(
        base="htdemucs",
        base_sha256="ab" * 32,
        base_class="HTDemucs",
        base_sources=["drums", "bass", "other", "vocals"],
        stems_kept=["drums", "bass"],
        stems_added={"piano": "other", "guitar": None},
        stems_dropped=["other", "vocals"],
        frozen=["encoder.*"],
        lora_rank=8,
        dataset={"kind": "folder", "root": "/data/mine", "sources": ["drums", "bass"]},
        steps=1200,
    )
    info = TrainingInfo(epochs=3, lineage=lineage)
    assert TrainingInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert lineage.summary() == (
        "fine-tuned from htdemucs (sha256 abababab), +piano +guitar -other -vocals, LoRA rank 8"
    )
    for bad, words in (
        ({"base_sha256": "x"}, "lineage must be an object with a base"),
        ({"base": "h", "stems_added": {"piano": 3}}, "lineage.stems_added"),
        ({"base": "h", "frozen": "encoder.*"}, "lineage.frozen must be a list"),
        ({"base": "h", "steps": -1}, "lineage.steps must be a non-negative integer"),
        ({"base": "h", "lora_alpha": "8"}, "lineage.lora_alpha must be a number"),
    ):
        with pytest.raises(PackageFormatError, match=words):
            TrainingInfo.from_json({"lineage": bad}, "p")


def test_models_list_shows_the_exported_valid_nsdr(tmp_path, capsys) -> None:
    """train (1 epoch) -> export -> `models list --repo`: the recorded validation nSDR shows,
    labelled as such (it is not a MUSDB18 test SDR)."""
    from demucs_rr.cli import main
    from demucs_rr.data.synthetic import make_synthetic_dataset

    rate = 16000
    root = make_synthetic_dataset(
        tmp_path / "synth", {"train": 4, "valid": 2}, seconds=6.0, samplerate=rate
    )
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            main(
                [
                    "train",
                    "model=tiny",
                    "dset=synthetic",
                    f"dset.root={root}",
                    f"dset.samplerate={rate}",
                    "log.progress=false",
                    "epochs=1",
                    "--run-dir",
                    str(run_dir),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    assert main(["export", str(run_dir)]) == 0
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()

    assert main(["models", "list", "--repo", str(run_dir)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert "test SDR" in header and "valid nSDR" in header
    row = next(line.split() for line in lines if line.startswith("run "))
    assert row[:4] == ["run", "Demucs", "-", f"{record['valid/nsdr']:.2f}"]
    assert "best epoch 1" in " ".join(row)


_LOAD_PROBE = """
import sys
from demucs_rr.hub import load_model
model = load_model(sys.argv[1])
print(type(model).__name__, "sympy" in sys.modules)
"""


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["HTDemucs", "BSRoformer", "MelBandRoformer", "SCNet", "MDX23C"])
def test_loading_a_package_does_not_import_sympy(tmp_path: Path, arch: str) -> None:
    """The meta-device build sets no values: torch's meta path for value-setting calls imports
    its compiler stack (sympy, dynamo), about half a second of every process that loads a model."""
    import subprocess
    import sys

    from demucs_rr.hub import save_package
    from tests.helpers.models import SOURCES, tiny_band_split, tiny_htdemucs

    model = tiny_htdemucs() if arch == "HTDemucs" else tiny_band_split(arch, SOURCES)
    path = save_package(model, tmp_path / "m.safetensors")
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_PROBE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [type(model).__name__, "False"], run.stdout
