"""Per-stem weights: every family declares exactly the weights whose shape depends on the
number of stems, and the declared blocks are the stems' outputs (rearranging them rearranges
the model's outputs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from demucs_rr.models.base import PackagedModel, StemDeclaring, StemLayout
from demucs_rr.models.demucs_v2 import Demucs
from demucs_rr.models.demucs_v3 import DemucsV3
from demucs_rr.models.hdemucs import HDemucs
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.train.stems import plan_stems, remap_state
from tests.helpers.models import TINY_BAND_SPLIT, TINY_HT, tiny_band_split

Factory = Callable[[list[str]], PackagedModel]

FAMILIES: dict[str, Factory] = {
    "demucs_v2": lambda s: Demucs(s, channels=4, depth=2, lstm_layers=1, resample=False),
    "demucs_v2_plain": lambda s: Demucs(s, channels=4, depth=2, rewrite=False, glu=False),
    "demucs_v3": lambda s: DemucsV3(s, channels=4, depth=2, segment=1.0),
    "tasnet": lambda s: ConvTasNet(s, N=8, L=8, B=4, H=6, X=2, R=1),
    "hdemucs": lambda s: HDemucs(s, channels=4),
    "hdemucs_magnitude": lambda s: HDemucs(s, channels=4, cac=False),
    "hdemucs_bands": lambda s: HDemucs(s, channels=4, multi_freqs=[0.25, 0.5], norm_starts=999),
    "hdemucs_spectrogram_only": lambda s: HDemucs(s, channels=4, hybrid=False),
    "htdemucs": lambda s: HTDemucs(**{**TINY_HT, "sources": s}),
    **{
        arch: (lambda s, arch=arch: tiny_band_split(arch, s))  # type: ignore[misc]
        for arch in TINY_BAND_SPLIT
    },
}

FOUR = ["drums", "bass", "other", "vocals"]


def _on_meta(factory: Factory, sources: list[str]) -> PackagedModel:
    with torch.device("meta"):
        return factory(sources)


def _template(layout: StemLayout, name: str) -> str:
    """``name`` with the stem index of a per-stem module list replaced by ``*``."""
    stem = layout.stem_of(name)
    if stem is None:
        return name
    prefix = next(p for p in layout.modules if name.startswith(f"{p}.{stem}."))
    return f"{prefix}.*." + name[len(f"{prefix}.{stem}.") :]


@pytest.mark.parametrize("family", FAMILIES)
def test_declared_weights_are_those_that_depend_on_the_stems(family: str) -> None:
    """Built with 1, 4 and 5 stems: a declared block weight has ``S * block`` rows along its
    dim and is otherwise the same; a declared module list has one entry per stem, each of the
    same shapes; every undeclared weight has the same shape whatever S is."""
    reference = _on_meta(FAMILIES[family], FOUR)
    assert isinstance(reference, StemDeclaring)
    layout = reference.stem_layout()
    assert layout.blocks or layout.modules
    shapes = {_template(layout, k): tuple(v.shape) for k, v in reference.state_dict().items()}
    for count in (1, 4, 5):
        model = _on_meta(FAMILIES[family], [f"s{i}" for i in range(count)])
        assert isinstance(model, StemDeclaring)
        declared = model.stem_layout()
        assert {k: b for k, (_, b) in declared.blocks.items()} == {
            k: b for k, (_, b) in layout.blocks.items()
        }
        assert declared.modules == layout.modules
        seen: dict[str, set[int]] = {}
        for name, value in model.state_dict().items():
            key = _template(declared, name)
            expected = list(shapes[key])
            if name in layout.blocks:
                dim, block = layout.blocks[name]
                expected[dim] = count * block
            stem = declared.stem_of(name)
            seen.setdefault(key, set()).add(-1 if stem is None else stem)
            assert tuple(value.shape) == tuple(expected), (name, count)
        assert set(seen) == set(shapes), count
        for key, stems in seen.items():
            assert stems == ({-1} if "*" not in key else set(range(count))), (key, count)


def _outputs(model: PackagedModel, mix: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(mix)


@pytest.mark.parametrize("family", FAMILIES)
def test_rearranged_blocks_rearrange_the_outputs(one_thread: None, family: str) -> None:
    """Stems kept by name, reordered, added from another stem, dropped: the new model's stem
    outputs are the old model's outputs of the stems they come from.

    Tolerance: the same products and sums, but a convolution with another number of output
    channels may pick another kernel (blocking, summation order), hence a few float32 ulps of
    the accumulated values: 1e-5 of the largest output (measured: 0.0 for every family with
    torch 2.13 on one x86-64 thread)."""
    factory = FAMILIES[family]
    torch.manual_seed(0)
    old = factory(FOUR)
    target = ["vocals", "bass", "piano"]  # reordered, drums and other dropped, piano added
    plan = plan_stems(FOUR, target, new_from="drums")
    torch.manual_seed(1)
    new = factory(target)
    assert isinstance(old, StemDeclaring)
    state = remap_state(old.state_dict(), old.stem_layout(), plan, new.state_dict())
    new.load_state_dict(state, strict=True)
    mix = 0.1 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(2))
    before, after = _outputs(old, mix), _outputs(new, mix)
    assert after.shape[1] == 3
    scale = float(before.abs().max())
    for j, origin in enumerate([3, 1, 0]):
        err = float((after[:, j] - before[:, origin]).abs().max())
        assert err <= 1e-5 * scale, (target[j], err, scale)


class PerStemHeads(torch.nn.Module):
    """A network with one head module per stem (the band-split mask estimators' pattern) and
    a shared trunk: (B, C, T) -> (B, S, C, T)."""

    def __init__(self, sources: list[str]) -> None:
        super().__init__()
        self.sources = list(sources)
        self.trunk = torch.nn.Conv1d(2, 4, 1)
        self.heads = torch.nn.ModuleList(torch.nn.Conv1d(4, 2, 1) for _ in sources)

    def stem_layout(self) -> StemLayout:
        return StemLayout(modules=("heads",))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.trunk(mix))
        return torch.stack([head(hidden) for head in self.heads], dim=1)


def test_per_stem_module_lists_follow_their_stems() -> None:
    """Module lists: kept stems keep their head, a new stem copies init_new_from's head or,
    without it, keeps the new network's own initialisation."""
    torch.manual_seed(0)
    old = PerStemHeads(FOUR)
    layout = old.stem_layout()
    assert layout.stem_of("heads.3.weight") == 3 and layout.stem_of("trunk.weight") is None
    for new_from, expect_piano in (("bass", 1), (None, None)):
        torch.manual_seed(5)
        new = PerStemHeads(["other", "piano"])
        fresh = {k: v.clone() for k, v in new.state_dict().items()}
        plan = plan_stems(FOUR, ["other", "piano"], new_from)
        new.load_state_dict(remap_state(old.state_dict(), layout, plan, fresh), strict=True)
        mix = torch.randn(1, 2, 50)
        before, after = old(mix), new(mix)
        torch.testing.assert_close(after[:, 0], before[:, 2], rtol=0, atol=0)
        if expect_piano is None:
            assert torch.equal(new.heads[1].weight, fresh["heads.1.weight"])
        else:
            torch.testing.assert_close(after[:, 1], before[:, expect_piano], rtol=0, atol=0)


def test_remap_refuses_unknown_origin_and_wrong_blocks() -> None:
    from demucs_rr.errors import ConfigError

    with pytest.raises(ConfigError, match="init_new_from='guitar' is not a stem"):
        plan_stems(FOUR, ["piano"], "guitar")
    model: Any = FAMILIES["tasnet"](FOUR)
    wrong = StemLayout({"separator.network.3.weight": (0, 7)})
    with pytest.raises(ConfigError, match="are not 4 stem blocks of 7"):
        remap_state(model.state_dict(), wrong, plan_stems(FOUR, FOUR[:2], None), {})
