"""BS-RoFormer (band-split RoPE transformer, Lu et al. 2023), state-dict exact to MSST.

Weight-compatible with ``models/bs_roformer/bs_roformer.py`` of ZFTurbo's
Music-Source-Separation-Training (``model_type: bs_roformer``), so that released checkpoints
(viperx ep_317 / ep_937, the MSST MUSDB18 models, ...) load with a strict ``load_state_dict``.
Bands are contiguous runs of STFT bins (``freqs_per_bands``); the trunk is
:class:`~demucs_rr.models.roformer_base.RoformerBase`.

State dict (MSST order): ``layers.{i}.{j}.layers.{l}.{0,1}.*`` (block i; j = linear?, time,
freq transformer), ``final_norm.gamma``, ``band_split.to_features.{b}.*``,
``mask_estimators.{s}.to_freqs.{b}.0.{0,2,...}.*`` (one estimator per stem s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import collect_kwargs
from demucs_rr.models.roformer_base import (
    RoformerBase,
    as_complex,
    check_positive,
)
from demucs_rr.models.roformer_layers import RMSNorm

__all__ = ["DEFAULT_FREQS_PER_BANDS", "BSRoformer"]

DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)
"""MSST's default split of the 1025 bins of a 2048-point STFT into 62 bands."""


def check_common(kwargs: dict[str, Any]) -> None:
    """Refuse what MSST cannot build or this implementation does not support (ConfigError)."""
    check_positive(
        dim=kwargs["dim"],
        depth=kwargs["depth"],
        heads=kwargs["heads"],
        dim_head=kwargs["dim_head"],
        time_transformer_depth=kwargs["time_transformer_depth"],
        freq_transformer_depth=kwargs["freq_transformer_depth"],
        mlp_expansion_factor=kwargs["mlp_expansion_factor"],
    )
    if kwargs["dim_head"] % 2:
        raise ConfigError(f"model.dim_head must be even (rotary pairs), got {kwargs['dim_head']}")
    if kwargs["linear_transformer_depth"] < 0:
        raise ConfigError("model.linear_transformer_depth must be >= 0")
    if kwargs["use_pope"]:
        raise ConfigError("model.use_pope: PoPE position embeddings are not supported")


class BSRoformer(RoformerBase):
    """BS-RoFormer with MSST's constructor arguments (the YAML ``model:`` keys).

    Args:
        sources: stem names in output order (MSST: ``training.target_instrument`` or
            ``training.instruments``); S = ``len(sources)``.
        dim, depth, heads, dim_head: token size, axial blocks, attention heads and head size.
        stereo: two audio channels (else mono).
        num_stems: MSST's stem count; must equal ``len(sources)`` when given.
        time_transformer_depth, freq_transformer_depth: layers per axis in a block.
        linear_transformer_depth: layers of the linear-attention transformer opening each block
            (0: none).
        freqs_per_bands: STFT bins per band; must sum to ``stft_n_fft // 2 + 1``.
        attn_dropout, ff_dropout: dropout, applied in training mode only.
        stft_n_fft, stft_hop_length, stft_win_length, stft_normalized: STFT (Hann window).
        zero_dc: zero the DC bin of the output spectrogram.
        mask_estimator_depth: Linear layers per band in a mask estimator.
        mlp_expansion_factor: mask-estimator hidden size = ``dim * mlp_expansion_factor``.
        use_torch_checkpoint: activation checkpointing while training (memory for compute).
        skip_connection: each block's input also gets the outputs of all previous blocks.
        flash_attn, dim_freqs_in: accepted for MSST configs; no effect (attention always uses
            PyTorch's fused kernel, MSST ignores ``dim_freqs_in``).
        multi_stft_resolution_loss_weight, multi_stft_resolutions_window_sizes,
        multi_stft_hop_size, multi_stft_normalized: MSST's multi-resolution STFT loss settings,
            kept as attributes for a training loop; ``forward`` never computes a loss.
        use_pope: must be False (PoPE is not supported).
        samplerate: sample rate in Hz. segment_length: MSST chunk size in samples.
        num_overlap, normalize: MSST's ``inference.num_overlap`` and ``inference.normalize``
            (the engine's chunking and normalisation, :class:`FadedChunkingDefaults`).

    Raises:
        ConfigError: a value MSST could not build or that is unsupported, naming the key.
    """

    def __init__(
        self,
        *,
        sources: Sequence[str],
        dim: int,
        depth: int,
        stereo: bool = False,
        num_stems: int | None = None,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        freqs_per_bands: Sequence[int] = DEFAULT_FREQS_PER_BANDS,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Sequence[int] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        use_pope: bool = False,
        samplerate: int = 44100,
        segment_length: int = 352800,
        num_overlap: int = 4,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        kwargs = collect_kwargs(locals())
        check_common(kwargs)
        check_positive(mask_estimator_depth=mask_estimator_depth)
        bands = tuple(int(f) for f in freqs_per_bands)
        if len(bands) < 2 or min(bands) < 1 or sum(bands) != stft_n_fft // 2 + 1:
            raise ConfigError(
                f"model.freqs_per_bands must be >= 2 positive counts summing to "
                f"stft_n_fft // 2 + 1 = {stft_n_fft // 2 + 1}, got {len(bands)} summing to "
                f"{sum(bands)}"
            )
        stems = self._init_trunk(kwargs, norm_output=False)
        # MSST registration order: layers, final_norm, band_split, mask_estimators.
        self.final_norm = RMSNorm(dim)
        self._init_heads(
            tuple(2 * f * self.audio_channels for f in bands), mask_estimator_depth, stems
        )

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The final RMSNorm of the trunk: (B, N, F, D) -> (B, N, F, D)."""
        result: torch.Tensor = self.final_norm(x)
        return result

    def band_input(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex -> (B, N, Q*C*2): per bin and channel, real then imaginary."""
        return torch.view_as_real(spec).flatten(-2)

    def apply_masks(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex, (B, S, N, Q*C*2) masks -> (B, S, N, Q*C) masked spectrograms."""
        return spec.unsqueeze(1) * as_complex(masks, spec)
