"""Fine-tuning: ``init=`` from any loadable model, stems changed by name, refusals in one line,
bags and their members, freeze, LoRA merged at export, lineage, bit-exact resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.errors import ConfigError
from demucs_rr.hub.bag_package import save_bag_package
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.package import read_package_metadata, read_training_info, save_package
from demucs_rr.models.base import PackagedModel
from demucs_rr.train.checkpoint import load_checkpoint
from demucs_rr.train.config import BaseRecord, config_to_dict, load_config
from demucs_rr.train.finetune import adapt_model, load_run_config, weights_sha256
from demucs_rr.train.loop import fit
from demucs_rr.train.lora import add_lora
from demucs_rr.train.state import make_model
from tests.helpers.training import FIVE, RATE, finetune_overrides, tiny_overrides

FOUR = ["drums", "bass", "other", "vocals"]
ADD_PIANO = (f"dset.sources=[{','.join(FIVE)}]", "init_new_from=other")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_package(small_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-stem model trained 2 epochs on the small synthetic set, exported."""
    from demucs_rr.cli import main

    folder = tmp_path_factory.mktemp("base")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(load_config(tiny_overrides(small_synth, "epochs=2", "valid.max_seconds=2")), folder)
    finally:
        torch.set_num_threads(threads)
    out = folder / "base.safetensors"
    assert main(["export", str(folder), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def five_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic set with a fifth stem, piano."""
    root = tmp_path_factory.mktemp("synth_five")
    return make_synthetic_dataset(
        root, {"train": 4, "valid": 2}, seconds=6.0, samplerate=RATE, sources=FIVE
    )


def _kwargs(model: PackagedModel) -> dict[str, object]:
    dataset = ("sources", "audio_channels", "samplerate")
    return {k: v for k, v in model.init_kwargs.items() if k not in dataset}


# --------------------------------------------------------------------------- the config


def test_the_run_config_comes_from_the_initial_model(base_package: Path, five_synth: Path) -> None:
    from demucs_rr.evaluate.results import model_signature

    base = load_model(base_package)
    overrides = finetune_overrides(base_package, five_synth, *ADD_PIANO, "model.kwargs.rescale=0.2")
    config, initial = load_run_config(overrides)
    assert initial is not None and initial.member is None
    assert config.model.arch == "Demucs"
    assert config.model.kwargs == {**_kwargs(base), "rescale": 0.2}  # no shape changes
    assert (config.dset.samplerate, config.dset.channels, config.dset.sources) == (RATE, 2, FIVE)
    sha = weights_sha256(base)
    assert config.base == BaseRecord(sha, "Demucs", FOUR, None)
    assert model_signature(base) == sha[:16]  # the signature evaluate records
    assert load_config(base=config_to_dict(config)) == config  # the run folder's config
    defaults, _ = load_run_config(finetune_overrides(base_package, five_synth))
    assert defaults.dset.sources == FOUR  # the initial model's stems unless told otherwise
    pinned, _ = load_run_config([*overrides, f"base.sha256={sha[:12]}"])
    assert pinned.base.sha256 == sha


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("model=tiny", "gives the model: drop model="),
        ("model.kwargs.channels=16", "model.kwargs.channels=16 changes the shape of decoder.0"),
        ("model.kwargs.depth=3", "model.kwargs.depth=3 changes the shape of"),
        ("dset.channels=1", "dset.channels=1 changes the shape of decoder.3.2.bias"),
        ("dset.samplerate=22050", "differs from the 16000 Hz of the initial model"),
        ("base.sha256=00ff", "not the base.sha256=00ff this run asks for"),
        ("init_new_from=guitar", "init_new_from='guitar' is not a stem of the initial model"),
        ("init_member=1", "init_member=1 is not a member of"),
    ],
)
def test_refusals_are_one_line(
    base_package: Path, five_synth: Path, extra: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as info:
        load_run_config([*finetune_overrides(base_package, five_synth, *ADD_PIANO), extra])
    assert "\n" not in str(info.value)


def test_bags_need_a_member(base_package: Path, five_synth: Path, tmp_path: Path) -> None:
    first = load_model(base_package)
    second = load_model(base_package)
    with torch.no_grad():
        for param in second.parameters():  # type: ignore[union-attr]
            param.add_(0.01)
    bag = tmp_path / "pair.safetensors"
    save_bag_package(LoadedModel("pair", [first, second], ["first", "second"]), bag)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"is a bag of 2 models \(0: first, 1: second\): pick"):
        load_run_config(finetune_overrides(bag, five_synth))
    for member in ("second", "1"):
        config, _ = load_run_config(finetune_overrides(bag, five_synth, f"init_member={member}"))
        assert config.base.member == "second"
        assert config.base.sha256 == weights_sha256(second)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="init_member=7 is not a member of"):
        load_run_config(finetune_overrides(bag, five_synth, "init_member=7"))


def test_other_stems_need_a_declaration(five_synth: Path, tmp_path: Path) -> None:
    from demucs_rr.models.testing import FractionModel

    package = save_package(
        FractionModel(FOUR, [0.25] * 4, samplerate=RATE), tmp_path / "fractions.safetensors"
    )
    same, _ = load_run_config(finetune_overrides(package, five_synth))
    assert same.model.arch == "FractionModel"
    with pytest.raises(ConfigError, match="does not declare its per-stem weights"):
        load_run_config(finetune_overrides(package, five_synth, *ADD_PIANO))


def test_init_accepts_what_separate_accepts(
    official_fixtures: Path, five_synth: Path, tmp_path: Path
) -> None:
    """Official pickled packages (v2, v3, v4), an official bag YAML (with a member) and a
    released name whose member file comes from init_repo: the class, the stems, the rate and
    HT Demucs's training length come from the file; new stems start from init_new_from."""
    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from tests.helpers.models import tiny_htdemucs

    repo = tmp_path / "repo"
    repo.mkdir()
    (sig,) = OFFICIAL_BAGS["htdemucs"].spec.models
    save_package(tiny_htdemucs(seed=3), repo / f"{sig}.safetensors")
    cases = [
        ("v4_htdemucs/package.th", (), "HTDemucs", 0.39, None),
        ("v3_demucs/package.th", (), "DemucsV3", 10.0, None),
        ("v2_demucs/package.th", (), "Demucs", 10.0, None),
        ("bag/tinybag_a.yaml", ("init_member=1",), "HDemucs", 10.0, "ec76c682"),
        ("htdemucs", (f"init_repo={repo}",), "HTDemucs", 1.0, None),
    ]
    for init, extra, arch, segment, member in cases:
        path = init if "/" not in init else official_fixtures / init
        overrides = [f"init={path}", "dset=synthetic", f"dset.root={five_synth}", *extra]
        config, initial = load_run_config([*overrides, "dset.samplerate=44100", *ADD_PIANO])
        assert initial is not None
        assert (config.model.arch, config.segment, config.base.member) == (arch, segment, member)
        assert (config.dset.samplerate, config.base.sources) == (44100, FOUR)
        if arch != "HTDemucs":
            continue
        model = make_model(config)
        adapt_model(config, model, initial)
        mix = 0.1 * torch.randn(1, 2, int(segment * 44100))
        with torch.no_grad():
            before, after = initial.model.eval()(mix), model.eval()(mix)
        scale = float(before.abs().max())
        assert float((after[:, :4] - before).abs().max()) <= 1e-5 * scale
        assert float((after[:, 4] - before[:, 2]).abs().max()) <= 1e-5 * scale


# --------------------------------------------------------------------------- the network


def test_the_run_starts_from_the_initial_weights(base_package: Path, five_synth: Path) -> None:
    """Stems reordered and added, encoder frozen, LoRA: before any step, every stem gives what
    its origin gave in the initial model (the adapters start at zero)."""
    target = ["piano", "vocals", "drums", "bass", "other"]
    config, initial = load_run_config(
        finetune_overrides(
            base_package,
            five_synth,
            f"dset.sources=[{','.join(target)}]",
            "init_new_from=other",
            "freeze=[encoder.*]",
            "lora.rank=2",
        )
    )
    assert initial is not None
    model = make_model(config)
    lines: list[str] = []
    adapt_model(config, model, initial, lines.append)
    mix = 0.1 * torch.randn(1, 2, RATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = initial.model.eval()(mix), model.eval()(mix)
    for j, stem in enumerate(target):
        origin = FOUR.index(stem if stem in FOUR else "other")
        torch.testing.assert_close(after[:, j], before[:, origin], rtol=0, atol=1e-6)
    assert lines[0].startswith(f"starting from {base_package} (weights sha256 ")
    assert "stems kept: vocals, drums, bass, other; added: piano (from other)" in lines[0]
    assert lines[1] == "LoRA rank 2 on 5 linear and 1x1 convolution layers"
    params = dict(model.named_parameters())  # type: ignore[attr-defined]
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    adapters = sum(p.numel() for n, p in params.items() if ".lora_" in n)
    assert frozen == sum(  # the encoder by freeze, every adapted weight by LoRA
        p.numel()
        for n, p in params.items()
        if (n.startswith("encoder.") and ".lora_" not in n) or n.endswith(".original")
    )
    assert lines[2] == (
        f"parameters: {trainable:,} trainable in "
        f"{sum(1 for p in params.values() if p.requires_grad)} tensors, {frozen:,} frozen "
        f"({adapters:,} of the trainable ones in LoRA adapters); freeze matched 16 tensors"
    )


def test_freeze_patterns_are_checked(base_package: Path, five_synth: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot parse overrides.*quote values that start"):
        load_run_config(finetune_overrides(base_package, five_synth, "freeze=[*]"))
    for pattern, words in (("encodr.*", "matches no parameter of Demucs"), ("'*'", "nothing")):
        config, initial = load_run_config(
            finetune_overrides(base_package, five_synth, f"freeze=[{pattern}]")
        )
        with pytest.raises(ConfigError, match=words):
            adapt_model(config, make_model(config), initial)


def test_lora_merge_computes_what_the_adapters_compute() -> None:
    """Adapters on every linear and 1x1 convolution of a tiny HT Demucs (the attention's output
    projection included, which nn.MultiheadAttention reads without calling it); the merged
    network equals the adapted one: the merged weight is the very tensor the adapted layer
    computes, so the outputs are identical, not just close."""
    from demucs_rr.train.lora import adapter_count, lora_targets, merge_lora
    from tests.helpers.models import tiny_htdemucs

    model = tiny_htdemucs(seed=0).eval()
    mix = 0.1 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(mix)
    targets = lora_targets(model)
    assert any(t.endswith("self_attn.out_proj") for t in targets)
    assert add_lora(model, rank=2, alpha=4.0, seed=0) == len(targets)
    assert adapter_count(model) > 0
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_b"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        adapted = model(mix)
    assert float((adapted - plain).abs().max()) > 1e-3  # the adapters do act
    assert merge_lora(model) == len(targets)
    assert not any("parametrizations" in k for k in model.state_dict())
    with torch.no_grad():
        merged = model(mix)
    assert torch.equal(merged, adapted)


# --------------------------------------------------------------------------- runs


def _finetune(base_package: Path, five_synth: Path, *extra: str) -> list[str]:
    return finetune_overrides(
        base_package,
        five_synth,
        *ADD_PIANO,
        "freeze=[encoder.0.*]",
        "lora.rank=2",
        "optim.ema_decay=0.9",
        *extra,
    )


def test_resume_of_a_finetuning_run_is_bit_identical(
    base_package: Path, five_synth: Path, tmp_path: Path
) -> None:
    config, initial = load_run_config(_finetune(base_package, five_synth, "epochs=2"))
    straight = fit(config, tmp_path / "straight", initial=initial)
    fit(config, tmp_path / "resumed", stop_after=1, initial=initial)
    resumed = fit(config, tmp_path / "resumed", resume=True)  # the checkpoint, not init
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.th")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.th")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["state"][k], b["ema"]["state"][k]) for k in a["model"])
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    assert [r["train/loss"] for r in straight] == [r["train/loss"] for r in resumed]


def test_export_merges_adapters_and_records_the_lineage(
    base_package: Path, five_synth: Path, tmp_path: Path
) -> None:
    from demucs_rr.cli import main
    from demucs_rr.hub.loader import list_models

    config, initial = load_run_config(_finetune(base_package, five_synth, "epochs=1"))
    run = tmp_path / "ft"
    fit(config, run, initial=initial)
    saved = load_checkpoint(run / "checkpoint.th")
    base = load_model(base_package).state_dict()
    frozen = [k for k in saved["model"] if k.startswith("encoder.0.") and "lora" not in k]
    for key in frozen:  # frozen weights did not move
        assert torch.equal(
            saved["model"][key], base[key.replace(".parametrizations.weight.original", ".weight")]
        )
    assert not torch.equal(saved["model"]["lstm.lstm.weight_hh_l0"], base["lstm.lstm.weight_hh_l0"])

    assert main(["export", str(run), "--last"]) == 0
    package = run / "ft.safetensors"
    exported = load_model(package)
    assert not any("parametrizations" in k for k in exported.state_dict())
    adapted = make_model(config)
    add_lora(adapted, config.lora.rank, config.lora.alpha, config.seed)  # type: ignore[arg-type]
    adapted.load_state_dict(saved["model"])
    mix = 0.1 * torch.randn(1, 2, RATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(mix), adapted.eval()(mix))

    info = read_training_info(read_package_metadata(package))
    assert info is not None and info.lineage is not None
    lineage = info.lineage
    assert (lineage.base, lineage.base_sha256) == (str(base_package), config.base.sha256)
    assert (lineage.base_class, lineage.base_sources, lineage.member) == ("Demucs", FOUR, None)
    assert (lineage.stems_kept, lineage.stems_added, lineage.stems_dropped) == (
        FOUR,
        {"piano": "other"},
        [],
    )
    assert (lineage.frozen, lineage.lora_rank, lineage.steps) == (["encoder.0.*"], 2, 2)
    assert lineage.dataset == {"kind": "synthetic", "root": str(five_synth), "sources": FIVE}
    row = next(r for r in list_models(run) if r["name"] == "ft")
    assert row["description"].endswith(
        f"fine-tuned from base.safetensors (sha256 {config.base.sha256[:8]}), +piano, LoRA rank 2"
    )


def test_the_optimiser_starts_fresh_and_the_ema_from_the_initial_weights(
    base_package: Path, five_synth: Path
) -> None:
    from demucs_rr.distributed import Group
    from demucs_rr.train.state import build_state

    config, initial = load_run_config(
        finetune_overrides(base_package, five_synth, *ADD_PIANO, "optim.ema_decay=0.9")
    )
    model = make_model(config)
    adapt_model(config, model, initial)
    state = build_state(config, model, Group(), steps_per_epoch=2)
    assert state.ema is not None and not state.optimizer.state
    base = load_model(base_package).state_dict()
    for key, value in state.ema.state.items():
        if key.startswith("decoder.3.2."):  # the per-stem output layer: piano from other
            continue
        assert torch.equal(value, base[key]), key
    assert torch.equal(state.ema.state["decoder.3.2.bias"], model.state_dict()["decoder.3.2.bias"])


def test_a_package_trained_here_passes_on_its_recipe(base_package: Path, five_synth: Path) -> None:
    """segment, batch, optimiser, augmentations and data settings of the run that made the
    package; epochs, loss and dataset are the new run's; the command line wins. An official
    package has no recipe: the defaults apply."""
    plain = [f"init={base_package}", "dset=synthetic", f"dset.root={five_synth}"]
    config, initial = load_run_config(plain)
    assert initial is not None and set(initial.recipe) == {
        "segment", "batch_size", "optim", "augment", "data"
    }  # fmt: skip
    assert (config.segment, config.batch_size, config.optim.lr) == (1.0, 8, 3e-3)
    assert (config.data.workers, config.data.repitch, config.augment.shift) == (0, 0.0, 0.25)
    assert config.epochs == load_config(["dset.root=/data"]).epochs
    config, _ = load_run_config([*plain, "batch_size=4", "optim.lr=1e-4"])
    assert (config.batch_size, config.optim.lr, config.segment) == (4, 1e-4, 1.0)
