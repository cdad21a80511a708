"""MSST config -> demucs_rr model class and constructor arguments, for the RoFormer families.

An MSST config is the plain dict read from its YAML (sections ``audio``, ``model``,
``training``, ``inference``). MSST builds ``BSRoformer(**config.model)`` or
``MelBandRoformer(**config.model)``; the model outputs one stem per mask estimator, named
(``utils.model_utils.prefer_target_instrument``) ``[training.target_instrument]`` when that is
set, else ``training.instruments``. It separates in chunks of ``inference.chunk_size`` (else
``audio.chunk_size``) samples at ``audio.sample_rate``.

:func:`roformer_kwargs` is pure: it reads the dict and returns ``(registry name, kwargs)`` for
:func:`demucs_rr.models.registry.build_model`; it builds nothing. Every problem is one
:class:`~demucs_rr.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from demucs_rr.errors import ConfigError

__all__ = ["MODEL_KEYS", "ROFORMER_CLASSES", "roformer_kwargs"]

ROFORMER_CLASSES: dict[str, str] = {
    "bs_roformer": "BSRoformer",
    "mel_band_roformer": "MelBandRoformer",
}
"""MSST ``model_type`` -> registry name of the demucs_rr class."""

_COMMON_KEYS = frozenset(
    {
        "dim", "depth", "stereo", "num_stems", "time_transformer_depth",
        "freq_transformer_depth", "linear_transformer_depth", "dim_head", "heads",
        "attn_dropout", "ff_dropout", "flash_attn", "dim_freqs_in", "stft_n_fft",
        "stft_hop_length", "stft_win_length", "stft_normalized", "zero_dc",
        "mask_estimator_depth", "multi_stft_resolution_loss_weight",
        "multi_stft_resolutions_window_sizes", "multi_stft_hop_size", "multi_stft_normalized",
        "mlp_expansion_factor", "use_torch_checkpoint", "skip_connection", "use_pope",
    }
)  # fmt: skip

MODEL_KEYS: dict[str, frozenset[str]] = {
    "bs_roformer": _COMMON_KEYS | {"freqs_per_bands"},
    "mel_band_roformer": _COMMON_KEYS | {"num_bands", "sample_rate", "match_input_audio_length"},
}
"""The ``model:`` keys each family accepts (MSST's constructor arguments that a YAML can hold)."""


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``config[name]`` as a mapping (empty when absent)."""
    section = config.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"MSST config: section {name!r} must be a mapping")
    return section


def _sources(training: Mapping[str, Any]) -> list[str]:
    """MSST's output stems: ``[target_instrument]`` when set, else ``instruments``."""
    target = training.get("target_instrument")
    if target:
        if not isinstance(target, str):
            raise ConfigError("MSST config: training.target_instrument must be a stem name")
        return [target]
    instruments = training.get("instruments")
    if not isinstance(instruments, list) or not instruments:
        raise ConfigError("MSST config: training.instruments must be a non-empty list of names")
    if not all(isinstance(name, str) and name for name in instruments):
        raise ConfigError("MSST config: training.instruments must hold stem names (strings)")
    return list(instruments)


def _chunk_size(config: Mapping[str, Any]) -> int:
    """``inference.chunk_size`` if set, else ``audio.chunk_size`` (MSST's demix rule)."""
    inference, audio = _section(config, "inference"), _section(config, "audio")
    key = "inference.chunk_size" if "chunk_size" in inference else "audio.chunk_size"
    value = inference.get("chunk_size", audio.get("chunk_size"))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"MSST config: {key} must be a positive number of samples, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    """YAML value -> JSON-able (tuples become lists)."""
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def roformer_kwargs(
    config: Mapping[str, Any], model_type: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Registry name and constructor kwargs of the model an MSST config describes.

    Args:
        config: the MSST config as a plain dict.
        model_type: MSST's ``--model_type``; defaults to ``training.model_type``.

    Returns:
        ``("BSRoformer" | "MelBandRoformer", kwargs)``: every ``model:`` key (tuples as
        lists) plus ``sources``, ``samplerate`` and ``segment_length``.

    Raises:
        ConfigError: unknown model type or model key, missing stems or chunk size, or a stem
            count that contradicts ``model.num_stems`` (one line naming the key).
    """
    training = _section(config, "training")
    model_type = model_type or training.get("model_type")
    if model_type not in ROFORMER_CLASSES:
        known = ", ".join(ROFORMER_CLASSES)
        raise ConfigError(f"MSST config: model_type {model_type!r} is not one of {known}")
    model = _section(config, "model")
    for key in model:
        if key not in MODEL_KEYS[model_type]:
            raise ConfigError(f"MSST config: unknown key model.{key} for {model_type}")
    sources = _sources(training)
    num_stems = model.get("num_stems", 1)
    if num_stems != len(sources):
        raise ConfigError(
            f"MSST config: model.num_stems is {num_stems!r} but the config names "
            f"{len(sources)} output stems ({', '.join(sources)})"
        )
    kwargs = {key: _plain(value) for key, value in model.items()}
    kwargs["num_stems"] = num_stems
    samplerate = _section(config, "audio").get("sample_rate", 44100)
    if isinstance(samplerate, bool) or not isinstance(samplerate, int) or samplerate < 1:
        raise ConfigError(
            f"MSST config: audio.sample_rate must be a positive integer, got {samplerate!r}"
        )
    kwargs.update(sources=sources, samplerate=samplerate, segment_length=_chunk_size(config))
    return ROFORMER_CLASSES[model_type], kwargs
