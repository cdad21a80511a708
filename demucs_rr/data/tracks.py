"""Multitrack folders: one sub-folder per track, one audio file per stem, cached metadata.

Layout read by :func:`scan_tracks` (MUSDB18-HQ is one instance of it)::

    root/
      Song A/  mixture.wav  drums.wav  bass.wav  other.wav  vocals.wav
      Song B/  mixture.flac drums.flac ...

Stem files are named ``<stem>.<ext>`` with any extension :func:`demucs_rr.audio.read_audio`
decodes. The mixture file is optional; without it the mixture is the sum of the stems.

Per-track metadata (length, sample rate, channels and the mean / unbiased std of the mono
mixture, used to normalise training items as in the official recipe) is computed once and kept
in a JSON cache, ``root/.demucs_rr_tracks.json`` when ``root`` is writable (and not made
read-only with ``chmod a-w``), else
``$DEMUCS_RR_CACHE/metadata/<sha256 of the absolute root>.json``. Each cached file entry is
checked against the file's size and modification time, so editing or replacing a file
recomputes only what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demucs_rr.audio import AUDIO_EXTENSIONS, read_audio
from demucs_rr.audio.decode import open_soundfile
from demucs_rr.audio.pcm import open_plain_wav, read_plain_wav
from demucs_rr.errors import AudioIOError, ConfigError
from demucs_rr.runtime import cache_dir
from demucs_rr.staging import atomic_write

__all__ = ["CACHE_NAME", "Track", "load_track", "read_frames", "read_stems", "scan_tracks"]

logger = logging.getLogger(__name__)

#: Name of the metadata cache written into a writable dataset folder.
CACHE_NAME = ".demucs_rr_tracks.json"
_CACHE_VERSION = 1
#: Containers whose header frame count soundfile reports exactly (mp3 and the rest are decoded).
_EXACT_HEADER = frozenset({".wav", ".flac", ".aif", ".aiff"})


@dataclass(frozen=True)
class Track:
    """One multitrack song on disk.

    Attributes:
        name: track folder path relative to the scanned root, POSIX style (``"Song A"``).
        stems: stem name -> audio file, for the stems asked for when scanning.
        mixture: the mixture file, or None when the mixture is the sum of the stems.
        length: length in samples (equal for every file of the track).
        samplerate: sample rate in Hz of every file of the track.
        channels: channel count of every file of the track.
        mean: mean of the mono (channel-averaged) mixture.
        std: unbiased standard deviation of the mono mixture.
    """

    name: str
    stems: dict[str, Path]
    mixture: Path | None
    length: int
    samplerate: int
    channels: int
    mean: float
    std: float


# --------------------------------------------------------------------------- reading audio


def read_frames(path: Path, start: int = 0, frames: int = -1) -> torch.Tensor:
    """Read ``frames`` samples from ``start`` (all remaining when -1) as float32 (C, T).

    A plain wav is read directly (:mod:`demucs_rr.audio.pcm`); other files through the checked
    reader of every command (:func:`demucs_rr.audio.decode.open_soundfile`: wav header checks,
    decoder messages captured), which seeks and reads only the requested frames; files
    soundfile cannot open (m4a, ...) are decoded whole with :func:`read_audio` and sliced.
    Reading past the end returns fewer frames.

    Raises:
        AudioIOError: the file cannot be read, or holds NaN or infinite samples.
    """
    plain = open_plain_wav(path)
    if plain is not None:  # the common case, read directly (same samples)
        return torch.from_numpy(read_plain_wav(plain, start, frames))
    source = open_soundfile(path)
    if isinstance(source, str):  # not for libsndfile: the ffmpeg reader decodes it whole
        wav, _ = read_audio(path)
        end = wav.shape[-1] if frames < 0 else start + frames
        return wav[:, start:end].contiguous()
    data = source.region(start, frames)
    return torch.from_numpy(np.ascontiguousarray(data.T))


def _file_info(path: Path) -> tuple[int, int, int]:
    """(length, samplerate, channels); decodes the file unless its header length is exact."""
    if path.suffix.lower() in _EXACT_HEADER:
        source = open_soundfile(path)  # header checks; unreadable: read_audio reports it
        if not isinstance(source, str):
            source.close()
            return source.frames, source.rate, source.channels
    wav, samplerate = read_audio(path)
    return wav.shape[-1], samplerate, wav.shape[0]


def _mono_stats(mono: np.ndarray) -> tuple[float, float]:
    """Mean and unbiased std of a 1-D float64 array (std 0 for a single sample)."""
    std = float(mono.std(ddof=1)) if mono.size > 1 else 0.0
    return float(mono.mean()), std


# --------------------------------------------------------------------------- cache


def _fallback_cache(root: Path) -> Path:
    digest = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "metadata" / f"{digest}.json"


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    return data


def _write_json(path: Path, data: dict[str, Any]) -> bool:
    """Write atomically (temp file + rename); False when the location is not writable."""
    try:
        with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        return True
    except OSError:
        return False


def _dataset_writable(root: Path) -> bool:
    """Whether to write into the dataset folder: writable for us and not marked read-only.

    The mode bits are checked too, since for root ``os.access`` ignores them and a dataset
    folder deliberately made read-only (``chmod a-w``) should not be written into.
    """
    try:
        mode = root.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(root, os.W_OK)


class _MetaCache:
    """File and statistics entries keyed by paths relative to the dataset root."""

    def __init__(self, root: Path, enabled: bool) -> None:
        self.root = root
        self.enabled = enabled
        self.files: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.dirty = False
        if enabled:  # the fallback is written after the local file, so it wins on overlap
            for path in (root / CACHE_NAME, _fallback_cache(root)):
                data = _load_json(path)
                self.files.update(data.get("files", {}))
                self.stats.update(data.get("stats", {}))

    def _stamp(self, path: Path) -> list[int]:
        st = path.stat()
        return [int(st.st_size), int(st.st_mtime_ns)]

    def info(self, path: Path) -> tuple[int, int, int]:
        key = path.relative_to(self.root).as_posix()
        stamp = self._stamp(path)
        entry = self.files.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            return int(entry["length"]), int(entry["samplerate"]), int(entry["channels"])
        length, samplerate, channels = _file_info(path)
        self.files[key] = {
            "stamp": stamp,
            "length": length,
            "samplerate": samplerate,
            "channels": channels,
        }
        self.dirty = True
        return length, samplerate, channels

    def mix_stats(self, files: Sequence[Path]) -> tuple[float, float]:
        """Statistics of the mono sum of ``files`` (one file: the mixture itself)."""
        keys = [p.relative_to(self.root).as_posix() for p in files]
        key = "+".join(keys)
        stamps = [self._stamp(p) for p in files]
        entry = self.stats.get(key)
        if entry is not None and entry.get("stamps") == stamps:
            return float(entry["mean"]), float(entry["std"])
        mono: np.ndarray | None = None
        for path in files:
            wav, _ = read_audio(path)
            part = wav.double().mean(dim=0).numpy()
            if mono is not None and part.shape != mono.shape:
                raise ConfigError(f"cannot sum the stems of {path.parent}: lengths differ")
            mono = part if mono is None else mono + part
        assert mono is not None
        mean, std = _mono_stats(mono)
        self.stats[key] = {"stamps": stamps, "mean": mean, "std": std}
        self.dirty = True
        return mean, std

    def save(self) -> None:
        if not (self.enabled and self.dirty):
            return
        data = {"version": _CACHE_VERSION, "files": self.files, "stats": self.stats}
        if _dataset_writable(self.root) and _write_json(self.root / CACHE_NAME, data):
            return
        fallback = _fallback_cache(self.root)
        if not _write_json(fallback, data):
            logger.warning(
                "cannot write the metadata cache of %s (tried %s and %s)",
                self.root,
                self.root / CACHE_NAME,
                fallback,
            )


# --------------------------------------------------------------------------- scanning


def _find_stem(folder: Path, stem: str, required: bool, rel: str) -> Path | None:
    """The single audio file ``<stem>.<ext>`` in ``folder``."""
    matches = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.stem == stem and p.suffix.lower() in AUDIO_EXTENSIONS
    )
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise ConfigError(f"track {rel!r} has several files for stem {stem!r}: {names}")
    if not matches:
        if required:
            raise ConfigError(
                f"track {rel!r} is missing stem {stem!r} "
                f"(expected {folder}/{stem}.wav or another audio extension)"
            )
        return None
    return matches[0]


def _check_same(rel: str, infos: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    """Raise ConfigError naming the files whose length, rate or channel count disagree."""
    for pos, what in ((0, "lengths"), (1, "sample rates"), (2, "channel counts")):
        values = {name: info[pos] for name, info in infos.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name}={value}" for name, value in values.items())
            raise ConfigError(f"track {rel!r} has stems of different {what}: {listed}")
    return next(iter(infos.values()))


def _stem_names(folder: Path, mixture: str | None) -> list[str]:
    """Stem names of the audio files in ``folder`` (every one but the mixture), sorted."""
    names = {
        p.stem
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS
    }
    names.discard(mixture or "")
    return sorted(names)


def _scan_one(
    folder: Path, rel: str, sources: Sequence[str], mixture: str | None, cache: _MetaCache
) -> Track:
    stems: dict[str, Path] = {}
    for name in sources:
        path = _find_stem(folder, name, True, rel)
        assert path is not None
        stems[name] = path
    mix_path = _find_stem(folder, mixture, False, rel) if mixture else None
    files = dict(stems) if mix_path is None else {str(mixture): mix_path, **stems}
    try:
        infos = {name: cache.info(path) for name, path in files.items()}
        length, samplerate, channels = _check_same(rel, infos)
        mean, std = cache.mix_stats([mix_path] if mix_path else list(stems.values()))
    except AudioIOError as err:
        raise ConfigError(f"track {rel!r}: {err}") from None
    if std <= 0:
        logger.warning("track %r has a silent mixture (std 0); it is not normalised", rel)
    return Track(
        name=rel,
        stems=stems,
        mixture=mix_path,
        length=length,
        samplerate=samplerate,
        channels=channels,
        mean=mean,
        std=std,
    )


def _track_folders(base: Path, include: Collection[str] | None) -> list[Path]:
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if include is not None:
        wanted = set(include)
        folders = [p for p in folders if p.name in wanted]
    return folders


def scan_tracks(
    root: str | Path,
    sources: Sequence[str] | None,
    mixture: str | None = "mixture",
    cache: bool = True,
    *,
    include: Collection[str] | None = None,
) -> list[Track]:
    """Scan a folder holding one sub-folder per track.

    Args:
        root: dataset folder; every non-hidden sub-folder is a track.
        sources: stem names; each track must hold one audio file ``<stem>.<ext>`` per name.
            None takes every audio file of a track folder but the mixture as a stem (the
            stems may then differ between tracks; folders without audio files are skipped).
        mixture: stem name of the optional mixture file; None ignores any mixture file.
            Without a mixture file the statistics are those of the sum of the stems.
        cache: read and write the metadata cache (see the module docstring).
        include: when given, only the track folders with these names are scanned.

    Returns:
        Tracks sorted by name.

    Raises:
        ConfigError: one line for a missing root folder, no track folders, a track missing a
            stem or holding two files for it, an unreadable file, or stems of different
            lengths, sample rates or channel counts within a track (naming the track and
            the files).
    """
    if sources is not None and not sources:
        raise ConfigError("no stem names given to scan for")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"dataset folder {base} does not exist or is not a folder")
    base = base.resolve()
    folders = _track_folders(base, include)
    meta = _MetaCache(base, cache)
    tracks = []
    try:
        for folder in folders:
            names = sources if sources is not None else _stem_names(folder, mixture)
            if not names:
                logger.warning("skipping %s: no audio stem files", folder)
                continue
            tracks.append(_scan_one(folder, folder.name, names, mixture, meta))
    finally:
        meta.save()
    if not tracks:
        wanted = ", ".join(sources) if sources else "stem"
        raise ConfigError(
            f"no track folders in {base} (expected one sub-folder per track "
            f"holding {wanted} audio files)"
        )
    logger.debug("scanned %d tracks in %s", len(tracks), base)
    return tracks


def load_track(track: Track, sources: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a whole track at its own sample rate, not normalised.

    Args:
        track: a scanned track.
        sources: stem names to stack, each one of ``track.stems``.

    Returns:
        ``(mixture, stems)``: float32 (C, T) and (S, C, T). Without a mixture file the mixture
        is the sum of all the track's stems (those scanned), not only of ``sources``.

    Raises:
        ConfigError: a stem name the track does not have.
        AudioIOError: a file cannot be read.
    """
    missing = [name for name in sources if name not in track.stems]
    if missing:
        raise ConfigError(
            f"track {track.name!r} has no stem {missing[0]!r} (it has {', '.join(track.stems)})"
        )
    stems = read_stems(track, [track.stems[name] for name in sources])
    if track.mixture is not None:
        return read_stems(track, [track.mixture])[0], stems
    others = [path for name, path in track.stems.items() if name not in sources]
    mixture = stems.sum(dim=0)
    if others:
        mixture += read_stems(track, others).sum(dim=0)
    return mixture, stems


def read_stems(track: Track, files: Sequence[Path]) -> torch.Tensor:
    """The first ``track.length`` frames of each of ``files`` (files of ``track``), stacked.

    Plain wavs are read straight into their place (no per-file copy to stack).

    Returns:
        (S, C, T) float32 with S = len(files), C = track.channels, T = track.length.

    Raises:
        AudioIOError: a file cannot be read, or no longer holds the scanned frames or channels.
    """
    out = torch.empty((len(files), track.channels, track.length), dtype=torch.float32)
    for slot, path in zip(out, files, strict=True):
        plain = open_plain_wav(path)
        if plain is not None and plain.channels == track.channels and plain.frames >= track.length:
            read_plain_wav(plain, 0, track.length, out=slot.numpy())
            continue
        wav = read_frames(path, 0, track.length)
        if wav.shape != slot.shape:
            raise AudioIOError(
                f"cannot read {path}: it changed since its track was scanned ({wav.shape[0]} "
                f"channel(s) of {wav.shape[-1]} frames, not {track.channels} of {track.length}); "
                "run again to rescan"
            )
        slot.copy_(wav)
    return out
