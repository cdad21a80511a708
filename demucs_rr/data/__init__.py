"""Training and evaluation data: multitrack folders, MUSDB18 splits, training items, synthetic set.

* :mod:`~demucs_rr.data.tracks`: :class:`Track`, :func:`scan_tracks` (cached metadata),
  :func:`load_track`.
* :mod:`~demucs_rr.data.trackset`: :func:`open_tracks`, one subset of a MUSDB18, MUSDB18-HQ or
  folder dataset as a :class:`TrackSet` (what evaluation reads).
* :mod:`~demucs_rr.data.datasets`: :class:`StemSegments` (normalised fixed-length stem items,
  optional repitch), :func:`split_tracks` (train / valid / test of a dataset).
* :mod:`~demucs_rr.data.musdb`: :func:`musdb_tracks` (official MUSDB18 / MUSDB18-HQ splits;
  compressed files are decoded once to wav).
* :mod:`~demucs_rr.data.repitch`: pitch/tempo augmentation through ``soundstretch``.
* :mod:`~demucs_rr.data.synthetic`: :func:`make_synthetic_dataset`, a procedural 4-stem set.

Every reader refuses a track whose files differ in length, sample rate or channel count, with a
one-line :class:`~demucs_rr.errors.ConfigError` naming the track.
"""

from demucs_rr.data.datasets import StemSegments, TrackSplits, split_tracks
from demucs_rr.data.musdb import musdb_tracks, validation_tracks
from demucs_rr.data.repitch import repitch, soundstretch_available
from demucs_rr.data.synthetic import make_synthetic_dataset
from demucs_rr.data.tracks import Track, load_track, scan_tracks
from demucs_rr.data.trackset import KINDS, TrackSet, open_tracks

__all__ = [
    "KINDS",
    "StemSegments",
    "Track",
    "TrackSet",
    "TrackSplits",
    "load_track",
    "make_synthetic_dataset",
    "musdb_tracks",
    "open_tracks",
    "repitch",
    "scan_tracks",
    "soundstretch_available",
    "split_tracks",
    "validation_tracks",
]
