"""Block-by-block (streaming) separation with a causal Conv-TasNet.

A causal :class:`~demucs_rr.models.tasnet.ConvTasNet` (``causal=True`` and a frame-local norm,
``cLN``) only looks at the past, so it can separate audio as it arrives. The
:class:`StreamingSeparator` keeps, between calls:

- the encoder input buffer: the samples not yet consumed by a complete frame (at most L - 1;
  after a frame is computed, the ``L - L/2`` samples it shares with the next one, plus any
  samples that do not yet fill a new hop);
- for every dilated depthwise conv, its left context: the last ``(P - 1) * dilation`` frames of
  its input (zeros at the start, as the causal zero padding of the offline model), in a ring
  buffer so that a block reads only the frames its taps need;
- the decoder overlap-add tail: the last ``L - L/2`` samples of the latest frame, which the next
  frame still adds to.

No normalisation statistic crosses frames, so nothing else is carried: the official ``cLN``
(kaituoxu's ``ChannelwiseLayerNorm``) normalises each frame over its channels; it is not the
cumulative layer norm of the Conv-TasNet paper, so there are no running sums to keep. New frames
are computed time-major, (k, channels), with the model's own weights: each 1x1 conv is one matrix
product and cLN one ``layer_norm`` (same formula as the offline module).

Concatenating the outputs of :meth:`StreamingSeparator.process` for any block sizes and then
:meth:`StreamingSeparator.flush` gives the offline ``model(mix)`` of the whole signal (up to
float rounding).

Latency. Output sample ``t`` (with ``t`` in ``[k*hop, (k+1)*hop)``, hop = L // 2) is final once
frame ``k`` is computed, i.e. once input sample ``k*hop + L - 1`` has arrived, and not before:
frame k reads it. Its delay is ``k*hop + L - 1 - t``, between ``L - hop`` (last sample of a hop)
and ``L - 1`` (first sample of a hop). The algorithmic latency is therefore ``L - 1`` samples
(19 samples = 0.431 ms for L = 20 at 44.1 kHz) in the worst case; with ``fixed_latency=True``
every output is delayed by exactly that, so each block returns as many samples as it took. Block
buffering (up to ``block - 1`` samples) and compute time come on top, as for any block
processor.

Dimension letters: S sources, C audio channels, n samples of a block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import SeparationModel
from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.models.tasnet_layers import overlap_and_add
from demucs_rr.separate.causal_blocks import BlockStream, frame_norm, pointwise

__all__ = ["StreamError", "StreamReport", "StreamingSeparator", "stream_separate"]

#: Norms that never mix frames, so that a causal model stays causal.
FRAME_LOCAL_NORMS = ("cLN", "BN", "id")


class StreamError(ConfigError):
    """Streaming cannot proceed: unsuitable model, or a block that does not fit the stream."""


def check_streamable(model: SeparationModel) -> ConvTasNet:
    """Return ``model`` if it can be streamed, else raise :class:`StreamError`."""
    if not isinstance(model, ConvTasNet):
        raise StreamError(
            f"streaming needs a causal Conv-TasNet, got a {type(model).__name__} model"
        )
    if not model.causal:
        raise StreamError("streaming needs a causal model (causal=True)")
    if model.norm_type not in FRAME_LOCAL_NORMS:
        raise StreamError(
            f"streaming needs a frame-local norm ({', '.join(FRAME_LOCAL_NORMS)}), got "
            f"norm_type={model.norm_type!r}, which normalises over the whole signal"
        )
    if model.norm_type == "BN" and model.training:
        raise StreamError("a BatchNorm model must be in eval mode to stream: call model.eval()")
    return model


class StreamingSeparator:
    """Separate a causal Conv-TasNet stream block by block.

    Args:
        model: a causal :class:`ConvTasNet` (``causal=True``, norm ``cLN``/``BN``/``id``).
        fixed_latency: delay every output by exactly :attr:`latency_samples` (zeros first), so
            that each :meth:`process` call returns as many samples as it received (what an
            audio callback needs). Otherwise every sample is returned as soon as it is final.

    Example:
        >>> streamer = StreamingSeparator(model)
        >>> parts = [streamer.process(block) for block in blocks]  # each (S, C, n_out)
        >>> stems = torch.cat(parts + [streamer.flush()], dim=-1)  # == model(mix[None])[0]

    Raises:
        StreamError: if the model cannot be streamed (see :func:`check_streamable`).
    """

    def __init__(self, model: SeparationModel, *, fixed_latency: bool = False) -> None:
        self.model = check_streamable(model)
        self.fixed_latency = fixed_latency
        self.hop = self.model.L // 2
        param = next(self.model.parameters())
        self._device, self._dtype = param.device, param.dtype
        self._blocks = [
            BlockStream(block, self._device, self._dtype) for block in self.model.separator.blocks
        ]
        self.reset()

    # ------------------------------------------------------------------ public metadata

    @property
    def latency_samples(self) -> int:
        """Worst-case algorithmic latency in samples: ``L - 1`` (see the module docstring)."""
        return self.model.L - 1

    @property
    def min_latency_samples(self) -> int:
        """Best-case algorithmic latency in samples: ``L - L // 2`` (last sample of a hop)."""
        return self.model.L - self.hop

    @property
    def latency_ms(self) -> float:
        """:attr:`latency_samples` in milliseconds at the model's sample rate."""
        return 1000.0 * self.latency_samples / self.model.samplerate

    @property
    def received(self) -> int:
        """Samples received since the start of the stream."""
        return self._received

    # ------------------------------------------------------------------ stream control

    def reset(self) -> None:
        """Forget the current stream; the next :meth:`process` starts a new one."""
        model, dev = self.model, self._device
        self._pending = torch.zeros(model.audio_channels, 0, device=dev, dtype=self._dtype)
        for block in self._blocks:
            block.reset()
        self._tail: torch.Tensor | None = None  # (S, C, L - hop) once a frame exists
        delay = self.latency_samples if self.fixed_latency else 0
        self._fifo = torch.zeros(model.num_sources, model.audio_channels, delay)
        self._received = 0
        self._emitted = 0  # samples released by the decoder (before the fixed delay)
        self._samplerate: int | None = None

    @torch.no_grad()
    def process(self, block: torch.Tensor, samplerate: int | None = None) -> torch.Tensor:
        """Feed ``block`` and return the output samples that became final.

        Args:
            block: (C, n) samples, n >= 1, C = the model's ``audio_channels``.
            samplerate: sample rate of ``block`` in Hz, checked against the model's and
                against the previous calls of this stream (optional).

        Returns:
            (S, C, n_out) float32 CPU tensor continuing the previous outputs. With
            ``fixed_latency`` n_out == n; otherwise the stream's total output lags its total
            input by between ``L - L//2`` and ``L - 1`` samples once a frame exists.

        Raises:
            StreamError: empty or badly shaped block, or a sample-rate mismatch.
        """
        self._check_block(block, samplerate)
        buf = torch.cat([self._pending, block.to(self._device, self._dtype)], dim=-1)
        self._received += block.size(-1)
        out = self._advance(buf)
        if not self.fixed_latency:
            return out
        self._fifo = torch.cat([self._fifo, out], dim=-1)
        ready, self._fifo = self._fifo[..., : block.size(-1)], self._fifo[..., block.size(-1) :]
        return ready

    def flush(self) -> torch.Tensor:
        """End the stream: return the remaining samples and reset.

        Returns:
            (S, C, n_rest) float32 CPU tensor: the decoder tail and then zeros (the offline
            model zero-pads its output to the input length), so that all outputs together
            hold ``received`` samples (``received + latency_samples`` with ``fixed_latency``).
        """
        rest = self._received - self._emitted
        out = torch.zeros(self.model.num_sources, self.model.audio_channels, rest)
        if self._tail is not None:
            tail = self._tail[..., :rest].float().cpu()
            out[..., : tail.size(-1)] = tail
        if self.fixed_latency:
            out = torch.cat([self._fifo, out], dim=-1)
        self.reset()
        return out

    # ------------------------------------------------------------------ internals

    def _check_block(self, block: torch.Tensor, samplerate: int | None) -> None:
        """Raise :class:`StreamError` unless ``block`` continues this stream."""
        channels = self.model.audio_channels
        if not isinstance(block, torch.Tensor) or block.dim() != 2:
            shape = tuple(block.shape) if isinstance(block, torch.Tensor) else type(block).__name__
            raise StreamError(f"a stream block must be a ({channels}, n) tensor, got {shape}")
        if block.size(0) != channels:
            raise StreamError(
                f"the model takes {channels} audio channels, got a block of shape "
                f"{tuple(block.shape)}"
            )
        if block.size(-1) == 0:
            raise StreamError("empty block (0 samples): a stream block needs at least 1 sample")
        if samplerate is None:
            return
        if self._samplerate is not None and samplerate != self._samplerate:
            raise StreamError(
                f"sample rate changed mid-stream: {self._samplerate} Hz, then {samplerate} Hz"
            )
        if samplerate != self.model.samplerate:
            raise StreamError(
                f"block at {samplerate} Hz but the model works at {self.model.samplerate} Hz: "
                "resample the input first"
            )
        self._samplerate = samplerate

    def _advance(self, buf: torch.Tensor) -> torch.Tensor:
        """Run every complete frame of ``buf`` (C, m); keep the rest for the next call."""
        L, hop = self.model.L, self.hop
        frames = (buf.size(-1) - L) // hop + 1 if buf.size(-1) >= L else 0
        if frames == 0:
            self._pending = buf
            return torch.zeros(self.model.num_sources, self.model.audio_channels, 0)
        self._pending = buf[:, frames * hop :].clone()
        decoded = self._decode_frames(buf[:, : (frames - 1) * hop + L])  # (S, C, k, L)
        ola = overlap_and_add(decoded.contiguous(), hop)  # (S, C, (k - 1) * hop + L)
        if self._tail is not None:
            ola[..., : L - hop] += self._tail
        self._tail = ola[..., frames * hop :].clone()
        self._emitted += frames * hop
        return ola[..., : frames * hop].float().cpu()

    def _decode_frames(self, chunk: torch.Tensor) -> torch.Tensor:
        """(C, (k - 1) * hop + L) samples -> (S, C, k, L) decoded frames.

        Works time-major ((k, channels) activations): every 1x1 conv is one matrix product and
        cLN one ``layer_norm`` over the last dimension (same math as the offline modules).
        """
        model, separator = self.model, self.model.separator
        frames = chunk.unfold(-1, model.L, self.hop).transpose(0, 1)  # (k, C, L)
        enc = model.encoder.conv1d_U.weight.flatten(1)  # (N, C*L)
        mixture_w = F.relu(frames.flatten(1) @ enc.t())  # (k, N)
        normed = frame_norm(separator.bottleneck_norm)(mixture_w)  # (k, N)
        x = pointwise(separator.bottleneck, normed)  # (k, B')
        for block in self._blocks:
            x.add_(block(x))  # residual
        score = pointwise(separator.mask_conv, x)  # (k, S*N)
        score = score.view(x.size(0), model.num_sources, model.N)  # (k, S, N)
        masks = F.softmax(score, dim=1) if model.mask_nonlinear == "softmax" else F.relu(score)
        basis = model.decoder.basis_signals.weight  # (C*L, N)
        est = (mixture_w[:, None] * masks) @ basis.t()  # (k, S, C*L)
        est = est.view(x.size(0), model.num_sources, model.audio_channels, model.L)
        return est.permute(1, 2, 0, 3)  # (S, C, k, L)


@dataclass(frozen=True)
class StreamReport:
    """Timing of a :func:`stream_separate` run.

    Attributes:
        latency_samples: algorithmic latency (worst case), in samples.
        latency_ms: the same in milliseconds.
        rtf: processing time / audio duration (< 1: faster than real time).
        block_ms: processing time of every block, in milliseconds.
    """

    latency_samples: int
    latency_ms: float
    rtf: float
    block_ms: list[float]


def stream_separate(
    model: SeparationModel,
    mix: torch.Tensor,
    block_size: int = 1024,
    *,
    normalize: bool = True,
    on_block: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, StreamReport]:
    """Separate a whole (C, T) mixture by streaming it in blocks of ``block_size`` samples.

    Args:
        model: a causal Conv-TasNet (see :class:`StreamingSeparator`).
        mix: (C, T) mixture at the model's sample rate.
        block_size: samples per block (>= 1).
        normalize: scale by the whole-track mono mean/std first and undo it on the stems, as
            :func:`~demucs_rr.separate.engine.separate_normalized` (a live source cannot know
            these statistics; pass ``False`` and a pre-scaled signal there).
        on_block: called with every (S, C, n_out) output piece, in stream order, as it is
            produced (e.g. to write stems incrementally); pieces are already denormalised.

    Returns:
        ((S, C, T) stems, :class:`StreamReport`). The stems equal the offline single-pass
        (``split=False``) separation of the same mixture.
    """
    from demucs_rr.separate.engine import normalize as normalize_mix

    if block_size < 1:
        raise StreamError(f"block size must be at least 1 sample, got {block_size}")
    streamer = StreamingSeparator(model)
    mean, std = 0.0, 1.0
    if normalize:
        mix, mean, std = normalize_mix(mix.float())
    sources = len(streamer.model.sources)
    pieces: list[torch.Tensor] = []
    timings: list[float] = []
    for start in range(0, mix.size(-1), block_size):
        begin = time.perf_counter()
        piece = streamer.process(mix[:, start : start + block_size])
        timings.append(1000.0 * (time.perf_counter() - begin))
        pieces.append(piece * std + mean / sources)
        if on_block is not None:
            on_block(pieces[-1])
    pieces.append(streamer.flush() * std + mean / sources)
    if on_block is not None:
        on_block(pieces[-1])
    seconds = mix.size(-1) / streamer.model.samplerate
    rtf = sum(timings) / 1000.0 / seconds if seconds else 0.0
    report = StreamReport(streamer.latency_samples, streamer.latency_ms, rtf, timings)
    return torch.cat(pieces, dim=-1), report
