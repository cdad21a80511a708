"""Hybrid Transformer Demucs (v4): the two-branch U-Net of Hybrid Demucs with a cross-domain
transformer between its spectrogram and waveform bottlenecks, weight-compatible with the official
``demucs.htdemucs.HTDemucs`` (``htdemucs``, ``htdemucs_ft``, ``htdemucs_6s``).

Constructor arguments, their defaults and the state-dict layout are the official ones:
``encoder`` / ``decoder`` / ``tencoder`` / ``tdecoder`` / ``freq_emb`` as in HDemucs, then the
optional 1x1 ``channel_upsampler(_t)`` / ``channel_downsampler(_t)`` around the transformer and
``crosstransformer``.

The model is trained on a fixed length, ``int(segment * samplerate)`` samples (343,980 for the
releases): in eval mode shorter inputs are zero-padded on the right to it and the output is cut
back; longer inputs are rejected. Shapes use B = batch, S = sources, C = audio channels,
L = samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.dconv import rescale_convs
from demucs_rr.models.hybrid_base import (
    BranchPlan,
    HybridUNet,
    SegmentLike,
    parse_segment,
    segment_json,
)
from demucs_rr.models.transformer import CrossTransformerEncoder

__all__ = ["HTDemucs"]


class HTDemucs(HybridUNet):
    """Hybrid Transformer Demucs source separation model.

    Args:
        sources, audio_channels, channels, channels_time, growth, nfft, wiener_iters, end_iters,
        wiener_residual, cac, depth, rewrite, multi_freqs, multi_freqs_depth, freq_emb,
        emb_scale, emb_smooth, kernel_size, time_stride, stride, context, context_enc,
        norm_starts, norm_groups, dconv_mode, dconv_depth, dconv_comp, dconv_init, rescale,
        samplerate: as :class:`~demucs_rr.models.hdemucs.HDemucs` (no LSTM / attention in the
            DConv branches).
        bottom_channels: transformer width when > 0 (1x1 convolutions map the innermost
            channels to it and back); 0 keeps the innermost channel count.
        t_layers: transformer layers (0: no transformer).
        t_emb: waveform positional embedding (``"sin"``, ``"cape"``, ``"scaled"``).
        t_hidden_scale: feed-forward size / model dimension.
        t_heads: attention heads.
        t_dropout: dropout (training only).
        t_max_positions: table size of the ``"scaled"`` embedding.
        t_norm_in, t_norm_in_group, t_group_norm, t_norm_first, t_norm_out: transformer norms.
        t_max_period: longest period of the sinusoidal embeddings.
        t_weight_decay, t_lr: optimiser settings (metadata).
        t_layer_scale: LayerScale on the residual branches.
        t_gelu: GELU feed-forward activation.
        t_weight_pos_embed: weight of the positional embeddings.
        t_sin_random_shift: random shift range of the 1-D embedding.
        t_cape_mean_normalize, t_cape_augment, t_cape_glob_loc_scale: CAPE options.
        t_sparse_self_attn, t_sparse_cross_attn: sparse attention (not supported: must be False).
        t_mask_type, t_mask_random_seed, t_sparse_attn_window, t_global_window, t_sparsity,
        t_auto_sparsity: sparse attention options (unused).
        t_cross_first: start with a cross-attention layer.
        segment: training length in seconds (a float or an exact Fraction, e.g. 39/5).
        use_train_segment: pad / limit inputs to the training length (see module docstring).

    Attributes:
        init_kwargs: every constructor argument as JSON-able values (Fractions as "num/den").
        segment_length: ``int(segment * samplerate)`` samples.
        training_length: ``int(segment * samplerate)`` samples, what eval inputs are padded to.
        max_segment_length: longest accepted input in eval mode (the training length).

    Raises:
        NotImplementedError: for sparse attention.
    """

    # CPU bf16 runs may store the weights in bf16 (demucs_rr.separate.precision.prepare_model):
    # the STFT and input statistics stay float32, every layer in between has a bf16 path.
    bf16_weights = True

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: int | None = None,
        growth: float = 2,
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        depth: int = 4,
        rewrite: bool = True,
        multi_freqs: list[float] | None = None,
        multi_freqs_depth: int = 3,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 8,
        dconv_init: float = 1e-3,
        bottom_channels: int = 0,
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool = False,
        t_group_norm: bool = False,
        t_norm_first: bool = True,
        t_norm_out: bool = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: float | None = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = True,
        t_cape_augment: bool = True,
        t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        t_cross_first: bool = False,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: SegmentLike = 10,
        use_train_segment: bool = True,
    ) -> None:
        super().__init__()
        args = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        self.init_kwargs: dict[str, Any] = {
            **args,
            "sources": list(sources),
            "segment": segment_json(parse_segment(segment)),
            "t_cape_glob_loc_scale": list(t_cape_glob_loc_scale),
            "multi_freqs": None if multi_freqs is None else list(multi_freqs),
        }
        if t_sparse_self_attn or t_sparse_cross_attn:
            raise NotImplementedError("sparse transformer attention is not supported")
        if wiener_iters != end_iters:
            raise ValueError("wiener_iters and end_iters must be equal")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = parse_segment(segment)
        self.use_train_segment = use_train_segment
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.bottom_channels = bottom_channels
        self.channels = channels
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.pre_padding = "reflect"

        plan = BranchPlan(
            sources=len(self.sources),
            audio_channels=audio_channels,
            channels=channels,
            channels_time=channels_time,
            growth=growth,
            nfft=nfft,
            cac=cac,
            depth=depth,
            rewrite=rewrite,
            hybrid=True,
            multi_freqs=list(multi_freqs or []),
            multi_freqs_depth=multi_freqs_depth,
            freq_emb=freq_emb,
            emb_scale=emb_scale,
            emb_smooth=emb_smooth,
            kernel_size=kernel_size,
            time_stride=time_stride,
            stride=stride,
            context=context,
            context_enc=context_enc,
            norm_starts=norm_starts,
            norm_groups=norm_groups,
            dconv_mode=dconv_mode,
        )
        dconv_kw = {"depth": dconv_depth, "compress": dconv_comp, "init": dconv_init, "gelu": True}
        self._build_branches(plan, lambda index: dict(dconv_kw))
        if rescale:
            rescale_convs(self, reference=rescale)

        width = int(channels * growth ** (depth - 1))
        self.channel_upsampler: nn.Module | None = None
        self.channel_downsampler: nn.Module | None = None
        self.channel_upsampler_t: nn.Module | None = None
        self.channel_downsampler_t: nn.Module | None = None
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, width, 1)
            self.channel_upsampler_t = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, width, 1)
            width = bottom_channels
        self.crosstransformer: CrossTransformerEncoder | None = None
        if t_layers > 0:
            self.crosstransformer = CrossTransformerEncoder(
                dim=width,
                emb=t_emb,
                hidden_scale=t_hidden_scale,
                num_heads=t_heads,
                num_layers=t_layers,
                cross_first=t_cross_first,
                dropout=t_dropout,
                max_positions=t_max_positions,
                norm_in=t_norm_in,
                norm_in_group=int(t_norm_in_group),
                group_norm=int(t_group_norm),
                norm_first=t_norm_first,
                norm_out=t_norm_out,
                max_period=t_max_period,
                layer_scale=t_layer_scale,
                gelu=t_gelu,
                sin_random_shift=t_sin_random_shift,
                weight_pos_embed=t_weight_pos_embed,
                cape_mean_normalize=t_cape_mean_normalize,
                cape_augment=t_cape_augment,
                cape_glob_loc_scale=tuple(t_cape_glob_loc_scale),  # type: ignore[arg-type]
            )

    @property
    def training_length(self) -> int:
        """``int(segment * samplerate)``: the length the model was trained on, in samples."""
        return int(self.segment * self.samplerate)

    @property
    def max_segment_length(self) -> int | None:
        """The training length: the longest input accepted in eval mode (no limit without
        ``use_train_segment``)."""
        return self.training_length if self.use_train_segment else None

    def chunk_input_length(self, length: int, segment: int) -> int:
        """Input carrying a chunk: the whole ``segment`` of real audio (at least the chunk).

        With the default segment (the training length) every chunk sees real context up to
        the training length; with a shorter chunk grid the model zero-pads the input on the
        right to its training length itself. Without ``use_train_segment``: the chunk alone.
        """
        if not self.use_train_segment:
            return int(length)
        return max(int(length), int(segment))

    def valid_length(self, length: int) -> int:
        """Length the model runs at: the training length (``length`` without
        ``use_train_segment``).

        Raises:
            ValueError: ``length`` exceeds the training length.
        """
        if not self.use_train_segment:
            return int(length)
        training_length = self.training_length
        if length > training_length:
            raise ValueError(
                f"HTDemucs takes at most {training_length} samples "
                f"({float(self.segment):.2f} s), got {length}"
            )
        return training_length

    def _bottom(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer on (B, C, F, T1) / (B, C, T2), through the bottom channel projections."""
        if self.crosstransformer is None:
            return x, xt
        batch, _, bins, frames = x.shape
        if self.channel_upsampler is not None and self.channel_upsampler_t is not None:
            x = self.channel_upsampler(x.reshape(batch, -1, bins * frames))
            x = x.view(batch, -1, bins, frames)
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.channel_downsampler is not None and self.channel_downsampler_t is not None:
            x = self.channel_downsampler(x.reshape(batch, -1, bins * frames))
            x = x.view(batch, -1, bins, frames)
            xt = self.channel_downsampler_t(xt)
        return x, xt

    def _spec_channels_last(self, x: torch.Tensor) -> bool:
        """Run the spectrogram branch channels-last: with bf16 weights on the CPU, where
        oneDNN's bf16 convolutions compute in that layout (a contiguous output costs a
        transposing copy per layer, ~9 % of a bf16 forward); float32 is faster contiguous."""
        weight = next(iter(self.parameters()), None)
        return x.device.type == "cpu" and weight is not None and weight.dtype == torch.bfloat16

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        In training mode (with ``use_train_segment``) ``segment`` becomes the input duration.

        Args:
            mix: (B, C, L) waveform; L <= ``max_segment_length`` in eval mode.

        Returns:
            (B, S, C, L) stems.
        """
        self._check_input(mix)
        length = mix.shape[-1]
        run_length = length
        if self.use_train_segment:
            if self.training:
                self.segment = Fraction(length, self.samplerate)
                self.init_kwargs["segment"] = segment_json(self.segment)
            else:
                run_length = self.valid_length(length)
                mix = F.pad(mix, (0, run_length - length))
        inputs = self._normalize_inputs(mix)
        x = inputs.x
        if self._spec_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        x, xt, skips = self._encode(x, inputs.xt)
        assert xt is not None
        x, xt = self._bottom(x, xt)
        x, xt = self._decode(x, xt, skips)
        out = self._combine(x, xt, inputs, run_length)
        return out[..., :length]
