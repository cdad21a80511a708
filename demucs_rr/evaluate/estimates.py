"""Stems written by any separation tool, read for scoring (``demucs-rr evaluate --estimates``).

Layout: one folder per track, named like the reference track, holding one audio file per stem
named like the reference stem, in any format and at any sample rate the decoder reads::

    DIR/<track>/<stem>.<ext>          (what `demucs-rr separate` and most tools write)
    DIR/<subset>/<track>/<stem>.<ext> (museval's estimates_dir layout)

The stems scored are the reference stems found among the estimates (the same set for every
track). Estimates are converted to the references' sample rate and channel count, then
zero-padded or cut to their length (museval's rule; each track with another length says so).
A missing track folder or stem fails that track with one line; folders that match no reference
track are reported once, in one line each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from demucs_rr.data.tracks import Track
from demucs_rr.data.trackset import TrackSet
from demucs_rr.errors import AudioIOError, ConfigError

__all__ = ["EstimateFolder", "open_estimates"]


@dataclass(frozen=True)
class EstimateFolder:
    """The estimates of one tool for one dataset subset.

    Attributes:
        root: the folder given (absolute).
        base: the folder holding the track folders (``root`` or ``root/<subset>``).
        targets: the reference stems scored, in the references' order.
    """

    root: Path
    base: Path
    targets: list[str]

    def stem_files(self, name: str) -> dict[str, Path]:
        """Audio files of track ``name`` by stem (those named like a scored stem).

        Raises:
            ConfigError: the track has no folder, lacks a stem, or has two files for one.
        """
        from demucs_rr.audio import AUDIO_EXTENSIONS

        folder = self.base / name
        if not folder.is_dir():
            raise ConfigError(f"no estimates for this track: {folder} is not a folder")
        found: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                found.setdefault(path.stem, []).append(path)
        missing = [t for t in self.targets if t not in found]
        if missing:
            raise ConfigError(
                f"missing estimate stem(s) {', '.join(missing)} in {folder} "
                f"(expected <stem>.wav or another audio file per stem)"
            )
        doubles = [t for t in self.targets if len(found[t]) > 1]
        if doubles:
            names = ", ".join(p.name for p in found[doubles[0]])
            raise ConfigError(f"several estimate files for stem {doubles[0]} in {folder}: {names}")
        return {t: found[t][0] for t in self.targets}

    def signature(self, name: str) -> dict[str, dict[str, Any]]:
        """Size and modification time of each stem file of track ``name`` (recorded with its
        result, so that changed files are scored again)."""
        out = {}
        for stem, path in self.stem_files(name).items():
            info = path.stat()
            out[stem] = {
                "file": str(path.relative_to(self.root)),
                "size": info.st_size,
                "mtime_ns": info.st_mtime_ns,
            }
        return out

    def load(self, track: Track) -> tuple[torch.Tensor, list[str]]:
        """The estimates of ``track`` at its sample rate and channel count.

        Returns:
            ((S, C, T') float32 estimates in :attr:`targets` order, notes: one line per
            stem whose length differs from the reference's).

        Raises:
            ConfigError: a missing folder or stem (see :meth:`stem_files`).
            AudioIOError: a file cannot be decoded or converted.
        """
        out = torch.empty((len(self.targets), track.channels, track.length))
        notes = []
        for slot, (stem, path) in zip(out, self.stem_files(track.name).items(), strict=True):
            frames = _read_into(path, track, slot)
            if frames != track.length:
                fix = "zero-padded" if frames < track.length else "cut"
                notes.append(
                    f"{stem} has {frames} samples at {track.samplerate} Hz, the "
                    f"reference {track.length}: {fix} to its length"
                )
        return out, notes


def _read_into(path: Path, track: Track, slot: torch.Tensor) -> int:
    """Fill ``slot`` (C, T) with ``path`` at the track's rate and channel count, cut or
    zero-padded to its length; returns the converted file's frame count."""
    from demucs_rr.audio import convert_audio, read_audio
    from demucs_rr.audio.io import check_resampling
    from demucs_rr.audio.pcm import open_plain_wav, read_plain_wav

    plain = open_plain_wav(path)
    if plain is not None and (plain.rate, plain.channels) == (track.samplerate, track.channels):
        kept = min(plain.frames, track.length)  # read straight into place
        read_plain_wav(plain, 0, kept, out=slot[:, :kept].numpy())
        slot[:, kept:].zero_()
        return plain.frames
    wav, rate = read_audio(path)
    check_resampling(path, rate, track.samplerate)
    try:
        wav = convert_audio(wav, rate, track.samplerate, track.channels)
    except AudioIOError as err:
        raise AudioIOError(f"cannot use {path}: {err}") from None
    kept = min(wav.shape[-1], track.length)
    slot[:, :kept] = wav[:, :kept]
    slot[:, kept:].zero_()
    return wav.shape[-1]


def _base(root: Path, trackset: TrackSet) -> Path:
    """``root`` when it holds a reference track's folder, else ``root/<subset>`` if present."""
    names = {t.name for t in trackset.tracks}
    if any((root / n).is_dir() for n in names) or not (root / trackset.subset).is_dir():
        return root
    return root / trackset.subset


def _audio_stems(folder: Path) -> set[str]:
    from demucs_rr.audio import AUDIO_EXTENSIONS

    return {
        p.stem
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS
    }


def open_estimates(
    root: str | os.PathLike[str], trackset: TrackSet, stems: Sequence[str] | None = None
) -> tuple[EstimateFolder, list[str]]:
    """Find the estimates of ``trackset`` in ``root``.

    Args:
        root: the estimates folder (layout in the module docstring).
        trackset: the references.
        stems: the stems to score; default: every reference stem found among the estimates.

    Returns:
        (the estimates, notes: one line per folder that matches no reference track).

    Raises:
        ConfigError: ``root`` is not a folder, or no estimate file is named like a reference
            stem (one line naming what was expected).
    """
    base_root = Path(root).expanduser()
    if not base_root.is_dir():
        raise ConfigError(f"estimates folder {base_root} does not exist or is not a folder")
    base_root = base_root.resolve()
    base = _base(base_root, trackset)
    references = list(dict.fromkeys(s for t in trackset.tracks for s in t.stems))
    names = {t.name for t in trackset.tracks}
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = set().union(*(_audio_stems(p) for p in folders if p.name in names))
    if stems is not None:
        unknown = [s for s in stems if s not in references]
        if unknown:
            raise ConfigError(
                f"stem(s) {', '.join(unknown)} are not reference stems ({', '.join(references)})"
            )
        targets = list(stems)
    else:
        targets = [s for s in references if s in found]
    if not targets:
        raise ConfigError(
            f"no estimate file in {base}/<track>/ is named like a reference stem "
            f"({', '.join(references)}); expected e.g. {base}/{trackset.tracks[0].name}/"
            f"{references[0]}.wav"
        )
    notes = [
        f"ignored {p}: no reference track of that name"
        for p in folders
        if p.name not in names and p.name != trackset.subset
    ]
    return EstimateFolder(base_root, base, targets), notes
