"""``demucs-rr models bag``: models written as one bag package (the htdemucs_ft recipe), with
their weights, segment and training blocks; refusals in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.cli import main
from demucs_rr.hub.loader import list_models, load_model
from demucs_rr.hub.package import read_package_metadata, read_training_info, save_package
from demucs_rr.hub.training_info import Lineage, TrainingInfo
from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.demucs_v2 import Demucs

FOUR = ["drums", "bass", "other", "vocals"]


def _tiny(seed: int, sources: list[str] = FOUR) -> Demucs:
    torch.manual_seed(seed)
    return Demucs(sources, channels=4, depth=2, lstm_layers=0, resample=False, samplerate=8000)


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    """Four tiny models, one per stem; the first records a fine-tuning lineage."""
    lineage = Lineage(base="htdemucs", base_sha256="cd" * 32, stems_kept=FOUR, steps=10)
    paths = []
    for i, stem in enumerate(FOUR):
        training = TrainingInfo(epochs=1, lineage=lineage) if i == 0 else None
        paths.append(save_package(_tiny(i), tmp_path / f"ft_{stem}.safetensors", training=training))
    return paths


def test_one_model_per_stem_makes_the_bag(
    members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ft.safetensors"
    argv = ["models", "bag", str(out), *map(str, members), "--weights", "identity"]
    assert main([*argv, "--segment", "0.5"]) == 0
    assert f"wrote {out} (bag of 4 models" in capsys.readouterr().out
    bag = load_model(out)
    assert isinstance(bag, BagOfModels) and bag.segment == 0.5
    assert [w for _, w in bag.weighted_members()] == [
        [1.0 if i == j else 0.0 for j in range(4)] for i in range(4)
    ]
    mix = 0.1 * torch.randn(1, 2, 4000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = bag(mix)
        for s, path in enumerate(members):  # stem s is member s's stem s, exactly
            assert torch.equal(together[:, s], load_model(path)(mix)[:, s])
    meta = read_package_metadata(out)
    assert meta["signatures"] == [f"ft_{stem}" for stem in FOUR]
    first = read_training_info(meta["members"][0])
    assert first is not None and first.lineage is not None and first.lineage.base == "htdemucs"
    assert "training" not in meta["members"][1]
    row = next(r for r in list_models(tmp_path) if r["name"] == "ft")
    assert row["description"].endswith("members fine-tuned from htdemucs (sha256 cdcdcdcd)")


def test_explicit_weights_and_default(members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "mean.safetensors"
    assert main(["models", "bag", str(out), str(members[0]), str(members[1])]) == 0
    assert [w for _, w in load_model(out).weighted_members()] == [[1.0] * 4] * 2
    weights = ["1,0,0.5,0", "0,1,0.5,1"]
    assert main(["models", "bag", str(out), *map(str, members[:2]), "--weights", *weights]) == 0
    assert load_model(out).weighted_members()[1][1] == [0.0, 1.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--weights", "identity"], "--weights identity needs one member per stem"),
        (["--weights", "1,0,0,0"], "--weights needs one list per member (2), got 1"),
        (["--weights", "1,0,0,0", "1,0,0"], "need 4 non-negative values"),
        (["--weights", "1,0,0,0", "x"], "is not a comma-separated list of numbers"),
        (["--weights", "1,1,1,0", "1,0,0,0"], "source 'vocals' must have a positive sum"),
        (["--segment", "-1"], "--segment must be > 0"),
    ],
)
def test_bad_weights_are_refused(
    members: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    words: str,
) -> None:
    out = tmp_path / "bad.safetensors"
    assert main(["models", "bag", str(out), *map(str, members[:2]), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not out.exists()


def test_members_must_be_single_and_agree(
    members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag = tmp_path / "bag.safetensors"
    assert main(["models", "bag", str(bag), *map(str, members[:2])]) == 0
    assert main(["models", "bag", str(tmp_path / "x.safetensors"), str(bag), str(members[0])]) == 2
    assert "is a bag of 2 models: a member of a bag must be one model" in capsys.readouterr().err
    other = save_package(_tiny(9, ["piano", "guitar"]), tmp_path / "two.safetensors")
    assert (
        main(["models", "bag", str(tmp_path / "y.safetensors"), str(members[0]), str(other)]) == 2
    )
    assert "has stems piano, guitar, none of the first member's" in capsys.readouterr().err
    assert main(["models", "bag", str(tmp_path / "z.pt"), str(members[0])]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err


def test_member_training_blocks_are_validated(members: list[Path], tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file, save_file

    from demucs_rr.errors import PackageFormatError

    out = tmp_path / "ft.safetensors"
    assert main(["models", "bag", str(out), *map(str, members[:2])]) == 0
    meta = read_package_metadata(out)
    meta["members"][0]["training"]["lineage"]["steps"] = "many"
    save_file(load_file(str(out)), str(out), metadata={"demucs_rr": json.dumps(meta)})
    with pytest.raises(PackageFormatError, match=r"\(member 0\).*lineage.steps"):
        read_package_metadata(out)
