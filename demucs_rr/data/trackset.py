"""One subset of a dataset, as evaluation reads it: its tracks and where they come from.

Dataset kinds (:data:`KINDS`), read through the same scanner, cache and length policy as
training (:func:`~demucs_rr.data.tracks.scan_tracks`, :func:`~demucs_rr.data.musdb.musdb_tracks`):

* ``musdb``: compressed MUSDB18 (``root/{train,test}/<track>.stem.mp4``), decoded once into the
  cache folder; subsets are the official splits ``test``, ``train`` and ``valid``.
* ``musdb-hq``: MUSDB18-HQ wav folders (``root/{train,test}/<track>/<stem>.wav``), same splits.
* ``folder``: one sub-folder per track with one audio file per stem (any stem names) and an
  optional ``mixture`` file. The subset is a sub-folder of ``root``; by default ``root/test/``
  when it exists, else every track folder of ``root`` itself, recorded as subset ``test`` (the
  subset folder museval's tools read results from).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from demucs_rr.data.musdb import SPLITS, musdb_tracks
from demucs_rr.data.tracks import Track, scan_tracks
from demucs_rr.errors import ConfigError
from demucs_rr.sources import MUSDB_SOURCES

__all__ = ["KINDS", "TrackSet", "open_tracks"]

#: Dataset kinds: compressed MUSDB18, MUSDB18-HQ, and a folder of track folders.
KINDS = ("musdb", "musdb-hq", "folder")
#: Subset name of a folder dataset whose track folders lie directly in its root.
WHOLE_FOLDER = "test"


@dataclass(frozen=True)
class TrackSet:
    """The tracks of one dataset subset.

    Attributes:
        kind: one of :data:`KINDS`.
        root: absolute dataset root (the folder given, above any subset folder).
        subset: ``test``, ``train`` or ``valid`` for MUSDB18; for a folder dataset, the
            sub-folder scanned (``test`` also when the track folders lie in ``root``).
        tracks: the tracks, sorted by name.
    """

    kind: str
    root: Path
    subset: str
    tracks: list[Track]

    def describe(self) -> dict[str, str]:
        """``{"kind", "root", "subset"}`` as strings (what results record)."""
        return {"kind": self.kind, "root": str(self.root), "subset": self.subset}

    @property
    def label(self) -> str:
        """Short name: ``musdb-test``, ``musdb-hq-valid``, ``folder-<root name>-<subset>``."""
        if self.kind == "folder":
            return f"folder-{self.root.name}-{self.subset}"
        return f"{self.kind}-{self.subset}"


def _folder_subset(root: Path, subset: str | None) -> tuple[Path, str]:
    """The folder to scan and the subset name of a folder dataset."""
    if subset is None:
        return (root / "test", "test") if (root / "test").is_dir() else (root, WHOLE_FOLDER)
    if not (root / subset).is_dir():
        raise ConfigError(
            f"subset folder {root / subset} does not exist (leave the subset out "
            f"to score every track folder of {root})"
        )
    return root / subset, subset


def _check_names(folder: Path, names: Collection[str] | None) -> None:
    missing = sorted(name for name in set(names or ()) if not (folder / name).is_dir())
    if missing:
        raise ConfigError(f"tracks not found in {folder}: {', '.join(missing)}")


def open_tracks(
    kind: str,
    root: str | Path,
    subset: str | None = None,
    names: Collection[str] | None = None,
    *,
    sources: Sequence[str] | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> TrackSet:
    """List the tracks of one dataset subset (metadata only; audio is read by ``load_track``).

    Args:
        kind: ``musdb``, ``musdb-hq`` or ``folder``.
        root: dataset root.
        subset: MUSDB18 split (default ``test``), or a folder dataset's sub-folder (default:
            ``test/`` when present, else every track folder of ``root``, as subset ``test``).
        names: only these tracks.
        sources: stems to read; default: the four MUSDB18 sources for MUSDB18, every audio
            file but the mixture for a folder.
        cache: use the metadata cache.
        cache_dir: decode folder of compressed MUSDB18.

    Raises:
        ConfigError: unknown kind or subset, missing folders or tracks, or a track whose
            stems differ in length, sample rate or channel count (naming the track).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}, choose from {', '.join(KINDS)}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"dataset folder {base} does not exist or is not a folder")
    base = base.resolve()
    if kind == "folder":
        folder, subset = _folder_subset(base, subset)
        _check_names(folder, names)
        tracks = scan_tracks(folder, sources, "mixture", cache, include=names)
        return TrackSet(kind, base, subset, tracks)
    subset = subset or "test"
    if subset not in SPLITS:
        raise ConfigError(f"unknown MUSDB18 subset {subset!r}, choose from {', '.join(SPLITS)}")
    tracks = musdb_tracks(
        base,
        subset,
        kind == "musdb-hq",
        sources or MUSDB_SOURCES,
        cache_dir=cache_dir,
        cache=cache,
        names=names,
    )
    return TrackSet(kind, base, subset, tracks)
