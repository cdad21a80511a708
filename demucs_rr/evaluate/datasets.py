"""Evaluation datasets: MUSDB18 (``.stem.mp4`` via ``musdb``, or MUSDB18-HQ wav folders) and a
generic folder of tracks (one subfolder per track, one audio file per stem).

Every track loads as float32 tensors of shape (C, T) at the dataset's sample rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from demucs_rr.audio import AUDIO_EXTENSIONS, read_audio
from demucs_rr.errors import AudioIOError, ConfigError

logger = logging.getLogger(__name__)

MUSDB_SOURCES = ("drums", "bass", "other", "vocals")
MIXTURE = "mixture"


@dataclass(frozen=True)
class TrackAudio:
    """Audio of one track.

    Attributes:
        mixture: (C, T) float32 mixture.
        stems: stem name -> (C, T) float32 reference.
        samplerate: sample rate in Hz.
    """

    mixture: torch.Tensor
    stems: dict[str, torch.Tensor]
    samplerate: int


@dataclass(frozen=True)
class Track:
    """A track that can be loaded on demand (picklable, so worker processes can load it).

    Attributes:
        name: track name (unique in its dataset; names the JSON file).
        subset: subset folder of the results (``test`` for the MUSDB18 test set).
        loader: ``(name, spec) -> TrackAudio``; ``spec`` is loader-specific.
        spec: what the loader needs (paths, root, ...).
    """

    name: str
    subset: str
    loader: Callable[[str, tuple], TrackAudio]
    spec: tuple

    def load(self) -> TrackAudio:
        """Decode the mixture and the stems."""
        return self.loader(self.name, self.spec)


def _read_same_shape(paths: dict[str, Path]) -> tuple[dict[str, torch.Tensor], int]:
    """Read stems that must share rate, channels and length (lengths are cut to the shortest)."""
    out, rate = {}, None
    for stem, path in paths.items():
        wav, sr = read_audio(path)
        if rate is not None and sr != rate:
            raise AudioIOError(f"{path}: sample rate {sr} Hz differs from the other stems' {rate}")
        rate = sr
        out[stem] = wav
    channels = {w.shape[0] for w in out.values()}
    if len(channels) > 1:
        raise AudioIOError(f"stems of {next(iter(paths.values())).parent} have different "
                           f"channel counts {sorted(channels)}")
    length = min(w.shape[-1] for w in out.values())
    if any(w.shape[-1] != length for w in out.values()):
        logger.warning("stems in %s differ in length; cutting to %d samples",
                       next(iter(paths.values())).parent, length)
    assert rate is not None
    return {k: v[..., :length] for k, v in out.items()}, rate


def _load_folder_track(name: str, spec: tuple) -> TrackAudio:
    """spec: ((stem, path) pairs, mixture path or None)."""
    stem_paths, mixture_path = spec
    paths = dict(stem_paths)
    if mixture_path is not None:
        paths[MIXTURE] = Path(mixture_path)
    audio, rate = _read_same_shape({k: Path(v) for k, v in paths.items()})
    mixture = audio.pop(MIXTURE, None)
    if mixture is None:
        mixture = torch.stack(list(audio.values())).sum(dim=0)
    return TrackAudio(mixture=mixture, stems=audio, samplerate=rate)


def _audio_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            stem = path.name[: -len(".stem.mp4")] if path.name.endswith(".stem.mp4") else path.stem
            if stem in files:
                raise ConfigError(f"{folder}: two audio files for stem {stem!r}")
            files[stem] = path
    return files


def folder_dataset(root: str | Path, subset: str = "test",
                   tracks: Sequence[str] | None = None) -> list[Track]:
    """Tracks of a folder dataset: ``root/<track>/<stem>.<ext>`` (+ optional ``mixture.<ext>``).

    Any stem names are allowed; without a mixture file the mixture is the sum of the stems.
    A ``root/<subset>/`` folder, when present, is used as the root (MUSDB18-HQ layout).

    Args:
        root: dataset folder.
        subset: results subset name (and optional subfolder of ``root``).
        tracks: keep only these track names.
    """
    root = Path(root).expanduser()
    if (root / subset).is_dir():
        root = root / subset
    if not root.is_dir():
        raise ConfigError(f"dataset folder {root} does not exist")
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _audio_files(folder)
        mixture = files.pop(MIXTURE, None)
        if not files:
            continue
        spec = (tuple((k, str(v)) for k, v in files.items()), str(mixture) if mixture else None)
        found.append(Track(folder.name, subset, _load_folder_track, spec))
    if not found:
        raise ConfigError(f"no track folders with audio stems under {root}")
    return _select(found, tracks, root)


def _select(found: list[Track], tracks: Sequence[str] | None, root: Path) -> list[Track]:
    if not tracks:
        return found
    by_name = {t.name: t for t in found}
    missing = [name for name in tracks if name not in by_name]
    if missing:
        raise ConfigError(f"tracks not found under {root}: {', '.join(missing)}")
    return [by_name[name] for name in tracks]


def _musdb():  # noqa: ANN202 - the musdb module
    """Import the optional ``musdb`` package (its stempeg dependency also needs ffmpeg)."""
    try:
        import musdb
    except Exception as exc:  # ImportError, or stempeg failing without ffmpeg
        raise ConfigError(f"reading MUSDB18 .stem.mp4 files needs musdb and ffmpeg "
                          f"(pip install musdb; or use MUSDB18-HQ with --is-wav): {exc}") from None
    return musdb


def _load_musdb_track(name: str, spec: tuple) -> TrackAudio:
    """spec: (root, subset, is_wav)."""
    root, subset, _ = spec
    db = _musdb().DB(root=root, subsets=subset, is_wav=False)
    matches = [t for t in db.tracks if t.name == name]
    if not matches:
        raise ConfigError(f"track {name!r} not found in MUSDB18 at {root}")
    track = matches[0]
    try:
        stems = {s: _from_numpy(track.targets[s].audio) for s in MUSDB_SOURCES}
        mixture = _from_numpy(track.audio)
    except Exception as exc:  # stempeg/ffmpeg decoding errors have no common type
        raise AudioIOError(f"cannot decode MUSDB18 track {name!r}: {exc}") from None
    return TrackAudio(mixture=mixture, stems=stems, samplerate=int(track.rate))


def _from_numpy(audio) -> torch.Tensor:  # noqa: ANN001 - numpy array (T, C)
    return torch.from_numpy(audio.T.astype("float32").copy())


def musdb_dataset(root: str | Path, subset: str = "test", is_wav: bool = False,
                  tracks: Sequence[str] | None = None) -> list[Track]:
    """MUSDB18 tracks of one subset.

    Args:
        root: MUSDB18 root (holding ``train/`` and ``test/``).
        subset: ``test`` (50 tracks, the leaderboard set) or ``train``.
        is_wav: MUSDB18-HQ layout (``<subset>/<track>/{mixture,drums,bass,other,vocals}.wav``),
            read directly; otherwise ``<subset>/<track>.stem.mp4`` decoded by ``musdb``.
        tracks: keep only these track names.
    """
    root = Path(root).expanduser()
    folder = root / subset
    if not folder.is_dir():
        raise ConfigError(f"MUSDB18 subset folder {folder} does not exist (expected "
                          f"{root}/{{train,test}}/)")
    if is_wav:
        found = folder_dataset(root, subset)
        for t in found:
            stems = dict(t.spec[0])
            absent = [s for s in MUSDB_SOURCES if s not in stems]
            if absent:
                raise ConfigError(f"MUSDB18-HQ track {t.name} lacks {', '.join(absent)}")
        return _select(found, tracks, folder)
    names = sorted(p.name[: -len(".stem.mp4")] for p in folder.glob("*.stem.mp4"))
    if not names:
        raise ConfigError(f"no .stem.mp4 files in {folder} (use --is-wav for MUSDB18-HQ)")
    _musdb()  # fail early, before any separation, when musdb or ffmpeg is missing
    found = [Track(n, subset, _load_musdb_track, (str(root), subset, False)) for n in names]
    return _select(found, tracks, folder)
