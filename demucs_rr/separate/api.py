"""Python API: :class:`Separator` separates tensors and files in memory.

Example:
    >>> from demucs_rr import Separator
    >>> sep = Separator("htdemucs", device="auto", shifts=1)
    >>> mix, stems = sep.separate_file("song.mp3")
    >>> stems["vocals"].shape  # (C, T) at sep.samplerate
    >>> sep.separate_file_to("long_mix.flac", {"vocals": Path("vocals.wav")})  # streaming
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from demucs_rr.audio import WriteOptions, convert_audio, load_for_model
from demucs_rr.errors import AudioIOError, DeviceMemoryError
from demucs_rr.hub.catalogue import DEFAULT_MODEL
from demucs_rr.models.base import SeparationModel
from demucs_rr.runtime import resolve_device
from demucs_rr.separate.engine import check_segment, count_passes, separate_normalized
from demucs_rr.separate.options import ApplyOptions
from demucs_rr.separate.precision import check_precision, prepare_model

logger = logging.getLogger(__name__)

DEFAULT_WRITE = WriteOptions()


class Separator:
    """Separates music into stems with a pretrained or local model.

    Args:
        model: a pretrained name (``demucs-rr models list``), a path to a model file, or an
            already built model (see :class:`~demucs_rr.models.base.SeparationModel`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        options: how the engine applies the model (:class:`ApplyOptions`; its defaults:
            the model's segment, 0.25 overlap, no shifts, batch 1, fp32).
        segment: chunk length in seconds (default: the model's).
        overlap: overlap between chunks, in [0, 1).
        shifts: number of random shifts averaged (shift trick); 0 is deterministic.
        split: process the track in chunks (bounded memory); ``False`` does one pass.
        batch_size: chunks per forward pass.
        seed: seed of the shift offsets.
        precision: ``'fp32'``, ``'bf16'`` (CPUs with AVX512-BF16/AMX, CUDA) or ``'fp16'``
            (CUDA, MPS) for the model's forward passes; stems stay float32 (see
            :mod:`demucs_rr.separate.precision`). On the CPU, bf16 runs HT Demucs with its
            weights stored in bf16 (a copy when a model object is passed in).
        repo: folder searched first for model files.
        model_config: the MSST config of a ``.ckpt`` checkpoint (default: ``NAME.yaml`` beside
            the checkpoint).
        progress: show a tqdm bar counted in seconds of audio.

        The keywords ``segment`` to ``precision`` replace the same fields of ``options``.

    Raises:
        ConfigError: an option is out of range, or ``segment`` is longer than the model's
            maximum segment (``max_segment_length``; HTDemucs: its training length). The
            ``separate_*`` methods raise it too with ``split=False`` for a track longer than
            that maximum.
        DeviceMemoryError: (``separate_*`` methods) the device ran out of memory; its cached
            memory is released first, so a smaller ``segment`` or ``batch_size`` may be tried.
    """

    def __init__(
        self,
        model: str | Path | SeparationModel = DEFAULT_MODEL,
        *,
        device: str = "auto",
        options: ApplyOptions | None = None,
        segment: float | None = None,
        overlap: float | None = None,
        shifts: int | None = None,
        split: bool | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        precision: str | None = None,
        repo: str | Path | None = None,
        model_config: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        given: dict[str, Any] = dict(
            segment=segment,
            overlap=overlap,
            shifts=shifts,
            split=split,
            batch_size=batch_size,
            seed=seed,
            precision=precision,
        )
        options = dataclasses.replace(
            options or ApplyOptions(), **{k: v for k, v in given.items() if v is not None}
        )
        self.device = resolve_device(device)
        check_precision(options.precision, self.device)
        self.model: SeparationModel
        if isinstance(model, (str, Path)):
            from demucs_rr.hub.loader import load_model

            self.model = load_model(str(model), repo=repo or None, config=model_config)
            self.model_name = Path(str(model)).stem if Path(str(model)).suffix else str(model)
        else:
            self.model, self.model_name = model, type(model).__name__
        self.model.eval().to(self.device)
        self._runner = prepare_model(
            self.model, options.precision, self.device, owned=isinstance(model, (str, Path))
        )
        self.options = options
        check_segment(self.model, self.options)
        self.progress = progress

    @property
    def sources(self) -> list[str]:
        """Stem names, in output order."""
        return list(self.model.sources)

    @property
    def samplerate(self) -> int:
        """Sample rate of the model and of the returned stems."""
        return int(self.model.samplerate)

    @property
    def audio_channels(self) -> int:
        """Channel count of the model and of the returned stems."""
        return int(self.model.audio_channels)

    def separate_tensor(
        self,
        wav: torch.Tensor,
        samplerate: int | None = None,
        callback: Callable[[int], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Separate an in-memory mixture. The caller's tensor is not modified.

        Args:
            wav: (C, T) or (T,) mixture, any channel count the channel policy accepts.
            samplerate: rate of ``wav`` in Hz (default: the model's); resampled if different.
            callback: optional progress callback receiving samples processed.

        Returns:
            ``{stem: (C_model, T')}`` float32 tensors at :attr:`samplerate`.
        """
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2 or wav.shape[-1] == 0:
            raise AudioIOError(
                f"expected a non-empty (channels, time) tensor, got {tuple(wav.shape)}"
            )
        if not torch.isfinite(wav).all():
            raise AudioIOError("the mixture contains NaN or infinite samples")
        mix = convert_audio(
            wav.float(), samplerate or self.samplerate, self.samplerate, self.audio_channels
        )
        return self._separate(mix, callback)

    def separate_file(self, path: str | Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Read, convert and separate an audio file.

        Returns:
            ((C_model, T') mixture at :attr:`samplerate`, ``{stem: (C_model, T')}``).
        """
        mix, _ = load_for_model(path, self.samplerate, self.audio_channels)
        return mix, self._separate(mix, None)

    def separate_file_to(
        self,
        path: str | Path,
        targets: dict[str, Path],
        write: WriteOptions = DEFAULT_WRITE,
        other_method: str = "add",
        keep_sample_rate: bool = False,
        callback: Callable[[int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        max_seconds: float | None = None,
    ) -> list[Path]:
        """Separate a file straight into stem files, streaming: memory does not grow with the
        track length (except with ``split=False``).

        Args:
            path: input audio file.
            targets: output name -> file; a name is a source or ``no_SOURCE`` (the sum of the
                other sources with ``other_method='add'``, the mixture minus it with
                ``'minus'``). Missing parent folders are created.
            write: format, encoding and clip mode of the files.
            other_method: ``'add'`` or ``'minus'``.
            keep_sample_rate: write at the file's own rate instead of :attr:`samplerate`.
            callback: progress, called with the number of samples just processed.
            on_start: called once, before separating, with the total that ``callback`` will
                count (every pass over the track: shifts and bag members included).
            max_seconds: refuse a file longer than this (by its header, then while decoding
                the first pass), before anything is written.

        Returns:
            The written paths; either all of them are written or none is.
        """
        from demucs_rr.separate.to_files import FileJob, mixture_stats, stream_file

        path = Path(path)
        stats = mixture_stats(path, self.samplerate, self.audio_channels, max_seconds=max_seconds)
        job = FileJob(dict(targets), write, other_method, keep_sample_rate)
        if on_start is not None:
            on_start(count_passes(self.model, self.options) * stats.length)
        with self._progress_bar(stats.length, callback) as report:
            _guard_memory(
                self.device,
                lambda: stream_file(
                    self._runner, self.options, self.device, path, job, report, stats
                ),
            )
        return list(targets.values())

    @contextlib.contextmanager
    def _progress_bar(
        self, length: int, callback: Callable[[int], None] | None = None
    ) -> Iterator[Callable[[int], None]]:
        """A progress callback over every pass of a ``length``-sample track (tqdm if enabled)."""
        passes = count_passes(self.model, self.options)
        bar = None
        if self.progress:  # counted in samples (exact), shown in seconds of audio
            bar = tqdm(
                total=passes * length,
                unit="s",
                unit_scale=1 / self.samplerate,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
                dynamic_ncols=True,
                leave=False,
            )

        def report(samples: int) -> None:
            if bar is not None:
                bar.update(samples)
            if callback is not None:
                callback(samples)

        try:
            yield report
        finally:
            if bar is not None:
                bar.close()

    def _separate(
        self, mix: torch.Tensor, callback: Callable[[int], None] | None
    ) -> dict[str, torch.Tensor]:
        """Run the engine on a converted (C, T) mixture, with an optional progress bar."""
        with self._progress_bar(mix.shape[-1], callback) as report:
            out = _guard_memory(
                self.device,
                lambda: separate_normalized(self._runner, mix, self.options, self.device, report),
            )
        return {name: out[i] for i, name in enumerate(self.sources)}


_T = TypeVar("_T")


def _guard_memory(device: torch.device, run: Callable[[], _T]) -> _T:
    """``run()``, with running out of device memory turned into one :class:`DeviceMemoryError`.

    The out-of-memory exception, and with it the frames holding the chunk's tensors, is gone
    before the device's cached memory is released, so the next track starts with it free.
    """
    try:
        return run()
    except torch.OutOfMemoryError:
        pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    raise DeviceMemoryError(
        f"out of memory on {device} while separating; try a smaller --segment or -b 1"
    )
