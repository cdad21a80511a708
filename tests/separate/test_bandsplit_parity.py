"""MSST's ``demix`` outputs (``demix.npz``) through the Separator, in memory and file to file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import WriteOptions
from demucs_rr.hub.msst import load_msst
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.api import Separator
from demucs_rr.separate.outputs import select_stems
from tests.conftest import SHARED
from tests.helpers.checks import assert_matches

MSST = SHARED / "fixtures" / "msst"
CASES = ["bs_roformer_4stem", "bs_roformer_vocals", "mel_band_roformer_4stem",
         "mel_band_roformer_vocals", "scnet_4stem", "mdx23c_4stem"]  # fmt: skip
FLOAT = WriteOptions(format="wav", encoding="float32", clip_mode="none")


@pytest.fixture(scope="module")
def msst_fixtures() -> Path:
    """Folder of the MSST parity fixtures; skips when ../shared is absent (user's clone)."""
    if not MSST.is_dir():
        pytest.skip(f"MSST parity fixtures not found at {MSST} (present in CI only)")
    return MSST


def _model(case_dir: Path) -> SeparationModel:
    return load_msst(case_dir / "model.ckpt", case_dir / "config.yaml").build()


def _expected(data: np.lib.npyio.NpzFile, sources: list[str]) -> dict[str, np.ndarray]:
    """Reference outputs by our names: MSST's ``instrumental`` is ``no_TARGET``."""
    out = {name: data[name] for name in sources}
    if len(sources) == 1:
        out[f"no_{sources[0]}"] = data["instrumental"]
    return out


@pytest.mark.parametrize("case", CASES)
def test_demix_in_memory_and_to_files(
    msst_fixtures: Path, case: str, tmp_path: Path, one_thread: None
) -> None:
    case_dir = msst_fixtures / case
    model = _model(case_dir)
    data = np.load(case_dir / "demix.npz")
    expected = _expected(data, model.sources)
    names = select_stems(model.sources, None, None, "add")
    assert names == list(expected)  # a single-target model writes TARGET and no_TARGET

    sep = Separator(model, device="cpu")
    stems = sep.separate_tensor(torch.from_numpy(data["mix"]))
    for name in model.sources:
        assert_matches(stems[name].numpy(), expected[name], f"{case} {name} in memory")
    if len(model.sources) == 1:
        rest = data["mix"] - stems[model.sources[0]].numpy()
        assert_matches(rest, data["instrumental"], f"{case} instrumental in memory")

    mix_path = tmp_path / "mix.wav"
    soundfile.write(mix_path, data["mix"].T, model.samplerate, subtype="FLOAT")
    targets = {name: tmp_path / f"{name}.wav" for name in names}
    sep.separate_file_to(mix_path, targets, FLOAT)
    for name, path in targets.items():
        wav, rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert rate == model.samplerate
        assert_matches(wav.T, expected[name], f"{case} {name} file")


def test_batches_give_the_same_result(msst_fixtures: Path, one_thread: None) -> None:
    case_dir = msst_fixtures / "bs_roformer_4stem"
    model = _model(case_dir)
    data = np.load(case_dir / "demix.npz")
    stems = Separator(model, device="cpu", batch_size=3).separate_tensor(
        torch.from_numpy(data["mix"])
    )
    for name in model.sources:
        assert_matches(stems[name].numpy(), data[name], f"batch 3 {name}")
