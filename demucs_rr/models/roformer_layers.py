"""Layers shared by BS-RoFormer and Mel-Band RoFormer, state-dict compatible with MSST.

The module tree (attribute names, registration order, ``nn.Sequential`` indices) reproduces
ZFTurbo's Music-Source-Separation-Training ``models/bs_roformer`` so that released checkpoints
load with a strict ``load_state_dict``; the code itself is ours (no einops, no
rotary-embedding-torch). Index placeholders (``nn.Identity`` / ``nn.Dropout``) stand where MSST
has a reshape or a dropout, so that the weight indices stay the same.

Dimension letters: B batch (times the axis not attended over), N tokens of a sequence,
D model dimension, H heads, E head dimension, K band input features.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "BandSplit",
    "FeedForward",
    "LinearAttention",
    "MaskEstimator",
    "RMSNorm",
    "Rope",
    "RotaryEmbedding",
    "Transformer",
]

_ONEDNN = bool(getattr(torch._C, "_has_mkldnn", False)) and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)
_ONEDNN_MIN_MACS = 1 << 20  # below this, call overhead outweighs oneDNN's faster kernels
_PACK_MIN_ROWS = 8192
_ACTIVATIONS = {"none": (lambda x: x, ""), "gelu": (F.gelu, "none"), "tanh": (torch.tanh, "")}


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower precision autocast asks for on ``device``'s type, None when it is off."""
    kind = device.type
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch < 2.4: CPU and CUDA only
        if kind == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if kind == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None


def linear(
    x: torch.Tensor, layer: nn.Linear, activation: str = "none", precise: bool = False
) -> torch.Tensor:
    """``activation(layer(x))``; activation ``none``, ``gelu`` (exact erf form) or ``tanh``.

    Under autocast the product runs in its lower precision (``precise``: in float32 instead)
    on x flattened to 2-D (PyTorch's autocast of a 3-D input without bias falls back to a
    batched product that copies the weight per batch item). Inference on the CPU goes through
    oneDNN's matmul with the activation fused (fp32: 10-20 % faster than the BLAS path on
    AVX-512 CPUs, the same arithmetic up to summation order). Training uses ``F.linear``.
    """
    weight: torch.Tensor = layer.weight
    bias: torch.Tensor | None = layer.bias
    low = _autocast_dtype(x.device)
    dtype = torch.float32 if precise and low is not None else low
    if dtype is not None:
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    shape = (*x.shape[:-1], weight.size(0))
    flat = x.reshape(-1, x.size(-1))
    if (
        _ONEDNN
        and flat.size(0) * weight.numel() >= _ONEDNN_MIN_MACS
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        if flat.size(0) >= _PACK_MIN_ROWS:  # a blocked weight layout pays off on long inputs
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, flat.size(0))
        algorithm = _ACTIVATIONS[activation][1]
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            flat, weight, bias, activation, [], algorithm
        )
        return out.view(shape)
    with torch.autocast(x.device.type, enabled=False) if precise else nullcontext():
        result: torch.Tensor = _ACTIVATIONS[activation][0](F.linear(flat, weight, bias))
    return result.view(shape)


Rope = torch.Tensor
"""Rotary table ``exp(i * position * freq)``: (N, 1, 1, E / 2) complex."""


class RMSNorm(nn.Module):
    """``x / ||x|| * sqrt(D) * gamma`` over the last dimension (MSST's L2-normalise form)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        weight: torch.Tensor = self.gamma * self.scale
        return F.normalize(x, dim=-1) * weight


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with interleaved pairs (rotary-embedding-torch's 'lang' form).

    Feature pairs (x[2j], x[2j+1]) at position n turn by the angle ``n * freqs[j]``.
    ``freqs`` (E / 2) is a persistent, non-trainable parameter as in MSST (its checkpoints carry
    it under every attention layer, the module being shared by the layers of one axis).
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        # on the CPU even in a meta-device build: E / 2 values, and torch's meta path for this
        # arithmetic imports its compiler stack (half a second of a process that loads a model)
        exponents = torch.arange(0, dim, 2, device="cpu")[: dim // 2].float() / dim
        self.freqs = nn.Parameter(1.0 / (theta**exponents), requires_grad=False)

    def tables(self, length: int, device: torch.device) -> Rope:
        """``cos + i sin`` of the angles of positions 0 .. length - 1: (N, 1, 1, E / 2)."""
        freqs = self.freqs.detach().float().to(device)
        positions = torch.arange(length, device=device, dtype=torch.float32)
        angles = positions[:, None] * freqs  # (N, E / 2), float32 as in MSST
        return torch.polar(torch.ones_like(angles), angles).view(length, 1, 1, -1)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate (B, N, ..., E) features by their position N; x's dtype out.

    One complex product per pair: (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) +
    i (x0 sin + x1 cos), MSST's ``x * cos + rotate_half(x) * sin``.
    """
    pairs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    pairs = pairs.reshape(*x.shape[:-1], -1, 2)
    turned = torch.view_as_complex(pairs) * rope.to(torch.promote_types(pairs.dtype, rope.dtype))
    return torch.view_as_real(turned).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Gated multi-head self-attention with optional rotary positions (pre-norm, no residual).

    Keys: ``rotary_embed.freqs``, ``norm.gamma``, ``to_qkv.weight``, ``to_gates.{weight,bias}``,
    ``to_out.0.weight``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        rotary_embed: RotaryEmbedding | None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(
            nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); ``rope``: this axis' rotary tables when it has any."""
        batch, length, _ = x.shape
        x = self.norm(x)
        qkv = linear(x, self.to_qkv).view(batch, length, 3, self.heads, self.dim_head)
        if rope is not None:
            q, k = apply_rope(qkv[:, :, :2], rope).unbind(2)  # (B, N, H, E) each
        else:
            q, k = qkv[:, :, 0], qkv[:, :, 1]
        v = qkv[:, :, 2]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
        ).transpose(1, 2)  # (B, N, H, E)
        gates = linear(x, self.to_gates).sigmoid().unsqueeze(-1)  # (B, N, H, 1)
        out = (out * gates).reshape(batch, length, self.heads * self.dim_head)
        out = linear(out, cast(nn.Linear, self.to_out[0]))
        return F.dropout(out, self.dropout, self.training)


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al. 2021): attends over feature channels.

    Queries and keys are L2-normalised over the tokens, queries scaled by ``exp(temperature)``
    per head, and the E x E attention uses the fixed scale 8. Keys: ``temperature``,
    ``norm.gamma``, ``to_qkv.0.weight``, ``to_out.1.weight``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.scale = 8.0
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, 3 * heads * dim_head, bias=False), nn.Identity())
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); ``rope`` is ignored (no positions)."""
        batch, length, _ = x.shape
        x = self.norm(x)
        qkv = linear(x, cast(nn.Linear, self.to_qkv[0]))
        qkv = qkv.view(batch, length, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)  # (B, H, E, N) each
        q = F.normalize(q, dim=-1) * self.temperature.exp()
        k = F.normalize(k, dim=-1)
        sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, E, E)
        attn = F.dropout(sim.softmax(dim=-1), self.dropout, self.training)
        out = torch.matmul(attn, v)  # (B, H, E, N)
        out = out.permute(0, 3, 1, 2).reshape(batch, length, self.heads * self.dim_head)
        return linear(out, cast(nn.Linear, self.to_out[1]))


class FeedForward(nn.Module):
    """Pre-norm MLP D -> mult * D -> D with GELU. Keys: ``net.0.gamma``, ``net.{1,4}.*``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.dropout = dropout
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        net = self.net
        hidden = linear(net[0](x), cast(nn.Linear, net[1]), "gelu")
        hidden = F.dropout(hidden, self.dropout, self.training)
        out = linear(hidden, cast(nn.Linear, net[4]))
        return F.dropout(out, self.dropout, self.training)


class Transformer(nn.Module):
    """``depth`` residual (attention, feed-forward) pairs, then an optional RMSNorm.

    Keys: ``layers.{i}.0.*`` (attention), ``layers.{i}.1.net.*`` (feed-forward), and
    ``norm.gamma`` when ``norm_output`` (Mel-Band RoFormer; BS-RoFormer has none).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        *,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        norm_output: bool = True,
        rotary_embed: RotaryEmbedding | None = None,
        linear_attn: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            attn: nn.Module
            if linear_attn:
                attn = LinearAttention(dim, heads, dim_head, attn_dropout)
            else:
                attn = Attention(dim, heads, dim_head, rotary_embed, attn_dropout)
            self.layers.append(nn.ModuleList([attn, FeedForward(dim, 4, ff_dropout)]))
        # a plain tuple: the module is registered (once per layer) by the attention layers only
        self._rotary = () if linear_attn or rotary_embed is None else (rotary_embed,)
        self.norm: nn.Module = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) sequences -> (B, N, D)."""
        rope = self._rotary[0].tables(x.size(1), x.device) if self._rotary else None
        for pair in self.layers:
            attn, ff = cast(nn.ModuleList, pair)
            x = attn(x, rope) + x
            x = ff(x) + x
        result: torch.Tensor = self.norm(x)
        return result


class BandSplit(nn.Module):
    """Per band: RMSNorm + Linear K_b -> D. (B, T, sum K) -> (B, T, bands, D).

    Keys: ``to_features.{b}.0.gamma``, ``to_features.{b}.1.{weight,bias}``.
    """

    def __init__(self, dim: int, dim_inputs: tuple[int, ...]) -> None:
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(dim_in), nn.Linear(dim_in, dim)) for dim_in in dim_inputs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, sum K) -> (B, T, bands, D)."""
        parts = torch.split(x, list(self.dim_inputs), dim=-1)
        features = []
        for part, net in zip(parts, self.to_features, strict=True):
            norm, layer = cast(nn.Sequential, net)
            features.append(linear(norm(part), cast(nn.Linear, layer)))
        return torch.stack(features, dim=-2)


def _mlp(dim: int, dim_out: int, dim_hidden: int, num_linear: int) -> nn.Sequential:
    """``num_linear`` Linear layers D -> hidden ... -> dim_out with Tanh between them."""
    dims = (dim, *((dim_hidden,) * (num_linear - 1)), dim_out)
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if index < num_linear - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band: MLP D -> ... -> 2 K_b, then GLU -> K_b. (B, T, bands, D) -> (B, T, sum K).

    ``num_linear`` Linear layers per band (BS-RoFormer: ``mask_estimator_depth``; Mel-Band
    RoFormer: ``mask_estimator_depth + 1``, as in MSST). Keys:
    ``to_freqs.{b}.0.{2 i}.{weight,bias}``.
    """

    def __init__(
        self, dim: int, dim_inputs: tuple[int, ...], num_linear: int, mlp_expansion_factor: int
    ) -> None:
        super().__init__()
        self.dim_inputs = dim_inputs
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, 2 * dim_in, hidden, num_linear), nn.GLU(dim=-1))
            for dim_in in dim_inputs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, bands, D) -> (B, T, sum K)."""
        bands = x.unbind(dim=-2)
        masks = [
            _run_mlp(next(iter(net.children())), band)
            for band, net in zip(bands, self.to_freqs, strict=True)
        ]
        return torch.cat(masks, dim=-1)


def _run_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Linear / Tanh stack of :func:`_mlp`, then GLU: (..., D) -> (..., K)."""
    layers = [layer for layer in mlp.children() if isinstance(layer, nn.Linear)]
    for layer in layers[:-1]:
        x = linear(x, layer, "tanh")
    return F.glu(linear(x, layers[-1], precise=True), dim=-1)
