"""Cross-domain transformer of HTDemucs, weight-compatible with the official
``demucs.transformer.CrossTransformerEncoder``.

The spectrogram branch (B, C, F, T1) becomes T1·F tokens (frame-major: token ``t * F + f``) and the
waveform branch (B, C, T2) T2 tokens. After an input LayerNorm and positional embeddings (2-D
sinusoids for the spectrogram, 1-D for the waveform), layers alternate between self-attention
within each branch and cross-attention from each branch to the other branch's tokens.

Shapes use B = batch, N = tokens, D = model dimension (channels).
"""

from __future__ import annotations

import math
import random
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.attention import attend
from demucs_rr.models.dconv import LayerScale, add_scaled
from demucs_rr.models.hybrid_layers import ScaledEmbedding

__all__ = [
    "CrossTransformerEncoder",
    "CrossTransformerEncoderLayer",
    "SelfTransformerEncoderLayer",
    "TokenGroupNorm",
    "sin_embedding_1d",
    "sin_embedding_2d",
]


def sin_embedding_1d(
    length: int,
    dim: int,
    shift: int = 0,
    device: torch.device | None = None,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """(length, 1, dim) sinusoidal embedding: cosines of the D/2 phases, then their sines.

    Phase ``i`` of position ``p`` is ``p / max_period ** (i / (D/2 - 1))``.
    """
    pos = shift + torch.arange(length, device=device).view(-1, 1, 1)
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding_2d(
    dim: int,
    height: int,
    width: int,
    device: torch.device | None = None,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """(1, dim, height, width) embedding: channels [0, D/2) encode the column (time) index with
    interleaved sin / cos, channels [D/2, D) the row (frequency) index.

    Raises:
        ValueError: if ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sinusoidal embedding needs a dimension divisible by 4, got {dim}")
    pe = torch.zeros(dim, height, width)
    half = dim // 2
    div_term = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))
    pos_w = torch.arange(0.0, width).unsqueeze(1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)
    pe[0:half:2] = torch.sin(pos_w * div_term).t().unsqueeze(1).repeat(1, height, 1)
    pe[1:half:2] = torch.cos(pos_w * div_term).t().unsqueeze(1).repeat(1, height, 1)
    pe[half::2] = torch.sin(pos_h * div_term).t().unsqueeze(2).repeat(1, 1, width)
    pe[half + 1 :: 2] = torch.cos(pos_h * div_term).t().unsqueeze(2).repeat(1, 1, width)
    return pe[None].to(device)


def cape_embedding(
    length: int,
    dim: int,
    batch: int,
    mean_normalize: bool,
    augment: bool = False,
    max_global_shift: float = 0.0,
    max_local_shift: float = 0.0,
    max_scale: float = 1.0,
    device: torch.device | None = None,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """(length, batch, dim) continuous augmented positional embedding (CAPE); the random
    shifts / scaling (training only) are drawn with torch's generator."""
    pos = torch.arange(length, dtype=torch.float64).view(-1, 1, 1).repeat(1, batch, 1)
    if mean_normalize:
        pos = pos - pos.mean(dim=0, keepdim=True)
    if augment:
        shift = (torch.rand(1, batch, 1, dtype=torch.float64) * 2 - 1) * max_global_shift
        local = (torch.rand(length, batch, 1, dtype=torch.float64) * 2 - 1) * max_local_shift
        log_scale = (torch.rand(1, batch, 1, dtype=torch.float64) * 2 - 1) * math.log(max_scale)
        pos = (pos + shift + local) * torch.exp(log_scale)
    pos = pos.to(device)
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).float()


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over (B, N, D) tokens: with one group it normalises all tokens and channels of
    each batch item together (per-channel affine)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _norm(group_norm: int, dim: int, eps: float) -> nn.Module:
    return (
        TokenGroupNorm(int(group_norm), dim, eps=eps) if group_norm else nn.LayerNorm(dim, eps=eps)
    )


class SelfTransformerEncoderLayer(nn.Module):
    """Pre- or post-norm self-attention layer (batch first), with LayerScale and an optional
    output GroupNorm; named as ``torch.nn.TransformerEncoderLayer``.

    Args:
        d_model: model dimension D.
        nhead: attention heads.
        dim_feedforward: hidden size of the feed-forward block.
        dropout: dropout of attention, feed-forward and residual branches.
        activation: feed-forward activation.
        group_norm: groups of TokenGroupNorm replacing the LayerNorms (0: LayerNorm).
        norm_first: normalise before attention / feed-forward.
        norm_out: add a 1-group TokenGroupNorm at the output (with ``norm_first``).
        layer_norm_eps: epsilon of the norms.
        layer_scale: scale both residual branches by LayerScale vectors.
        init_values: initial LayerScale value.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Any = F.relu,
        group_norm: int = 0,
        norm_first: bool = False,
        norm_out: bool = False,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm_first = norm_first
        self.norm1 = _norm(group_norm, d_model, layer_norm_eps)
        self.norm2 = _norm(group_norm, d_model, layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation
        self.norm_out = TokenGroupNorm(1, d_model) if norm_first and norm_out else None
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()

    def _sa_block(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.dropout1(attend(self.self_attn, x, x)))

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return cast(torch.Tensor, self.dropout2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        if self.norm_first:
            x = add_scaled(self.gamma_1, x, self._sa_block(self.norm1(x)))
            x = add_scaled(self.gamma_2, x, self._ff_block(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(add_scaled(self.gamma_1, x, self._sa_block(x)))
        return cast(torch.Tensor, self.norm2(add_scaled(self.gamma_2, x, self._ff_block(x))))


class CrossTransformerEncoderLayer(nn.Module):
    """Cross-attention layer: queries from one branch, keys / values from the other.

    Arguments as :class:`SelfTransformerEncoderLayer`; with ``norm_first`` the queries go
    through ``norm1``, the keys / values through ``norm2`` and the feed-forward input through
    ``norm3``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Any = F.relu,
        group_norm: int = 0,
        norm_first: bool = False,
        norm_out: bool = False,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm_first = norm_first
        self.norm1 = _norm(group_norm, d_model, layer_norm_eps)
        self.norm2 = _norm(group_norm, d_model, layer_norm_eps)
        self.norm3 = _norm(group_norm, d_model, layer_norm_eps)
        self.norm_out = TokenGroupNorm(1, d_model) if norm_first and norm_out else None
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation

    def _ca_block(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.dropout1(attend(self.cross_attn, q, k)))

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return cast(torch.Tensor, self.dropout2(x))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q (B, N, D) attends to k (B, M, D) -> (B, N, D)."""
        if self.norm_first:
            x = add_scaled(self.gamma_1, q, self._ca_block(self.norm1(q), self.norm2(k)))
            x = add_scaled(self.gamma_2, x, self._ff_block(self.norm3(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(add_scaled(self.gamma_1, q, self._ca_block(q, k)))
        return cast(torch.Tensor, self.norm2(add_scaled(self.gamma_2, x, self._ff_block(x))))


class CrossTransformerEncoder(nn.Module):
    """Alternating self / cross attention over the spectrogram and waveform tokens.

    Layer ``l`` is a self-attention layer when ``l % 2 == (1 if cross_first else 0)``, else a
    cross-attention layer in which each branch attends to the other's input to that layer.

    Args:
        dim: model dimension D (channels of both branches; a multiple of 4 and ``num_heads``).
        emb: waveform positional embedding: ``"sin"``, ``"cape"`` or ``"scaled"`` (learnt).
        hidden_scale: feed-forward size as a multiple of D.
        num_heads: attention heads.
        num_layers: number of layers per branch.
        cross_first: start with a cross-attention layer.
        dropout: dropout rate (training only).
        max_positions: table size of the ``"scaled"`` embedding.
        norm_in: input LayerNorms.
        norm_in_group: input TokenGroupNorm groups (when not ``norm_in``; 0: identity).
        group_norm: TokenGroupNorm groups replacing the layer LayerNorms (0: LayerNorm).
        norm_first: pre-norm layers.
        norm_out: output GroupNorm of each layer.
        max_period: longest period of the sinusoidal embeddings.
        layer_scale: LayerScale on the residual branches.
        gelu: GELU feed-forward activation (else ReLU).
        sin_random_shift: random shift range of the 1-D embedding (drawn with ``random``).
        weight_pos_embed: weight of the positional embeddings.
        cape_mean_normalize, cape_augment, cape_glob_loc_scale: CAPE options.
    """

    def __init__(
        self,
        dim: int,
        emb: str = "sin",
        hidden_scale: float = 4.0,
        num_heads: int = 8,
        num_layers: int = 6,
        cross_first: bool = False,
        dropout: float = 0.0,
        max_positions: int = 1000,
        norm_in: bool = True,
        norm_in_group: int = 0,
        group_norm: int = 0,
        norm_first: bool = False,
        norm_out: bool = False,
        max_period: float = 10000.0,
        layer_scale: bool = False,
        gelu: bool = True,
        sin_random_shift: int = 0,
        weight_pos_embed: float = 1.0,
        cape_mean_normalize: bool = True,
        cape_augment: bool = True,
        cape_glob_loc_scale: tuple[float, float, float] = (5000.0, 1.0, 1.4),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dimension {dim} is not a multiple of {num_heads}")
        self.num_layers = num_layers
        self.classic_parity = 1 if cross_first else 0
        self.emb = emb
        self.max_period = max_period
        self.weight_pos_embed = weight_pos_embed
        self.sin_random_shift = sin_random_shift
        self.cape_mean_normalize = cape_mean_normalize
        self.cape_augment = cape_augment
        self.cape_glob_loc_scale = tuple(cape_glob_loc_scale)
        if emb == "scaled":
            self.position_embeddings = ScaledEmbedding(max_positions, dim, scale=0.2)
        elif emb not in ("sin", "cape"):
            raise ValueError(f"unknown transformer positional embedding {emb!r}")
        self.norm_in: nn.Module = nn.Identity()
        self.norm_in_t: nn.Module = nn.Identity()
        if norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in = TokenGroupNorm(int(norm_in_group), dim)
            self.norm_in_t = TokenGroupNorm(int(norm_in_group), dim)
        common: dict[str, Any] = {
            "d_model": dim,
            "nhead": num_heads,
            "dim_feedforward": int(dim * hidden_scale),
            "dropout": dropout,
            "activation": F.gelu if gelu else F.relu,
            "group_norm": group_norm,
            "norm_first": norm_first,
            "norm_out": norm_out,
            "layer_scale": layer_scale,
        }
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for index in range(num_layers):
            klass = (
                SelfTransformerEncoderLayer
                if index % 2 == self.classic_parity
                else CrossTransformerEncoderLayer
            )
            self.layers.append(klass(**common))
            self.layers_t.append(klass(**common))

    def _time_embedding(
        self, length: int, batch: int, dim: int, device: torch.device
    ) -> torch.Tensor:
        """(B, T2, D) positional embedding of the waveform tokens."""
        if self.emb == "sin":
            # Drawn even when the range is empty: each forward consumes Python's random state.
            shift = random.randrange(self.sin_random_shift + 1)
            emb = sin_embedding_1d(
                length, dim, shift=shift, device=device, max_period=self.max_period
            )
        elif self.emb == "cape":
            glob, loc, scale = self.cape_glob_loc_scale
            augment = self.training and self.cape_augment
            emb = cape_embedding(
                length,
                dim,
                batch,
                self.cape_mean_normalize,
                augment,
                glob,
                loc,
                scale,
                device=device,
                max_period=self.max_period,
            )
        else:
            emb = self.position_embeddings(torch.arange(length, device=device))[:, None]
        return emb.permute(1, 0, 2)

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix both branches.

        Args:
            x: (B, D, F, T1) spectrogram-branch features.
            xt: (B, D, T2) waveform-branch features.

        Returns:
            (x, xt) with the same shapes.
        """
        batch, dim, bins, frames = x.shape
        pos_2d = sin_embedding_2d(dim, bins, frames, x.device, self.max_period).to(x.dtype)
        pos_2d = pos_2d.permute(0, 3, 2, 1).reshape(1, frames * bins, dim)
        x = x.permute(0, 3, 2, 1).reshape(batch, frames * bins, dim)
        x = self.norm_in(x) + self.weight_pos_embed * pos_2d

        length = xt.shape[-1]
        xt = xt.permute(0, 2, 1)
        pos_1d = self._time_embedding(length, batch, dim, x.device).to(xt.dtype)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * pos_1d

        for index in range(self.num_layers):
            if index % 2 == self.classic_parity:
                x = self.layers[index](x)
                xt = self.layers_t[index](xt)
            else:
                old_x = x
                x = self.layers[index](x, xt)
                xt = self.layers_t[index](xt, old_x)

        x = x.reshape(batch, frames, bins, dim).permute(0, 3, 2, 1)
        return x, xt.permute(0, 2, 1)
