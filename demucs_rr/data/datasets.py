"""Training items cut from multitrack folders, and the train/valid/test track splits.

Item layout, as in the official v2 recipe (``demucs/wav.py``, ``demucs/repitch.py``): item ``k``
of a track starts at ``k * stride`` samples (at the dataset sample rate) and holds the stems
only, normalised with the track's mono-mixture statistics, shape (S, C, segment). The training
mixture is built later as the sum of the augmented stems.

Repitch: when ``repitch_proba > 0`` every item reads ``ceil(segment / (1 - max_tempo/100))``
samples (the official enlarged length, 558235 for the default 491246), is repitched with
probability ``repitch_proba`` (see :mod:`demucs_rr.data.repitch`), and every item, repitched or
not, is then cut to its first ``segment`` samples. The official code cuts to
``int((1 - max_tempo/100) * read_length)``, which is ``segment`` for the default values and never
less; cutting to exactly ``segment`` keeps every batch the same shape. The item count per track
is computed from the read length, so it drops slightly when repitch is on, as in the official.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from demucs_rr.audio import convert_channels, resample
from demucs_rr.data.repitch import draw_repitch, repitch, soundstretch_available
from demucs_rr.data.tracks import Track, read_frames, scan_tracks
from demucs_rr.data.trackset import KINDS
from demucs_rr.errors import ConfigError
from demucs_rr.sources import MUSDB_SOURCES

__all__ = ["StemSegments", "TrackSplits", "split_tracks"]

logger = logging.getLogger(__name__)


class StemSegments(Dataset):
    """Fixed-length training items: (S, C, segment) float32 stems of one track, or
    (S + 1, C, segment) with ``rest``.

    Items are numbered track after track; track ``t`` has
    ``floor((length_t - read_length) / stride) + 1`` items, or one zero-padded item when it is
    shorter than ``read_length`` (``length_t`` counted at ``samplerate``). Only the needed frames
    are read (soundfile ``start``/``frames``); a track at another rate or channel count is
    converted (channels first, then resampled with julius), as the official ``Wavset`` does.

    Repitch randomness comes from ``numpy.random.default_rng([seed, epoch, index])``: call
    :meth:`set_epoch` before each epoch (before the DataLoader iterator is created, since
    worker processes copy the dataset) to get new draws.

    Args:
        tracks: tracks from :func:`demucs_rr.data.tracks.scan_tracks`.
        sources: stem names, in output order; every track must have them.
        segment: item length in samples at ``samplerate``.
        stride: samples between the starts of consecutive items (official: 1 s).
        samplerate: output sample rate.
        channels: output channel count.
        normalize: map every stem to ``(x - mean) / std`` with the track's mixture statistics.
        repitch_proba: probability of repitching an item (0 turns it off).
        max_tempo: largest tempo change in percent, in [0, 100).
        seed: base seed of the repitch draws.
        rest: append the rest of the song as a last stem, so that an item sums to the whole
            mixture when the model's stems are a subset (a vocals-only model): the mixture file
            minus the sources when the track has one (files derived from the stems, e.g. an
            instrumental, are then never counted), else the sum of its other stems (zeros when
            it has none).
    """

    def __init__(
        self,
        tracks: list[Track],
        sources: list[str],
        segment: int,
        stride: int,
        samplerate: int = 44100,
        channels: int = 2,
        normalize: bool = True,
        repitch_proba: float = 0.0,
        max_tempo: float = 12.0,
        seed: int = 0,
        rest: bool = False,
    ) -> None:
        if segment < 1 or stride < 1:
            raise ConfigError(f"segment and stride must be >= 1 sample, got {segment}, {stride}")
        if not 0.0 <= repitch_proba <= 1.0:
            raise ConfigError(f"repitch probability must be within [0, 1], got {repitch_proba}")
        if not 0.0 <= max_tempo < 100.0:
            raise ConfigError(f"max_tempo must be within [0, 100) percent, got {max_tempo}")
        if repitch_proba > 0 and not soundstretch_available():
            raise ConfigError(
                "repitch needs the soundstretch command: install it "
                "(apt-get install soundstretch) or set the repitch probability to 0"
            )
        if not tracks:
            raise ConfigError("no tracks to cut training items from")
        for track in tracks:
            missing = [name for name in sources if name not in track.stems]
            if missing:
                raise ConfigError(f"track {track.name!r} has no stem {missing[0]!r}")
        self.tracks = list(tracks)
        self.sources = list(sources)
        self.rest = rest
        self.segment, self.stride = int(segment), int(stride)
        self.samplerate, self.channels = int(samplerate), int(channels)
        self.normalize = normalize
        self.repitch_proba, self.max_tempo = float(repitch_proba), float(max_tempo)
        self.seed, self.epoch = int(seed), 0
        self.read_length = self.segment
        if self.repitch_proba > 0:
            self.read_length = math.ceil(self.segment / (1 - self.max_tempo / 100))
        counts = [self._count(track) for track in self.tracks]
        self._ends = np.cumsum(counts).tolist()

    def _count(self, track: Track) -> int:
        length = track.length * self.samplerate // track.samplerate
        if length < self.read_length:
            return 1
        return (length - self.read_length) // self.stride + 1

    def set_epoch(self, epoch: int) -> None:
        """Select the repitch draws of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[Track, int]:
        """The track of item ``index`` and the item's offset in samples at ``samplerate``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        pos = bisect.bisect_right(self._ends, index)
        first = self._ends[pos - 1] if pos else 0
        return self.tracks[pos], (index - first) * self.stride

    def _read(self, track: Track, offset: int) -> torch.Tensor:
        """(S, C, <= read_length) stems at the output rate and channel count."""
        rate = track.samplerate
        if rate == self.samplerate:
            start, frames = offset, self.read_length
        else:  # official Wavset: frame counts rounded up in the file's rate
            start = math.ceil(rate * offset / self.samplerate)
            frames = math.ceil(rate * self.read_length / self.samplerate)
        wavs = [
            convert_channels(read_frames(track.stems[name], start, frames), self.channels)
            for name in self.sources
        ]
        if self.rest:
            wavs.append(self._rest(track, wavs, start, frames))
        length = min(wav.shape[-1] for wav in wavs)
        stems = torch.stack([wav[:, :length] for wav in wavs])
        if rate != self.samplerate:
            stems = resample(stems, rate, self.samplerate)
        return stems[..., : self.read_length]

    def _rest(
        self, track: Track, wavs: list[torch.Tensor], start: int, frames: int
    ) -> torch.Tensor:
        """(C, n) the mixture minus ``wavs`` (the sources) when the track has a mixture file,
        else the sum of its other stems (zeros when it has none)."""
        if track.mixture is not None:
            mixture = convert_channels(read_frames(track.mixture, start, frames), self.channels)
            return mixture[:, : min(w.shape[-1] for w in wavs)] - _summed(wavs)
        others = [
            convert_channels(read_frames(path, start, frames), self.channels)
            for name, path in track.stems.items()
            if name not in self.sources
        ]
        return _summed(others) if others else torch.zeros_like(wavs[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        track, offset = self.locate(index)
        stems = self._read(track, offset)
        if self.normalize:
            stems = (stems - track.mean) / (track.std if track.std > 0 else 1.0)
        stems = F.pad(stems, (0, self.read_length - stems.shape[-1]))
        if self.repitch_proba > 0:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < self.repitch_proba:
                semitones, tempo = draw_repitch(rng, self.max_tempo)
                speech = [i for i, name in enumerate(self.sources) if name == "vocals"]
                stems = repitch(stems, semitones, tempo, self.samplerate, speech=speech)
        return stems[..., : self.segment].contiguous().float()


def _summed(wavs: list[torch.Tensor]) -> torch.Tensor:
    """Sum of (C, T_i) waves over their common length."""
    length = min(wav.shape[-1] for wav in wavs)
    return torch.stack([wav[:, :length] for wav in wavs]).sum(dim=0)


@dataclass(frozen=True)
class TrackSplits:
    """Tracks of each split; ``test`` is empty when the dataset has no test folder."""

    train: list[Track]
    valid: list[Track]
    test: list[Track]


def split_tracks(
    root: str | Path,
    sources: Sequence[str],
    kind: str = "folder",
    subset_train: str = "train",
    subset_valid: str = "valid",
    subset_test: str = "test",
    *,
    mixture: str | None = "mixture",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    every_stem: bool = False,
) -> TrackSplits:
    """Train, valid and test tracks of a dataset.

    Kinds (those of :mod:`demucs_rr.data.trackset`):
        ``folder``: ``root/<subset_train>/``, ``root/<subset_valid>/`` and optionally
        ``root/<subset_test>/``, each scanned with :func:`scan_tracks` (what
        :func:`demucs_rr.data.synthetic.make_synthetic_dataset` writes).
        ``musdb-hq``: MUSDB18-HQ wav folders; valid = the 14 official validation tracks taken
        out of ``train`` (``subset_*`` are ignored).
        ``musdb``: compressed MUSDB18 (``.stem.mp4``), decoded once into ``cache_dir``.

    With ``every_stem`` each track holds all its stems (MUSDB's four; every audio file of a
    folder track but the mixture), of which ``sources`` must be part: what a model of fewer
    stems needs to see its whole mixtures.

    Raises:
        ConfigError: unknown kind, a track without one of ``sources``, or any error of
            :func:`scan_tracks` / ``musdb_tracks``.
    """
    subsets = (subset_train, subset_valid, subset_test)
    names = None if every_stem else list(sources)
    splits = _split(root, names, kind, subsets, mixture, cache, cache_dir)
    for track in splits.train + splits.valid + splits.test:
        missing = [name for name in sources if name not in track.stems]
        if missing:
            has = ", ".join(track.stems)
            raise ConfigError(f"track {track.name!r} has no stem {missing[0]!r} (it has {has})")
    return splits


def _split(
    root: str | Path,
    names: list[str] | None,
    kind: str,
    subsets: tuple[str, str, str],
    mixture: str | None,
    cache: bool,
    cache_dir: str | Path | None,
) -> TrackSplits:
    """:func:`split_tracks` with ``names`` None for every stem."""
    subset_train, subset_valid, subset_test = subsets
    if kind in ("musdb-hq", "musdb"):
        names = names or list(MUSDB_SOURCES)
        from demucs_rr.data.musdb import musdb_tracks

        is_wav = kind == "musdb-hq"
        test_dir = Path(root) / "test"
        return TrackSplits(
            train=musdb_tracks(root, "train", is_wav, names, cache_dir=cache_dir, cache=cache),
            valid=musdb_tracks(root, "valid", is_wav, names, cache_dir=cache_dir, cache=cache),
            test=(
                musdb_tracks(root, "test", is_wav, names, cache_dir=cache_dir, cache=cache)
                if test_dir.is_dir()
                else []
            ),
        )
    if kind != "folder":
        raise ConfigError(f"unknown dataset kind {kind!r}, choose from {', '.join(KINDS)}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"dataset folder {base} does not exist or is not a folder")
    test_dir = base / subset_test
    return TrackSplits(
        train=scan_tracks(base / subset_train, names, mixture, cache),
        valid=scan_tracks(base / subset_valid, names, mixture, cache),
        test=scan_tracks(base / subset_test, names, mixture, cache) if test_dir.is_dir() else [],
    )
