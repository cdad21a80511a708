"""Fine-tuning the band-split families (BS-RoFormer, Mel-Band RoFormer, SCNet, MDX23C): ``init=``
from a package of each, stems kept by name, reordered, added and dropped, then a short run and
its export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.package import read_package_metadata, read_training_info, save_package
from demucs_rr.models.registry import build_model
from demucs_rr.train.finetune import adapt_model, load_run_config
from demucs_rr.train.loop import fit
from demucs_rr.train.state import make_model
from tests.helpers.models import TINY_BAND_SPLIT
from tests.helpers.training import FIVE, RATE, finetune_overrides

FOUR = ["drums", "bass", "other", "vocals"]
TARGET = ["piano", "vocals", "drums"]  # reordered, bass and other dropped, piano added


@pytest.fixture(scope="module")
def five_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 train + 1 valid tracks of 4 s at 16 kHz with the fifth stem, piano."""
    root = tmp_path_factory.mktemp("synth_five_bs")
    return make_synthetic_dataset(
        root, {"train": 2, "valid": 1}, seconds=4.0, samplerate=RATE, sources=FIVE
    )


def _package(arch: str, folder: Path) -> Path:
    """A tiny 4-stem ``arch`` at 16 kHz (RoFormers with MSST's ``num_stems``), saved."""
    kwargs = {**TINY_BAND_SPLIT[arch], "sources": FOUR, "samplerate": RATE}
    if "stft_n_fft" in kwargs:
        kwargs["num_stems"] = len(FOUR)
    torch.manual_seed(0)
    model = build_model(arch, kwargs)
    path = folder / f"{arch.lower()}.safetensors"
    save_package(model, path, name=arch.lower())
    return path


@pytest.mark.parametrize("arch", sorted(TINY_BAND_SPLIT))
def test_band_split_finetuning_keeps_stems_by_name(
    one_thread: None, arch: str, five_synth: Path, tmp_path: Path
) -> None:
    """Before any step every stem of the run gives what its origin gave in the initial model
    (same weights, same per-stem computation: exact); one epoch then trains and exports a
    package with the run's stems and the lineage."""
    package = _package(arch, tmp_path)
    overrides = finetune_overrides(
        package,
        five_synth,
        f"dset.sources=[{','.join(TARGET)}]",
        "init_new_from=other",
        "batch_size=2",
        "epochs=1",
        "augment.remix_group_size=2",
    )
    config, initial = load_run_config(overrides)
    assert initial is not None
    model = make_model(config)
    lines: list[str] = []
    adapt_model(config, model, initial, lines.append)
    assert "stems kept: vocals, drums; added: piano (from other); dropped: bass, other" in lines[0]
    mix = 0.1 * torch.randn(1, 2, RATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = initial.model.eval()(mix), model.eval()(mix)  # type: ignore[operator]
    for j, stem in enumerate(TARGET):
        origin = FOUR.index(stem if stem in FOUR else "other")
        torch.testing.assert_close(after[:, j], before[:, origin], rtol=0, atol=0)

    from demucs_rr.cli import main

    history = fit(config, tmp_path / "run", initial=initial)
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in history)
    assert main(["export", str(tmp_path / "run"), "--last"]) == 0
    exported = tmp_path / "run" / "run.safetensors"
    network = load_model(exported)
    assert network.sources == TARGET
    if "num_stems" in network.init_kwargs:  # type: ignore[attr-defined]
        assert network.init_kwargs["num_stems"] == len(TARGET)  # type: ignore[attr-defined]
    info = read_training_info(read_package_metadata(exported))
    assert info is not None and info.lineage is not None
    assert (info.lineage.base_class, info.lineage.stems_dropped) == (arch, ["bass", "other"])


def test_a_roformer_keeps_its_channels(five_synth: Path, tmp_path: Path) -> None:
    """The RoFormers take ``stereo`` rather than a channel count: a mono override of a stereo
    model is refused naming the command-line key and its value."""
    from demucs_rr.errors import ConfigError

    package = _package("BSRoformer", tmp_path)
    with pytest.raises(ConfigError, match=r"^dset\.channels=1 changes the shape of band_split"):
        load_run_config(finetune_overrides(package, five_synth, "dset.channels=1"))
