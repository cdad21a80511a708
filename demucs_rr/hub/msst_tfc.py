"""MSST config -> demucs_rr model class and constructor arguments, for SCNet and MDX23C.

An MSST config is the plain dict read from its YAML (sections ``audio``, ``model``,
``training``, ``inference``). MSST builds them as:

- ``scnet``: ``SCNet(**config.model)``; its output has one stem per ``model.sources`` entry;
- ``mdx23c``: ``TFC_TDF_net(config)``, reading ``audio.{n_fft, hop_length, dim_f,
  num_channels}`` and ``model.*``, with one stem per output name.

Either way the outputs are named (``utils.model_utils.prefer_target_instrument``)
``[training.target_instrument]`` when that is set, else ``training.instruments``, and the
model separates chunks of ``inference.chunk_size`` (else ``audio.chunk_size``) samples at
``audio.sample_rate``. ``inference.normalize`` is not part of the network (the caller
normalises the mixture around it).

:func:`tfc_kwargs` is pure: it reads the dict and returns ``(registry name, kwargs)`` for
:func:`demucs_rr.models.registry.build_model`; it builds nothing. Every problem is one
:class:`~demucs_rr.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from demucs_rr.errors import ConfigError

__all__ = ["MODEL_KEYS", "TFC_CLASSES", "tfc_kwargs"]

TFC_CLASSES: dict[str, str] = {"scnet": "SCNet", "mdx23c": "MDX23C"}
"""MSST ``model_type`` -> registry name of the demucs_rr class."""

MODEL_KEYS: dict[str, frozenset[str]] = {
    "scnet": frozenset(
        {
            "sources", "audio_channels", "dims", "nfft", "hop_size", "win_size", "normalized",
            "band_SR", "band_stride", "band_kernel", "conv_depths", "compress", "conv_kernel",
            "num_dplayer", "expand",
        }
    ),
    "mdx23c": frozenset(
        {
            "act", "bottleneck_factor", "growth", "norm", "num_blocks_per_scale",
            "num_channels", "num_scales", "num_subbands", "scale",
        }
    ),
}  # fmt: skip
"""The ``model:`` keys each family accepts (all of them are required for ``mdx23c``)."""

_MDX_AUDIO = {"n_fft": "n_fft", "hop_length": "hop_length", "dim_f": "dim_f",
              "num_channels": "audio_channels"}  # fmt: skip
"""``audio:`` keys MDX23C's network reads -> constructor argument."""


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``config[name]`` as a mapping (empty when absent)."""
    section = config.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"MSST config: section {name!r} must be a mapping")
    return section


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"MSST config: {key} must be a positive integer, got {value!r}")
    return value


def _names(value: Any, key: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"MSST config: {key} must be a non-empty list of stem names")
    if not all(isinstance(name, str) and name for name in value):
        raise ConfigError(f"MSST config: {key} must hold stem names (strings)")
    return list(value)


def _outputs(training: Mapping[str, Any]) -> list[str]:
    """MSST's output stem names: ``[target_instrument]`` when set, else ``instruments``."""
    target = training.get("target_instrument")
    if target:
        return _names([target], "training.target_instrument")
    return _names(training.get("instruments"), "training.instruments")


def _chunk_size(config: Mapping[str, Any]) -> int:
    """``inference.chunk_size`` if set, else ``audio.chunk_size`` (MSST's demix rule)."""
    inference, audio = _section(config, "inference"), _section(config, "audio")
    if "chunk_size" in inference:
        return _positive_int(inference["chunk_size"], "inference.chunk_size")
    return _positive_int(audio.get("chunk_size"), "audio.chunk_size")


def _plain(value: Any) -> Any:
    """YAML value -> JSON-able (tuples become lists)."""
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def _scnet(config: Mapping[str, Any], outputs: list[str]) -> dict[str, Any]:
    model = _section(config, "model")
    kwargs = {key: _plain(value) for key, value in model.items() if key != "sources"}
    stems = _names(model.get("sources", ["drums", "bass", "other", "vocals"]), "model.sources")
    if len(stems) != len(outputs):
        raise ConfigError(
            f"MSST config: model.sources has {len(stems)} stems but the config names "
            f"{len(outputs)} output stems ({', '.join(outputs)})"
        )
    kwargs["sources"] = outputs
    return kwargs


def _mdx23c(config: Mapping[str, Any], outputs: list[str]) -> dict[str, Any]:
    model, audio = _section(config, "model"), _section(config, "audio")
    for key in sorted(MODEL_KEYS["mdx23c"] - set(model)):
        raise ConfigError(f"MSST config: model.{key} is missing (mdx23c needs it)")
    kwargs = {key: _plain(value) for key, value in model.items()}
    for key, argument in _MDX_AUDIO.items():
        kwargs[argument] = _positive_int(audio.get(key), f"audio.{key}")
    kwargs["sources"] = outputs
    return kwargs


def tfc_kwargs(
    config: Mapping[str, Any], model_type: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Registry name and constructor kwargs of the model an MSST config describes.

    Args:
        config: the MSST config as a plain dict.
        model_type: MSST's ``--model_type``; defaults to ``training.model_type``.

    Returns:
        ``("SCNet" | "MDX23C", kwargs)``: the network's settings (tuples as lists) plus
        ``sources`` (the output names), ``samplerate`` and ``segment_length``.

    Raises:
        ConfigError: unknown model type or model key, missing setting, stems or chunk size,
            or a stem count that contradicts ``model.sources`` (one line naming the key).
    """
    training = _section(config, "training")
    model_type = model_type or training.get("model_type")
    if model_type not in TFC_CLASSES:
        known = ", ".join(TFC_CLASSES)
        raise ConfigError(f"MSST config: model_type {model_type!r} is not one of {known}")
    for key in _section(config, "model"):
        if key not in MODEL_KEYS[model_type]:
            raise ConfigError(f"MSST config: unknown key model.{key} for {model_type}")
    outputs = _outputs(training)
    kwargs = (_scnet if model_type == "scnet" else _mdx23c)(config, outputs)
    samplerate = _section(config, "audio").get("sample_rate", 44100)
    kwargs["samplerate"] = _positive_int(samplerate, "audio.sample_rate")
    kwargs["segment_length"] = _chunk_size(config)
    return TFC_CLASSES[model_type], kwargs
