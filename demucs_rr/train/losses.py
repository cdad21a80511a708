"""Per-source reconstruction losses with source weights (the loss stays outside the model).

Three waveform terms (``kind``): mean absolute error (``l1``, Demucs and MSST's RoFormers),
mean squared error (``mse``) and MSST's default quantile-masked MSE (``masked_mse``, its
``masked_loss``: SCNet, MDX23C); plus an optional multi-resolution STFT term (MSST's
BS-RoFormer / Mel-Band RoFormer ``multi_stft_resolution_loss``).

Dimension letters: B batch, S sources, C channels, T time, F frequency bins, N frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["KINDS", "MultiStft", "SourceLoss", "masked_error", "per_source_error"]

KINDS = ("l1", "mse", "masked_mse")
"""Waveform loss kinds of :class:`SourceLoss`."""


def per_source_error(estimate: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``mse``) error of each source.

    Args:
        estimate: (B, S, C, T) or (S, C, T).
        target: same shape as ``estimate``.
        kind: ``"l1"`` or ``"mse"``.

    Returns:
        (S,) error of each source, averaged over every other dimension.
    """
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape"
        )
    diff = estimate - target
    err = diff.abs() if kind == "l1" else diff.square() if kind == "mse" else None
    if err is None:
        raise ValueError(f"unknown loss kind {kind!r} (l1 or mse)")
    source_dim = 1 if err.dim() == 4 else 0
    return err.transpose(0, source_dim).reshape(err.shape[source_dim], -1).mean(dim=1)


def masked_error(
    estimate: torch.Tensor, target: torch.Tensor, quantile: float, coarse: bool = True
) -> torch.Tensor:
    """MSST's quantile-masked ("trimmed") MSE of each source.

    The squared error is averaged over (C, T) per item when ``coarse`` (else kept per sample);
    per source, the values at or above their ``quantile`` (linear interpolation, over the batch)
    count as zero, and the rest is averaged over all values. The mean over sources of the result
    is MSST's ``masked_loss(estimate, target, q=quantile, coarse=coarse)``.

    Args:
        estimate: (B, S, C, T).
        target: same shape.
        quantile: in (0, 1].
        coarse: average over (C, T) before masking.

    Returns:
        (S,) masked error of each source.
    """
    if estimate.shape != target.shape or estimate.dim() != 4:
        raise ValueError(
            f"masked_mse needs two (B, S, C, T) tensors, got {tuple(estimate.shape)} and "
            f"{tuple(target.shape)}"
        )
    err = (estimate - target).square().transpose(0, 1)  # (S, B, C, T)
    if coarse:
        err = err.mean(dim=(-1, -2))
    err = err.reshape(err.shape[0], -1)  # (S, B) or (S, B*C*T)
    limit = torch.quantile(err.detach(), quantile, dim=1, keepdim=True, interpolation="linear")
    return (err * (err < limit)).mean(dim=1)


@dataclass(frozen=True)
class MultiStft:
    """MSST's multi-resolution STFT loss settings (BS-RoFormer's forward with a target).

    For each window size w: an STFT with a periodic Hann window of w samples, FFT size
    ``max(w, min_n_fft)``, hop ``hop``, centred with reflect padding, normalised when
    ``normalized``; the term is the mean complex modulus of the difference of the two STFTs.
    The loss is the sum over window sizes, times ``weight``.
    """

    weight: float = 1.0
    windows: tuple[int, ...] = (4096, 2048, 1024, 512, 256)
    hop: int = 147
    min_n_fft: int = 2048
    normalized: bool = False

    def per_source(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(S,) unweighted sum over resolutions of the STFT L1 of each source.

        The STFT is linear, so the difference of the two STFTs is computed as the STFT of the
        difference (one transform instead of two; equal up to float rounding).

        Args:
            estimate: (B, S, C, T).
            target: same shape.
        """
        sources, length = estimate.shape[1], estimate.shape[-1]
        diff = (estimate - target).transpose(0, 1).reshape(-1, length)  # (S*B*C, T)
        total = estimate.new_zeros(sources)
        for window in self.windows:
            spec = torch.stft(
                diff,
                n_fft=max(window, self.min_n_fft),
                hop_length=self.hop,
                win_length=window,
                window=torch.hann_window(window, device=estimate.device),
                normalized=self.normalized,
                return_complex=True,
            )  # (S*B*C, F, N)
            total = total + spec.reshape(sources, -1).abs().mean(dim=1)
        return total


class SourceLoss:
    """Weighted mean over sources of a waveform loss, plus an optional multi-STFT term.

    With equal weights, ``l1`` (``mse``) equals ``nn.L1Loss()`` (``nn.MSELoss()``) over the
    whole batch (the Demucs loss); ``masked_mse`` equals MSST's ``masked_loss``; ``l1`` with
    ``multi_stft`` equals the loss MSST's RoFormers return from ``forward(mix, target)``.

    Args:
        sources: source names, in the model's output order.
        kind: one of :data:`KINDS`.
        weights: one non-negative weight per source, or None for equal weights.
        quantile: ``masked_mse``'s quantile (MSST's ``training.q``).
        coarse: ``masked_mse`` masks per-item means (MSST's ``training.coarse_loss_clip``).
        multi_stft: the multi-resolution STFT term, or None.
    """

    def __init__(
        self,
        sources: Sequence[str],
        kind: str = "l1",
        weights: Sequence[float] | None = None,
        *,
        quantile: float = 0.95,
        coarse: bool = True,
        multi_stft: MultiStft | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown loss kind {kind!r} ({', '.join(KINDS)})")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"need one non-negative weight per source {list(sources)} with a "
                f"positive sum, got {weights}"
            )
        if not 0 < quantile <= 1:
            raise ValueError(f"the masked loss quantile must be in (0, 1], got {quantile}")
        self.sources = list(sources)
        self.kind = kind
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.quantile = quantile
        self.coarse = coarse
        self.multi_stft = multi_stft

    def __call__(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of a batch.

        Args:
            estimate: (B, S, C, T) model output.
            target: (B, S, C, T) reference stems.

        Returns:
            ``{"loss": weighted mean (differentiable), "<kind>/<source>": per-source waveform
            term, "stft/<source>": per-source STFT term (unweighted; with ``multi_stft``)}``.
        """
        estimate, target = estimate.float(), target.float()
        if self.kind == "masked_mse":
            per_source = masked_error(estimate, target, self.quantile, self.coarse)  # (S,)
        else:
            per_source = per_source_error(estimate, target, self.kind)  # (S,)
        total = per_source
        stft = None
        if self.multi_stft is not None:
            stft = self.multi_stft.per_source(estimate, target)  # (S,)
            total = per_source + self.multi_stft.weight * stft
        weights = self.weights.to(per_source.device)
        out = {"loss": (total * weights).sum() / weights.sum()}
        for s, name in enumerate(self.sources):
            out[f"{self.kind}/{name}"] = per_source[s].detach()
            if stft is not None:
                out[f"stft/{name}"] = stft[s].detach()
        return out
