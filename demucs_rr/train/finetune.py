"""Fine-tuning: start a run from any model ``separate -n`` accepts.

``demucs-rr train init=NAME_OR_PATH ...``:

1. the initial model is resolved by the one loader (:func:`demucs_rr.hub.loader.resolve`); a
   bag needs ``init_member`` (index or signature);
2. the run's model section (class and constructor arguments) comes from it, and so do the
   defaults of ``dset.sources``, ``dset.samplerate``, ``dset.channels`` and, for a model trained
   on a fixed length (HT Demucs), ``segment``; a package exported here also passes on its
   training recipe (:data:`RECIPE_KEYS`); an override that would change the shape of a weight
   is refused, naming the key;
3. the resolved config records what ``init`` was (``base``: class, stems, member, sha256 of
   the weights), so the run folder says where it started;
4. the run's network gets the initial weights, its stems rearranged by name
   (:mod:`demucs_rr.train.stems`); the optimiser starts fresh, the EMA from these weights.

:func:`adapt_model` then applies ``freeze`` and ``lora`` (which plain runs may use as well).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from demucs_rr.errors import ConfigError, PackageFormatError, one_line
from demucs_rr.hub.training_info import Lineage
from demucs_rr.models.base import PackagedModel, StemDeclaring, as_module
from demucs_rr.models.registry import build_model, class_name_of
from demucs_rr.train.config import BaseRecord, TrainConfig, load_config, model_kwargs
from demucs_rr.train.lora import add_lora, merge_lora
from demucs_rr.train.stems import StemPlan, plan_stems, remap_state
from demucs_rr.train.trainable import counts, freeze

__all__ = [
    "InitialModel",
    "adapt_model",
    "initial_of",
    "lineage",
    "packaged_model",
    "load_initial",
    "load_run_config",
    "stem_plan",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

DATASET_KEYS = {"sources": "sources", "audio_channels": "channels", "samplerate": "samplerate"}
"""Constructor arguments that come from ``dset`` rather than ``model.kwargs``."""

RECIPE_KEYS = ("segment", "batch_size", "optim", "augment", "data")
"""Config sections a package exported here passes on to a run starting from it (the number of
epochs, the loss and the dataset are the new run's own)."""


def weights_sha256(model: PackagedModel) -> str:
    """sha256 of the model's state (names, dtypes, shapes, bytes) in hex; its first 16 digits
    are the model signature ``demucs-rr evaluate`` records."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class InitialModel:
    """The network a run starts from.

    Attributes:
        source: ``init`` as given.
        member: the signature of the chosen bag member, or None for a single model.
        model: the network (CPU, eval mode).
        sha256: :func:`weights_sha256` of ``model``.
        recipe: the :data:`RECIPE_KEYS` of the run that trained it (a package exported here);
            empty for other models.
    """

    source: str
    member: str | None
    model: PackagedModel
    sha256: str
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def arch(self) -> str:
        """Registry class name."""
        return class_name_of(self.model)

    def start(self) -> dict[str, Any]:
        """Config keys it sets, between the presets and the command line."""
        model = self.model
        kwargs = {k: v for k, v in model.init_kwargs.items() if k not in DATASET_KEYS}
        start: dict[str, Any] = {
            **self.recipe,
            "model": {"arch": self.arch, "kwargs": kwargs},
            "dset": {
                "sources": list(model.sources),
                "samplerate": int(model.samplerate),
                "channels": int(model.audio_channels),
            },
        }
        if model.max_segment_length is not None:  # trained on one length: keep it
            start["segment"] = model.max_segment_length / model.samplerate
        return start


def _pick_member(
    members: list[PackagedModel], signatures: list[str], member: str | None, source: str
) -> tuple[PackagedModel, str | None]:
    """The network of ``source`` to start from (one model, or the chosen bag member)."""
    listing = ", ".join(f"{i}: {sig}" for i, sig in enumerate(signatures))
    if len(members) == 1 and member in (None, "0", signatures[0]):
        return members[0], None
    if member is None:
        raise ConfigError(
            f"{source} is a bag of {len(members)} models ({listing}): pick the one to start "
            "from with init_member=INDEX or init_member=SIGNATURE"
        )
    if member.isdigit() and int(member) < len(members):
        index = int(member)
    elif member in signatures:
        index = signatures.index(member)
    else:
        raise ConfigError(f"init_member={member} is not a member of {source} ({listing})")
    return members[index], signatures[index]


def load_initial(source: str, member: str | None = None, repo: str | None = None) -> InitialModel:
    """Load the initial network of a fine-tuning run.

    Raises:
        ConfigError: a bag without ``member``, or an unknown member.
        ModelNotFoundError, DownloadError, PackageFormatError: ``source`` does not load.
    """
    from demucs_rr.hub.loader import resolve

    loaded = resolve(source, Path(repo).expanduser() if repo else None)
    model, signature = _pick_member(loaded.members, loaded.signatures, member, source)
    model = model.to("cpu").eval()
    recipe = _recipe_of(Path(source).expanduser()) if signature is None else {}
    return InitialModel(source, signature, model, weights_sha256(model), recipe)


def _recipe_of(path: Path) -> dict[str, Any]:
    """The :data:`RECIPE_KEYS` of the training block of the package at ``path``, if any."""
    from demucs_rr.hub.package import read_package_metadata, read_training_info

    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        info = read_training_info(read_package_metadata(path), str(path))
    except PackageFormatError:
        return {}
    config = info.config if info is not None else {}
    return {key: config[key] for key in RECIPE_KEYS if key in config}


def _command_line_values(overrides: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """The values of top-level ``keys`` set by ``overrides`` (parsed as OmegaConf does)."""
    picked = [o for o in overrides if o.partition("=")[0].strip() in keys]
    try:
        values = OmegaConf.to_container(OmegaConf.from_dotlist(picked))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse overrides {picked}: {one_line(exc)}") from None
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items()}


def load_run_config(
    overrides: Sequence[str], conf_dir: str | os.PathLike[str] | None = None
) -> tuple[TrainConfig, InitialModel | None]:
    """The config of a new run, and its initial model when ``init=`` is among ``overrides``.

    Raises:
        ConfigError: as :func:`~demucs_rr.train.config.load_config`; ``model=`` or
            ``model.arch=`` with ``init=``; an override that changes a weight's shape; a
            different sample rate; a ``base.sha256`` pin that does not match.
    """
    given = _command_line_values(overrides, ("init", "init_member", "init_repo"))
    if given.get("init") is None:
        return load_config(overrides, conf_dir), None
    keys = [o.partition("=")[0].strip() for o in overrides]
    if "model" in keys or "model.arch" in keys:
        raise ConfigError(
            f"init={given['init']} gives the model: drop model=/model.arch= (change single "
            "constructor arguments with model.kwargs.KEY=VALUE)"
        )
    member = given.get("init_member")
    initial = load_initial(
        str(given["init"]), None if member is None else str(member), given.get("init_repo")
    )
    config = load_config(overrides, conf_dir, start=initial.start())
    plan = plan_stems(initial.model.sources, config.dset.sources, config.init_new_from)
    _check_stems(initial, plan)
    check_overrides(config, initial, keys)
    return record_base(config, initial), initial


def _shapes(arch: str, kwargs: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    try:
        with torch.device("meta"):
            model = build_model(arch, kwargs)
    except (PackageFormatError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {arch} with these arguments: {one_line(exc)}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _first_change(a: dict[str, tuple[int, ...]], b: dict[str, tuple[int, ...]]) -> str | None:
    for name in sorted(a.keys() | b.keys()):
        if a.get(name) != b.get(name):
            return f"{name} from {a.get(name, 'absent')} to {b.get(name, 'absent')}"
    return None


def check_overrides(config: TrainConfig, initial: InitialModel, keys: Sequence[str]) -> None:
    """Refuse command-line keys that would change a weight's shape, or the sample rate.

    Raises:
        ConfigError: naming the key and the first weight it changes.
    """
    model = initial.model
    if config.dset.samplerate != model.samplerate:
        raise ConfigError(
            f"dset.samplerate={config.dset.samplerate} differs from the {model.samplerate} Hz "
            f"of the initial model {initial.source}: resample the stems instead"
        )
    reference = {**model.init_kwargs, "sources": list(config.dset.sources)}
    if reference.get("num_stems") is not None:  # MSST's repetition of the stem count
        reference["num_stems"] = len(config.dset.sources)
    channels_arg = "stereo" if "stereo" in reference else "audio_channels"
    shapes = _shapes(initial.arch, reference)
    final = model_kwargs(config)
    changed = _first_change(shapes, _shapes(config.model.arch, final))
    if changed is None:
        return
    for key in keys:
        name = key.removeprefix("model.kwargs.")
        if name == key and key != "dset.channels":
            continue
        arg = channels_arg if key == "dset.channels" else name
        one = _first_change(shapes, _shapes(initial.arch, {**reference, arg: final.get(arg)}))
        shown = config.dset.channels if key == "dset.channels" else final.get(arg)
        if one is not None:
            raise ConfigError(
                f"{key}={shown} changes the shape of {one} in the initial model "
                f"{initial.source}; a fine-tuning run keeps every weight's shape"
            )
    raise ConfigError(f"the overrides change the shape of {changed} in {initial.source}")


def record_base(config: TrainConfig, initial: InitialModel) -> TrainConfig:
    """``config`` with ``base`` filled in from ``initial``.

    Raises:
        ConfigError: ``base.sha256`` was given and is not a prefix of the initial weights'.
    """
    pinned = config.base.sha256
    if pinned and not initial.sha256.startswith(pinned.lower()):
        raise ConfigError(
            f"init={initial.source} has weights sha256 {initial.sha256[:16]}..., not the "
            f"base.sha256={pinned} this run asks for"
        )
    base = BaseRecord(initial.sha256, initial.arch, list(initial.model.sources), initial.member)
    return dataclasses.replace(config, base=base)


def initial_of(config: TrainConfig, loaded: InitialModel | None) -> InitialModel | None:
    """The initial model of a new run of ``config``: ``loaded``, or loaded now; None when the
    run does not fine-tune.

    Raises:
        ConfigError: ``config`` has ``init`` but was not resolved by :func:`load_run_config`
            (no ``base`` recorded), or the weights are no longer those recorded.
    """
    if config.init is None:
        return None
    if config.base.sha256 is None or config.base.arch != config.model.arch:
        raise ConfigError(
            "a config with init= must be resolved by demucs_rr.train.finetune.load_run_config "
            "(which takes the model section from the initial model)"
        )
    initial = loaded or load_initial(config.init, config.init_member, config.init_repo)
    record_base(config, initial)
    return initial


def stem_plan(config: TrainConfig) -> StemPlan:
    """How the stems of ``config.base`` become ``dset.sources``."""
    return plan_stems(config.base.sources, config.dset.sources, config.init_new_from)


def start_from(model: PackagedModel, initial: InitialModel, plan: StemPlan) -> None:
    """Load the initial weights into the run's ``model``, stems rearranged by ``plan``.

    Raises:
        ConfigError: the stems differ and the initial model does not declare its per-stem
            weights.
        PackageFormatError: the weights do not fit (one line listing the mismatches).
    """
    from demucs_rr.hub.safety import load_weights

    state = initial.model.state_dict()
    if not plan.identity:
        _check_stems(initial, plan)
        assert isinstance(initial.model, StemDeclaring)
        state = remap_state(state, initial.model.stem_layout(), plan, model.state_dict())
    load_weights(model, state, f"initial model {initial.source}")


def _check_stems(initial: InitialModel, plan: StemPlan) -> None:
    """Other stems need a model that declares its per-stem weights.

    Raises:
        ConfigError: the stems differ and ``initial`` declares nothing.
    """
    if not plan.identity and not isinstance(initial.model, StemDeclaring):
        raise ConfigError(
            f"{initial.arch} does not declare its per-stem weights: it can be fine-tuned on "
            f"its own stems only (dset.sources=[{','.join(plan.base)}])"
        )


def lineage(config: TrainConfig, steps: int) -> Lineage | None:
    """The lineage a fine-tuned run's package records (None when ``config`` has no init)."""
    if config.init is None:
        return None
    plan = stem_plan(config)
    dset = config.dset
    return Lineage(
        base=config.init,
        base_sha256=config.base.sha256 or "",
        base_class=config.base.arch or "",
        base_sources=list(config.base.sources),
        member=config.base.member,
        stems_kept=plan.kept,
        stems_added={stem: plan.new_from for stem in plan.added},
        stems_dropped=plan.dropped,
        frozen=list(config.freeze),
        lora_rank=config.lora.rank,
        lora_alpha=config.lora.alpha,
        dataset={"kind": dset.kind, "root": dset.root, "sources": list(dset.sources)},
        steps=steps,
    )


def packaged_model(
    config: TrainConfig, state: dict[str, torch.Tensor], origin: str
) -> PackagedModel:
    """The network of a run holding ``state`` (a checkpoint's weights), adapters merged.

    Raises:
        PackageFormatError: ``state`` does not fit the run's network.
    """
    from demucs_rr.hub.safety import load_weights
    from demucs_rr.train.state import make_model

    model = make_model(config)
    if config.lora.rank:
        add_lora(as_module(model), config.lora.rank, config.lora.alpha, config.seed)
    load_weights(model, state, origin)
    merge_lora(as_module(model))
    return model


def adapt_model(
    config: TrainConfig,
    model: PackagedModel,
    initial: InitialModel | None,
    echo: Callable[[str], None] | None = None,
) -> None:
    """Initial weights (when ``initial`` is given), then ``freeze`` and ``lora``, in place.

    Called on every process with the same arguments, so all hold the same network; a resumed
    run passes no ``initial`` (its weights come from the checkpoint).

    Raises:
        ConfigError: see :func:`start_from` and :func:`freeze`; nothing left to train.
    """
    say = echo or logger.info
    if initial is not None:
        plan = stem_plan(config)
        start_from(model, initial, plan)
        say(
            f"starting from {initial.source} (weights sha256 {initial.sha256[:16]}); "
            f"{plan.describe()}"
        )
    module = as_module(model)
    frozen = freeze(module, config.freeze)
    if config.lora.rank:
        layers = add_lora(module, config.lora.rank, config.lora.alpha, config.seed)
        say(f"LoRA rank {config.lora.rank} on {layers} linear and 1x1 convolution layers")
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError(f"nothing to train: freeze={list(config.freeze)} matches every weight")
    say(counts(module) + (f"; freeze matched {frozen} tensors" if config.freeze else ""))
