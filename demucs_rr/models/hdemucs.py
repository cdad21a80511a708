"""Hybrid Demucs (v3): a spectrogram U-Net and a waveform U-Net sharing their innermost levels,
weight-compatible with the official ``demucs.hdemucs.HDemucs`` of Demucs 4.

Constructor arguments, their defaults and the state-dict layout are the official ones, so the
released hybrid packages (``hdemucs_mmi``, the hybrid members of ``mdx*`` / ``repro_mdx_a*``) load
with their stored kwargs: ``encoder.{i}`` / ``decoder.{j}`` (frequency then merged levels, decoders
innermost first), ``tencoder.{i}`` / ``tdecoder.{j}`` (time branch), ``freq_emb`` (frequency
embedding). The MDX-era variants are supported: magnitude spectrograms (``cac=False``, mixture
phase), ``hybrid_old`` (zero pre-padding), ``multi_freqs`` (per-band layers), ``norm_starts``,
``dconv_mode``.

Shapes use B = batch, S = sources, C = audio channels, L = samples.
"""

from __future__ import annotations

from typing import Any

import torch

from demucs_rr.models.dconv import rescale_convs
from demucs_rr.models.hybrid_base import (
    BranchPlan,
    HybridUNet,
    SegmentLike,
    parse_segment,
    segment_json,
)

__all__ = ["HDemucs"]


class HDemucs(HybridUNet):
    """Hybrid Demucs source separation model (accepts any input length L >= 1).

    Args:
        sources: stem names, in output order (S of them).
        audio_channels: input/output audio channels C.
        channels: channels of the first frequency level (x ``growth`` per level).
        channels_time: channels of the first time level (default: ``channels``).
        growth: channel multiplier per level.
        nfft: STFT size (hop ``nfft // 4``).
        wiener_iters: Wiener iterations at inference for magnitude models (0: mixture phase).
        end_iters: Wiener iterations in training mode (must equal ``wiener_iters``).
        wiener_residual: add a residual source to the Wiener step (no effect with 0 iterations).
        cac: complex-as-channels spectrogram input/output (else magnitudes).
        depth: number of levels.
        rewrite: add the rewrite convolutions + GLU.
        hybrid: add the time branch (else a spectrogram-only model).
        hybrid_old: zero pre-padding and uncentred crop of early MDX hybrids.
        multi_freqs: band split ratios of the per-band outer levels (None / []: none).
        multi_freqs_depth: number of outer levels split per band.
        freq_emb: weight of the frequency embedding (0: none).
        emb_scale: scale of the frequency embedding table.
        emb_smooth: smooth initialisation of the embedding.
        kernel_size: kernel of the strided convolutions.
        time_stride: stride of the merged (post-collapse) time levels.
        stride: stride of the frequency and time levels.
        context: decoder rewrite context (kernel ``1 + 2 * context``).
        context_enc: encoder rewrite context.
        norm_starts: first level with GroupNorm layers.
        norm_groups: GroupNorm groups.
        dconv_mode: DConv in encoders (bit 1) and / or decoders (bit 2).
        dconv_depth: DConv blocks.
        dconv_comp: DConv channel compression.
        dconv_attn: first level whose DConv has LocalState attention.
        dconv_lstm: first level whose DConv has a BLSTM.
        dconv_init: initial DConv LayerScale.
        rescale: reference std of the initial weight rescaling (0: none).
        samplerate: sample rate in Hz.
        segment: default split chunk in seconds (metadata).

    Attributes:
        init_kwargs: every constructor argument as JSON-able values.
        segment_length: ``int(segment * samplerate)`` samples.
    """

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
        depth: int = 6,
        rewrite: bool = True,
        hybrid: bool = True,
        hybrid_old: bool = False,
        multi_freqs: list[float] | None = None,
        multi_freqs_depth: int = 2,
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
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: SegmentLike = 40,
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = {
            key: value for key, value in locals().items() if key not in ("self", "__class__")
        }
        self.init_kwargs["sources"] = list(sources)
        self.init_kwargs["segment"] = segment_json(parse_segment(segment))
        if multi_freqs is not None:
            self.init_kwargs["multi_freqs"] = list(multi_freqs)
        if hybrid_old and not hybrid:
            raise ValueError("hybrid_old=True needs hybrid=True")
        if hybrid and wiener_iters != end_iters:
            raise ValueError("wiener_iters and end_iters must be equal for hybrid models")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = parse_segment(segment)
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.channels = channels
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.hybrid = hybrid
        self.hybrid_old = hybrid_old
        if not hybrid:
            self.pre_padding = "none"
        else:
            self.pre_padding = "zeros" if hybrid_old else "reflect"

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
            hybrid=hybrid,
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

        def dconv_kw(index: int) -> dict[str, Any]:
            return {
                "lstm": index >= dconv_lstm,
                "attn": index >= dconv_attn,
                "depth": dconv_depth,
                "compress": dconv_comp,
                "init": dconv_init,
                "gelu": True,
            }

        self._build_branches(plan, dconv_kw)
        if rescale:
            rescale_convs(self, reference=rescale)

    def valid_length(self, length: int) -> int:
        """Any length works (the model pads internally): returns ``length``."""
        return int(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a mixture.

        Args:
            mix: (B, C, L) waveform.

        Returns:
            (B, S, C, L) stems.
        """
        self._check_input(mix)
        length = mix.shape[-1]
        inputs = self._normalize_inputs(mix)
        x, xt, skips = self._encode(inputs.x, inputs.xt if self.hybrid else None)
        # The decoders start from zeros: the bottom level only sees its skip connection.
        x = torch.zeros_like(x)
        xt = torch.zeros_like(x) if self.hybrid else None
        x, xt = self._decode(x, xt, skips)
        return self._combine(x, xt, inputs, length)
