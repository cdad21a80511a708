"""Training configuration: ``conf/`` YAML + ``key=value`` overrides -> frozen dataclasses.

The YAML tree is merged into a structured OmegaConf schema built from the dataclasses of
:mod:`demucs_rr.train.schema`, so an unknown key (in a file or on the command line) or a value
of the wrong type is a one-line :class:`~demucs_rr.errors.ConfigError` before anything runs.
Composition, in order:

1. ``conf/config.yaml`` (its ``defaults`` block names the model and dataset presets);
2. ``conf/model/<model>.yaml`` under ``model`` and ``conf/dset/<dset>.yaml`` under ``dset``;
   a preset's optional ``recipe:`` block sets top-level keys (e.g. Conv-TasNet's batch of 32);
3. command-line overrides: ``model=NAME`` / ``dset=NAME`` pick presets, ``a.b=value`` sets keys.

A fine-tuning run (``init=NAME_OR_PATH``) gets its model section, and the defaults of its
dataset's stems, rate and channels, from the initial model (:mod:`demucs_rr.train.finetune`
passes them as ``start``, between 2 and 3).

Only the CLI and :mod:`demucs_rr.train` use this module; models and data get plain values.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from demucs_rr.errors import ConfigError, one_line
from demucs_rr.runtime import check_device
from demucs_rr.train.schema import BaseRecord, TrainConfig

__all__ = [
    "GROUPS",
    "BaseRecord",
    "TrainConfig",
    "config_to_dict",
    "config_to_yaml",
    "default_conf_dir",
    "load_config",
    "model_kwargs",
    "segment_samples",
]

GROUPS = ("model", "dset")
"""Config groups whose value on the command line (``model=tiny``) selects a preset file."""


def default_conf_dir() -> Path:
    """``$DEMUCS_RR_CONF`` if set, else the checkout's ``conf/``, else the installed copy."""
    env = os.environ.get("DEMUCS_RR_CONF")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parents[1] / "conf"


def _one_line(exc: OmegaConfBaseException, where: str) -> str:
    first = one_line(exc, limit=500)
    key = getattr(exc, "full_key", None)
    if isinstance(exc, ConfigKeyError) and key:
        hint = re.search(r"Did you mean: '[^']*'\?", first)
        return f"unknown config key {key!r} in {where}" + (f" ({hint.group(0)})" if hint else "")
    return f"bad config value{f' for {key!r}' if key else ''} in {where}: {first}"


def _merge(cfg: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, where)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return {str(k): v for k, v in data.items()}


def _preset(conf_dir: Path, group: str, name: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(group body, recipe of top-level keys, path) of preset ``name`` of ``group``."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} preset {name!r}; known: {', '.join(known) or 'none'}")
    body = _read_yaml(path)
    recipe = body.pop("recipe", None) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: `recipe` must be a mapping of top-level keys")
    return body, recipe, path


def _split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate group selections (``model=tiny``) from dotted key overrides."""
    groups: dict[str, str] = {}
    dotted: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config override {item!r} is not of the form key=value")
        if key.strip() in GROUPS:
            groups[key.strip()] = value.strip()
        else:
            dotted.append(item)
    return groups, dotted


def _schema() -> DictConfig:
    cfg = cast(DictConfig, OmegaConf.structured(TrainConfig))
    OmegaConf.set_readonly(cfg, False)
    return cfg


def _compose(conf_dir: Path, groups: dict[str, str]) -> DictConfig:
    base_path = conf_dir / "config.yaml"
    if not base_path.is_file():
        raise ConfigError(
            f"no training config at {base_path}: pass --conf-dir or set "
            "$DEMUCS_RR_CONF to the conf/ folder of demucs_rr"
        )
    base = _read_yaml(base_path)
    defaults = base.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{base_path}: `defaults` must map group names to preset names")
    cfg = _merge(_schema(), base, str(base_path))
    recipes: list[tuple[dict[str, Any], Path]] = []
    for group in GROUPS:
        name = groups.get(group, defaults.get(group))
        if name is None:
            continue
        body, recipe, path = _preset(conf_dir, group, str(name))
        cfg = _merge(cfg, {group: body}, str(path))
        recipes.append((recipe, path))
    for recipe, path in recipes:
        cfg = _merge(cfg, recipe, f"the recipe of {path}")
    return cfg


def load_config(
    overrides: Sequence[str] = (),
    conf_dir: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | dict[str, Any] | None = None,
    start: dict[str, Any] | None = None,
) -> TrainConfig:
    """Compose and validate a training configuration.

    Args:
        overrides: ``key=value`` strings; ``model=NAME`` and ``dset=NAME`` select presets.
        conf_dir: folder holding ``config.yaml``, ``model/`` and ``dset/``; defaults to
            :func:`default_conf_dir`.
        base: a saved resolved config (``RUN_DIR/config.yaml``, or the dict of a checkpoint)
            to start from instead of the presets; then only dotted overrides are allowed.
        start: keys set over the presets and under the command line (fine-tuning: the
            initial model's section); its ``model`` section replaces the preset's.

    Returns:
        The frozen, checked configuration.

    Raises:
        ConfigError: unknown key, wrong type, unknown preset or an invalid value.
    """
    groups, dotted = _split_overrides(overrides)
    if base is not None:
        if groups:
            raise ConfigError(f"cannot change presets ({', '.join(groups)}) of a saved run config")
        data, where = (
            (base, "the saved config")
            if isinstance(base, dict)
            else (_read_yaml(Path(base)), str(base))
        )
        cfg = _merge(_schema(), data, where)
    else:
        cfg = _compose(Path(conf_dir) if conf_dir else default_conf_dir(), groups)
    if start is not None:
        if "model" in start:  # replaces the preset's section, key by key included
            with read_write(cfg.model):
                cfg.model.kwargs = {}
        cfg = _merge(cfg, start, "the initial model")
    OmegaConf.set_struct(cfg.model.kwargs, True)  # model.kwargs.<typo>=... is an error too
    try:
        cli = OmegaConf.from_dotlist(dotted)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:  # freeze=[*]: a YAML alias
        raise ConfigError(
            f"cannot parse overrides {dotted}: {one_line(exc)} (quote values that start "
            "with * or &, e.g. freeze=['*.bias'])"
        ) from None
    cfg = _merge(cfg, cli, "the command line")
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, "the configuration")) from None
    assert isinstance(config, TrainConfig)
    check_config(config)
    return config


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choices(config: TrainConfig) -> None:
    choices = {
        "amp": (config.amp, ("auto", "fp32", "bf16", "fp16")),
        "loss.kind": (config.loss.kind, ("l1", "mse", "masked_mse")),
        "optim.schedule": (config.optim.schedule, ("none", "cosine", "plateau")),
        "valid.best_on": (config.valid.best_on, ("loss", "nsdr")),
        "dset.kind": (config.dset.kind, ("musdb", "folder", "synthetic")),
    }
    for key, (value, allowed) in choices.items():
        _require(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")
    check_device(config.device, allow_mps=False)


def _check_numbers(config: TrainConfig) -> None:
    aug, opt, val = config.augment, config.optim, config.valid
    checks = [
        (config.epochs >= 1, "epochs must be >= 1"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.segment > 0, "segment must be > 0 seconds"),
        (config.data.stride > 0, "data.stride must be > 0 seconds"),
        (config.data.workers >= 0, "data.workers must be >= 0"),
        (0 <= config.data.repitch <= 1, "data.repitch is a probability in [0, 1]"),
        (aug.shift >= 0, "augment.shift must be >= 0 seconds"),
        (0 <= aug.scale_min <= aug.scale_max, "need 0 <= augment.scale_min <= scale_max"),
        (aug.remix_group_size >= 0, "augment.remix_group_size must be >= 0"),
        (all(0 <= p <= 1 for p in aug.mixup_probs), "augment.mixup_probs are probabilities"),
        (0 <= aug.mixup_min <= aug.mixup_max, "need 0 <= augment.mixup_min <= mixup_max"),
        (opt.lr > 0 and opt.weight_decay >= 0, "optim.lr must be > 0, weight_decay >= 0"),
        (0 <= opt.beta1 < 1 and 0 <= opt.beta2 < 1, "optim.beta1/beta2 must be in [0, 1)"),
        (opt.warmup_steps >= 0 and opt.clip_grad >= 0, "warmup_steps/clip_grad must be >= 0"),
        (0 <= opt.ema_decay < 1, "optim.ema_decay must be in [0, 1) (0 disables EMA)"),
        (0 < opt.plateau_factor < 1, "optim.plateau_factor must be in (0, 1)"),
        (opt.plateau_patience >= 0, "optim.plateau_patience must be >= 0"),
        (
            opt.schedule != "plateau" or opt.warmup_steps == 0,
            "optim.schedule=plateau has no warmup: set optim.warmup_steps=0",
        ),
        (val.every >= 1 and val.batch_size >= 1, "valid.every/batch_size must be >= 1"),
        (val.overlap is None or 0 <= val.overlap < 1, "valid.overlap must be in [0, 1)"),
        (val.segment is None or val.segment > 0, "valid.segment must be > 0 or null"),
        (val.max_seconds is None or val.max_seconds > 0, "valid.max_seconds must be > 0"),
        (config.dset.samplerate > 0 and config.dset.channels >= 1, "bad dset rate/channels"),
        (config.lora.rank >= 0, "lora.rank must be >= 0 (0: no adapters)"),
        (config.lora.alpha is None or config.lora.alpha > 0, "lora.alpha must be > 0 or null"),
        (
            config.init is not None
            or (config.init_member, config.init_repo, config.init_new_from) == (None,) * 3,
            "init_member, init_repo and init_new_from need init=NAME_OR_PATH",
        ),
        (0 < config.loss.quantile <= 1, "loss.quantile must be in (0, 1]"),
        (config.loss.multi_stft_weight >= 0, "loss.multi_stft_weight must be >= 0"),
        (
            len(config.loss.multi_stft_windows) > 0
            and min(config.loss.multi_stft_windows) > 0
            and config.loss.multi_stft_hop > 0
            and config.loss.multi_stft_min_n_fft > 0,
            "loss.multi_stft_windows (non-empty), multi_stft_hop and multi_stft_min_n_fft "
            "must be positive",
        ),
    ]
    for ok, message in checks:
        _require(ok, message)


def _check_model(config: TrainConfig) -> None:
    from demucs_rr.models.registry import MODEL_CLASSES, get_model_class

    arch = config.model.arch
    _require(
        arch in MODEL_CLASSES,
        f"model.arch={arch!r} is not a registered model ({', '.join(sorted(MODEL_CLASSES))})",
    )
    try:
        bound = inspect.signature(get_model_class(arch)).bind(**model_kwargs(config))
    except TypeError as exc:
        raise ConfigError(f"model.kwargs do not fit {arch}: {exc}") from None
    bound.apply_defaults()
    kwargs = bound.arguments
    _require(
        not (kwargs.get("causal") is True and kwargs.get("norm_type") == "gLN"),
        f"model.kwargs: a causal {arch} needs a frame-local norm (norm_type=cLN, BN or id); "
        "gLN looks at the whole segment, so the model would not be causal and could not be "
        "used with --stream",
    )


def check_config(config: TrainConfig) -> None:
    """Value checks that the schema's types cannot express.

    Raises:
        ConfigError: naming the first offending key.
    """
    _check_choices(config)
    _check_numbers(config)
    sources = config.dset.sources
    _require(
        len(sources) > 0 and len(set(sources)) == len(sources),
        f"dset.sources must be non-empty and unique, got {sources}",
    )
    weights = config.loss.weights
    if weights is not None:
        _require(
            len(weights) == len(sources) and min(weights) >= 0 and sum(weights) > 0,
            f"loss.weights needs {len(sources)} non-negative values (one per source "
            f"{sources}) with a positive sum, got {weights}",
        )
    if config.dset.kind != "synthetic":
        _require(
            bool(config.dset.root),
            f"dset.root is not set: pass dset.root=/path/to/the/{config.dset.kind} folder",
        )
    _check_model(config)


def segment_samples(config: TrainConfig) -> int:
    """Training segment (model output length before ``valid_length``) in samples."""
    return max(1, round(config.segment * config.dset.samplerate))


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Constructor kwargs: ``model.kwargs`` + sources, channels, samplerate from ``dset``
    (:func:`_channel_kwargs`; ``num_stems``, when given, as the number of sources).

    Unless ``model.kwargs`` sets it, the model's default inference chunk comes from the training
    segment: ``segment_length`` (samples, v2 classes) or ``segment`` (seconds, Demucs 3/4) is
    4 x the training segment, as the official trainers stored it; a model that is limited to
    its training length (a ``use_train_segment`` argument: HTDemucs) gets the training segment
    itself, as the exact fraction ``"samples/samplerate"``.
    """
    kwargs = dict(config.model.kwargs)
    params = _constructor_params(config.model.arch)
    samples = segment_samples(config)
    if "segment" in params and "segment_length" not in params:
        if "use_train_segment" in params:
            kwargs.setdefault("segment", f"{samples}/{config.dset.samplerate}")
        else:
            kwargs.setdefault("segment", 4 * samples / config.dset.samplerate)
    else:
        kwargs.setdefault("segment_length", 4 * samples)
    kwargs.update(sources=list(config.dset.sources), samplerate=config.dset.samplerate)
    kwargs.update(_channel_kwargs(config, params))
    if kwargs.get("num_stems") is not None:  # MSST's repetition of the stem count
        kwargs["num_stems"] = len(config.dset.sources)
    return kwargs


def _channel_kwargs(config: TrainConfig, params: set[str]) -> dict[str, Any]:
    """``audio_channels`` from ``dset.channels``, or MSST RoFormers' ``stereo`` switch (C = 2
    when true, else 1; any other C is a config error). A Mel-Band RoFormer's ``sample_rate``
    (its mel filter bank) also follows ``dset.samplerate`` unless ``model.kwargs`` sets it (a
    fine-tuned base keeps its bands)."""
    channels = config.dset.channels
    out: dict[str, Any] = {}
    if "audio_channels" not in params and "stereo" in params:
        _require(
            channels in (1, 2),
            f"{config.model.arch} handles mono or stereo audio, not dset.channels={channels}",
        )
        out["stereo"] = channels == 2
    else:
        out["audio_channels"] = channels
    if "sample_rate" in params and "sample_rate" not in config.model.kwargs:  # init= keeps its
        out["sample_rate"] = config.dset.samplerate  # base's bands
    return out


def _constructor_params(arch: str) -> set[str]:
    """Names of the constructor arguments of registered class ``arch`` (empty if unknown)."""
    from demucs_rr.models.registry import MODEL_CLASSES, get_model_class

    if arch not in MODEL_CLASSES:
        return set()
    try:
        return set(inspect.signature(get_model_class(arch)).parameters)
    except (TypeError, ValueError):
        return set()


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able dict of ``config``."""
    return asdict(config)


def config_to_yaml(config: TrainConfig) -> str:
    """YAML text of ``config``; :func:`load_config` reads it back with ``base=``."""
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(config)))
