"""Per-block state of streaming Conv-TasNet: each causal temporal block with its own history.

A :class:`BlockStream` runs one :class:`~demucs_rr.models.tasnet_layers.TemporalBlock` on new
frames, time-major ((k, channels) activations: every 1x1 conv is one matrix product, cLN one
``layer_norm``), and owns a :class:`BlockHistory`: the left context of the block's dilated
depthwise conv, which is all a causal block needs from the past.

Dimension letters: k new frames, B' bottleneck channels, H hidden channels, P kernel size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.tasnet_layers import EPS, ChannelwiseLayerNorm, TemporalBlock

__all__ = ["BlockHistory", "BlockStream", "frame_norm", "pointwise"]


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A bias-free 1x1 Conv1d applied to time-major (k, in) frames -> (k, out)."""
    return x @ conv.weight[:, :, 0].t()


def frame_norm(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frame-local norm (cLN, BatchNorm1d in eval mode, identity) for time-major (k, ch)."""
    if isinstance(norm, ChannelwiseLayerNorm):
        gamma, beta = norm.gamma.view(-1), norm.beta.view(-1)
        return lambda x: F.layer_norm(x, gamma.shape, gamma, beta, EPS)
    return norm  # BatchNorm1d takes (batch, channels); Identity


class BlockStream:
    """One causal :class:`TemporalBlock` run on new time-major frames, with its own history.

    Holds the block's weights as time-major views, taken once (they follow in-place updates
    such as ``load_state_dict``; build the streamer after moving the model to its device), and
    the left context of its dilated depthwise conv: its causal padding, ``(P - 1) * dilation``
    frames.
    """

    def __init__(self, block: TemporalBlock, device: torch.device, dtype: torch.dtype) -> None:
        dsconv = block.dsconv
        self.kernel, self.dilation = dsconv.kernel_size, dsconv.dilation
        self.w_in = block.conv_in.weight[:, :, 0].t()  # (B', H)
        self.act_in, self.norm_in = block.act_in, frame_norm(block.norm_in)
        self.taps = [dsconv.depthwise.weight[:, 0, j] for j in range(self.kernel)]  # P x (H,)
        self.act_out, self.norm_out = dsconv.act, frame_norm(dsconv.norm)
        self.w_out = dsconv.pointwise.weight[:, :, 0].t()  # (H, B')
        self.history = BlockHistory(dsconv.padding, block.conv_in.out_channels, device, dtype)

    def reset(self) -> None:
        """Forget the past frames (a new stream starts on zeros)."""
        self.history.reset()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """New frames x (k, B') -> residual branch (k, B'); appends them to the history."""
        h = self.norm_in(self.act_in(x @ self.w_in))  # (k, H)
        inputs = self.history.taps(h, self.kernel, self.dilation)  # P x (k, H)
        y = inputs[0] * self.taps[0]  # dilated depthwise conv, tap by tap
        for tap_input, weight in zip(inputs[1:], self.taps[1:], strict=True):
            y.addcmul_(tap_input, weight)
        self.history.push(h)
        out: torch.Tensor = self.norm_out(self.act_out(y)) @ self.w_out  # (k, B')
        return out


class BlockHistory:
    """Left context of one causal dilated depthwise conv: its last ``span`` input frames.

    Kept in a ring buffer (zeros at the start, as the causal zero padding), so that a block
    only reads the frames its taps need and writes its own frames, whatever the dilation.
    """

    def __init__(self, span: int, channels: int, device: torch.device, dtype: torch.dtype) -> None:
        self.span = span
        self.ring = torch.zeros(span, channels, device=device, dtype=dtype)  # (span, H)
        self.head = 0  # ring index of the oldest frame

    def reset(self) -> None:
        """Back to the start of a stream: all-zero context."""
        self.ring.zero_()
        self.head = 0

    def _ring(self, start: int, length: int) -> list[torch.Tensor]:
        """Frames [start, start + length) of the context, oldest = 0 (at most 2 pieces)."""
        first = (self.head + start) % self.span
        cut = min(length, self.span - first)
        pieces = [self.ring[first : first + cut]]
        if cut < length:
            pieces.append(self.ring[: length - cut])
        return pieces

    def taps(self, h: torch.Tensor, kernel: int, dilation: int) -> list[torch.Tensor]:
        """Inputs of the ``kernel`` taps for new frames h (k, H): tap j reads frame
        ``t - (kernel - 1 - j) * dilation`` for every new frame t. Each is (k, H)."""
        k, out = h.size(0), []
        for j in range(kernel):
            start = j * dilation  # in the coordinates of context (span frames) + new frames
            pieces = self._ring(start, min(k, self.span - start)) if start < self.span else []
            if start + k > self.span:
                pieces.append(h[max(start, self.span) - self.span : start + k - self.span])
            out.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
        return out

    def push(self, h: torch.Tensor) -> None:
        """Append new frames h (k, H), dropping the oldest ones."""
        k = h.size(0)
        if not self.span:
            return
        if k >= self.span:
            self.ring.copy_(h[k - self.span :])
            self.head = 0
            return
        cut = min(k, self.span - self.head)
        self.ring[self.head : self.head + cut] = h[:cut]
        self.ring[: k - cut] = h[cut:]
        self.head = (self.head + k) % self.span
