"""Streaming separation of a file into stem files, in memory independent of the track length.

Two passes decode the input block by block (:func:`~demucs_rr.audio.blocks.read_blocks`): the
first computes the mean and std of the mono mix for the whole-track normalisation, the second
feeds the normalised blocks to the engine's :class:`~demucs_rr.separate.passes.SlidingApplier`
(the same chunk planning, weights and model calls as the in-memory engine) and writes every
finished block of every stem to staged files, renamed into place all together at the end.
The ``rescale`` clip mode needs each stem's peak, so those stems are staged as float32 wav and
encoded in a second, block-wise pass once the peak is known.

Dimension letters: S sources, C audio channels, T time in samples.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch

from demucs_rr.audio import WriteOptions, prepare_for_write
from demucs_rr.audio.blocks import BLOCK, BlockResampler, BlockWriter, read_blocks
from demucs_rr.models.base import SeparationModel
from demucs_rr.separate.engine import check_segment, mono_stats
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.outputs import compose_stems
from demucs_rr.separate.passes import ProgressCallback, SlidingApplier
from demucs_rr.staging import OutputGroup

_FLOAT = WriteOptions(format="wav", encoding="float32", clip_mode="none")


@dataclass(frozen=True)
class MixStats:
    """Whole-track statistics of a mixture at the model's rate and channels.

    Attributes:
        length: T, samples at the model's rate.
        mean: mean of the mono (channel-averaged) mix.
        std: unbiased std of the mono mix plus 1e-8, as the engine's ``normalize``.
        samplerate: the file's own sample rate.
    """

    length: int
    mean: float
    std: float
    samplerate: int


def mixture_stats(
    path: Path,
    samplerate: int,
    channels: int,
    block: int = BLOCK,
    max_seconds: float | None = None,
) -> MixStats:
    """First streaming pass: length, mean and std of the mono mix (:func:`mono_stats`).

    ``max_seconds`` refuses a longer file before it is decoded past that length
    (:func:`~demucs_rr.audio.blocks.read_blocks`), so nothing is staged for it.
    """
    rate, blocks = read_blocks(path, channels, samplerate, block, max_seconds=max_seconds)
    n, mean, std = mono_stats(blocks)
    return MixStats(n, mean, std, rate)


class StagedStems:
    """Staged files of every target, renamed into place all or none (an
    :class:`~demucs_rr.staging.OutputGroup`: hidden names owned by this process, a group commit
    under a folder lock, the leftovers of killed runs cleaned first).

    Args:
        targets: output name -> final path (missing parent folders are created).
        samplerate: rate of the written blocks.
        channels: channel count C.
        options: format, encoding and clip mode of the final files.

    Raises:
        AudioIOError: a staged file cannot be created (one line, naming the output folder).
    """

    def __init__(
        self, targets: dict[str, Path], samplerate: int, channels: int, options: WriteOptions
    ) -> None:
        self.options, self.rescale = options, options.clip_mode == "rescale"
        self.samplerate, self.channels = samplerate, channels
        self.targets = targets
        self.group = OutputGroup(targets.values())
        self.tmp = {n: self.group.staged[p] for n, p in targets.items()}
        self.stage = {n: self.group.scratch_file(p, "f32") for n, p in targets.items()}
        self.peak = dict.fromkeys(targets, 0.0)
        self.writers: dict[str, BlockWriter] = {}
        try:
            self.group.prepare()
            for name in targets:
                path = self.stage[name] if self.rescale else self.tmp[name]
                opts = _FLOAT if self.rescale else options
                self.writers[name] = BlockWriter(path, samplerate, channels, opts)
        except BaseException as err:
            failure = self.group.failure(err) if isinstance(err, (OSError, RuntimeError)) else None
            self.abort()  # after group.failure: the space the partial files hold is still taken
            if failure is not None:
                raise failure from None
            raise

    def write(self, name: str, wav: torch.Tensor) -> None:
        """Append (C, n) samples of stem ``name``."""
        if wav.shape[-1] == 0:
            return
        mode = "none" if self.rescale else self.options.clip_mode
        data = prepare_for_write(wav, mode)
        if self.rescale and data.numel():
            self.peak[name] = max(self.peak[name], float(data.abs().max()))
        try:
            self.writers[name].write(data)
        except (OSError, RuntimeError) as err:
            raise self.group.failure(err, self.targets[name]) from None

    def commit(self) -> None:
        """Close every file, encode rescaled stems, and rename the set into place."""
        try:
            for name in list(self.writers):
                self.writers.pop(name).close()
            if self.rescale:
                for name in self.targets:
                    self._rescale(name)
            self.group.commit()
        except (OSError, RuntimeError) as err:
            raise self.group.failure(err) from None

    def _rescale(self, name: str) -> None:
        """Encode the float32 stage of ``name`` divided by ``max(1.01 * peak, 1)``."""
        scale = max(1.01 * self.peak[name], 1.0)
        writer = BlockWriter(self.tmp[name], self.samplerate, self.channels, self.options)
        try:
            for data in soundfile.blocks(str(self.stage[name]), BLOCK, dtype="float32"):
                block = torch.from_numpy(data.reshape(len(data), -1).T.copy())
                writer.write(block / scale)
        finally:
            writer.close()
        self.stage[name].unlink()

    def abort(self) -> None:
        """Close and remove every staged file, and the folders this run created if empty."""
        for writer in self.writers.values():
            with contextlib.suppress(Exception):  # cleaning up after the real error
                writer.close()
        self.writers = {}
        self.group.abort()


@dataclass(frozen=True)
class FileJob:
    """What to write for one input file.

    Attributes:
        targets: output name (a source, or ``no_X``) -> final path.
        write: format, encoding and clip mode.
        other_method: how ``no_X`` is built, see :func:`~demucs_rr.separate.outputs.compose_stems`.
        keep_sample_rate: write at the file's own rate instead of the model's.
    """

    targets: dict[str, Path]
    write: WriteOptions = WriteOptions()
    other_method: str = "add"
    keep_sample_rate: bool = False


class _Emitter:
    """Turns finished (S, C, m) engine output into written blocks of every requested stem."""

    def __init__(
        self, model: SeparationModel, stats: MixStats, job: FileJob, staged: StagedStems
    ) -> None:
        self.sources, self.stats, self.job, self.staged = list(model.sources), stats, job, staged
        self.pending = torch.zeros(model.audio_channels, 0)  # raw mix not yet emitted
        rate = stats.samplerate if job.keep_sample_rate else model.samplerate
        self.resamplers = {n: BlockResampler(model.samplerate, rate) for n in job.targets}

    def mix(self, block: torch.Tensor) -> None:
        """Remember (C, n) raw mixture samples for ``no_X`` with ``minus``."""
        self.pending = torch.cat([self.pending, block], -1)

    def emit(self, out: torch.Tensor) -> None:
        """Write (S, C, m) normalised estimates, de-normalised as ``separate_normalized``."""
        m = out.shape[-1]
        if m == 0:
            return
        mix, self.pending = self.pending[:, :m], self.pending[:, m:]
        out = out * self.stats.std + self.stats.mean / out.shape[0]
        stems = {name: out[i] for i, name in enumerate(self.sources)}
        names = list(self.job.targets)
        for name, wav in compose_stems(stems, mix, names, self.job.other_method).items():
            self.staged.write(name, self.resamplers[name].push(wav))

    def finish(self) -> None:
        """Flush the resamplers."""
        for name, resampler in self.resamplers.items():
            self.staged.write(name, resampler.finish())


def stream_file(
    model: SeparationModel,
    options: ApplyOptions,
    device: torch.device,
    path: Path,
    job: FileJob,
    progress: ProgressCallback | None = None,
    stats: MixStats | None = None,
    block: int = BLOCK,
) -> None:
    """Separate ``path`` into ``job.targets`` block by block, all files or none.

    Args:
        model: a separation model already on ``device``.
        options: engine options (chunking, shifts, batching).
        device: where the model runs.
        path: input audio file.
        job: outputs, format and stem composition.
        progress: optional callback, see :data:`ProgressCallback`.
        stats: the first pass's result when the caller already ran it.
        block: samples per decoded block.

    Raises:
        AudioIOError: the input cannot be decoded or an output cannot be written (one line).
        ConfigError: ``split=False`` and the track exceeds the model's maximum segment.
    """
    stats = stats or mixture_stats(path, model.samplerate, model.audio_channels, block)
    check_segment(model, options, stats.length)
    rate = stats.samplerate if job.keep_sample_rate else model.samplerate
    staged = StagedStems(job.targets, rate, model.audio_channels, job.write)
    try:
        emitter = _Emitter(model, stats, job, staged)
        with torch.inference_mode():
            applier = SlidingApplier(model, options, device, progress)
            _, mixes = read_blocks(path, model.audio_channels, model.samplerate, block, warn=False)
            for mix in mixes:  # the first pass (mixture_stats) logged any warning
                emitter.mix(mix)
                emitter.emit(applier.push((mix - stats.mean) / stats.std))
            emitter.emit(applier.finish())
        emitter.finish()
        staged.commit()
    except BaseException as err:
        failure = staged.group.failure(err) if isinstance(err, OSError) else None
        staged.abort()
        if failure is not None:
            raise failure from None
        raise
