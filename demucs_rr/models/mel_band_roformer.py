"""Mel-Band RoFormer (Wang et al. 2023), state-dict exact to MSST.

Weight-compatible with ``models/bs_roformer/mel_band_roformer.py`` of ZFTurbo's
Music-Source-Separation-Training (``model_type: mel_band_roformer``: viperx ep_3005, Kimberley
Jensen's vocal model and the many fine-tunes derived from them). The bands are the
``num_bands`` Slaney mel triangles of :mod:`demucs_rr.models.mel_bands`; neighbouring bands
overlap, so a bin is fed to every band covering it and the masks estimated for a bin are
averaged over those bands before they are applied. The trunk is
:class:`~demucs_rr.models.roformer_base.RoformerBase`.

State dict (MSST order): ``layers.{i}.{j}.layers.{l}.{0,1}.*`` and ``layers.{i}.{j}.norm.gamma``
(every transformer ends with an RMSNorm; no ``final_norm``), ``band_split.to_features.{b}.*``,
``mask_estimators.{s}.to_freqs.{b}.0.{0,2,...}.*``. The band layout lives in non-persistent
buffers (``freq_indices``, ``freqs_per_band``, ``num_freqs_per_band``, ``num_bands_per_freq``)
that :meth:`MelBandRoformer.reset_buffers` recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import collect_kwargs
from demucs_rr.models.bs_roformer import check_common
from demucs_rr.models.mel_bands import mel_band_layout
from demucs_rr.models.roformer_base import (
    RoformerBase,
    as_complex,
    check_positive,
)

__all__ = ["MelBandRoformer"]


class MelBandRoformer(RoformerBase):
    """Mel-Band RoFormer with MSST's constructor arguments (the YAML ``model:`` keys).

    Arguments are those of :class:`~demucs_rr.models.bs_roformer.BSRoformer` (same meaning,
    MSST's Mel-Band defaults), except:

    Args:
        num_bands: mel bands F (replaces ``freqs_per_bands``).
        sample_rate: sample rate of the mel scale (MSST's key; normally ``samplerate``).
        mask_estimator_depth: hidden layers per band in a mask estimator (MSST builds
            ``mask_estimator_depth + 1`` Linear layers here, one more than BS-RoFormer).
        match_input_audio_length: accepted for MSST configs; the output always has the input
            length here (MSST otherwise drops the samples after the last full hop).

    Raises:
        ConfigError: a value MSST could not build or that is unsupported, naming the key.
    """

    freq_indices: torch.Tensor
    freqs_per_band: torch.Tensor
    num_freqs_per_band: torch.Tensor
    num_bands_per_freq: torch.Tensor

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
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Sequence[int] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        match_input_audio_length: bool = False,
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
        check_positive(num_bands=num_bands, sample_rate=sample_rate)
        if mask_estimator_depth < 0:
            raise ConfigError("model.mask_estimator_depth must be >= 0")
        stems = self._init_trunk(kwargs, norm_output=True)
        # MSST registration order: layers, (buffers), band_split, mask_estimators.
        layout = self._layout()
        for name, value in self._band_buffers(layout).items():
            self.register_buffer(name, value, persistent=False)
        counts = layout.sum(axis=1).tolist()
        dim_inputs = tuple(2 * int(n) * self.audio_channels for n in counts)
        self._init_heads(dim_inputs, mask_estimator_depth + 1, stems)

    def _layout(self) -> np.ndarray:
        """(F, Q) bool band coverage (ConfigError naming num_bands when a bin is uncovered)."""
        kw = self.init_kwargs
        try:
            return mel_band_layout(kw["sample_rate"], self.n_fft, kw["num_bands"])
        except ValueError as exc:
            raise ConfigError(f"model.num_bands {kw['num_bands']}: {exc}") from None

    def _band_buffers(self, layout: np.ndarray) -> dict[str, torch.Tensor]:
        """MSST's band buffers on the CPU.

        ``freq_indices`` (sum K / 2,): for each band in order, each covered bin q and channel c,
        the index ``q * C + c`` into the (Q*C) bin axis; ``freqs_per_band`` (F, Q) bool;
        ``num_freqs_per_band`` (F,) and ``num_bands_per_freq`` (Q,) counts.
        """
        channels = self.audio_channels
        cpu = torch.device("cpu")  # even when built under a meta-device context
        coverage = torch.from_numpy(layout.copy())
        bins = torch.arange(self.num_freqs, device=cpu).expand_as(coverage)[coverage]
        indices = (bins[:, None] * channels + torch.arange(channels, device=cpu)).flatten()
        return {
            "freq_indices": indices,
            "freqs_per_band": coverage,
            "num_freqs_per_band": coverage.sum(dim=1),
            "num_bands_per_freq": coverage.sum(dim=0),
        }

    def reset_buffers(self) -> None:
        """Recompute the non-persistent band buffers in place (after ``to_empty``)."""
        with torch.no_grad():
            for name, value in self._band_buffers(self._layout()).items():
                buffer = getattr(self, name)
                buffer.copy_(value.to(buffer.device))

    def band_input(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex -> (B, N, sum K): the bins of every band, real then imaginary."""
        selected = spec.index_select(-1, self.freq_indices)
        return torch.view_as_real(selected).flatten(-2)

    def apply_masks(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, N, Q*C) complex, (B, S, N, sum K) masks -> (B, S, N, Q*C) masked spectrograms.

        The masks of a bin are summed over the bands covering it and divided by their count.
        """
        per_band = as_complex(masks, spec)  # (B, S, N, sum K / 2)
        summed = spec.new_zeros(*per_band.shape[:-1], spec.size(-1))
        summed.index_add_(-1, self.freq_indices, per_band)
        counts = self.num_bands_per_freq.repeat_interleave(self.audio_channels)
        return spec.unsqueeze(1) * (summed / counts.to(spec.real.dtype))
