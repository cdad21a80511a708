"""Which evaluated tracks a model was trained with.

A model scores higher on its own training tracks than on unseen music, so such scores must not
be ranked with the others. Two sources of truth:

* released models (``-n htdemucs``, ``mdx_extra``, ``scnet_musdb18``, ...): the MUSDB18
  subsets their official documentation says they were trained with
  (:mod:`demucs_rr.hub.training_data`), checked against a MUSDB18 / MUSDB18-HQ dataset and
  subset; ``mdx_extra`` and ``mdx_extra_q`` were trained with the MUSDB18 test set;
* packages trained here: the ``train_tracks`` of their ``training`` block, checked track by
  track against the evaluated track names (any dataset).

Scores of other tools' stems (``evaluate --estimates``) are checked under their label, so
naming them after the released model they come from marks them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demucs_rr.data.trackset import TrackSet

if TYPE_CHECKING:
    from demucs_rr.hub.training_data import TrainingData

__all__ = [
    "Overlap",
    "release_training",
    "training_overlap",
    "training_summary",
    "training_tracks",
]


@dataclass(frozen=True)
class Overlap:
    """The evaluated tracks a model was trained with.

    Attributes:
        tracks: their names.
        reason: one line saying how this is known.
    """

    tracks: list[str]
    reason: str

    def to_json(self) -> dict[str, Any]:
        """What results record (``contamination`` key)."""
        return {"tracks": len(self.tracks), "reason": self.reason}


def release_training(name: str) -> TrainingData | None:
    """The training data of a released model name (v2 catalogue, v3/v4 bag or band-split
    release), or None."""
    from demucs_rr.hub.catalogue import PRETRAINED
    from demucs_rr.hub.msst_releases import MSST_RELEASES
    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from demucs_rr.hub.training_data import published_training

    if name in PRETRAINED:
        return PRETRAINED[name].training
    if name in OFFICIAL_BAGS:
        return OFFICIAL_BAGS[name].training
    if name in MSST_RELEASES:
        return published_training(MSST_RELEASES[name].trained_on)
    return None


def training_tracks(model: object, repo: Path | None = None) -> set[str]:
    """Track names a model package records as its training split (empty when unknown)."""
    from demucs_rr.hub.package import read_package_metadata

    if not isinstance(model, (str, Path)):
        return set()
    candidates = [Path(model).expanduser()]
    if repo is not None:
        candidates.append(Path(repo).expanduser() / f"{model}.safetensors")
    for path in candidates:
        if path.is_file() and path.suffix == ".safetensors":
            training = read_package_metadata(path).get("training") or {}
            return set(training.get("train_tracks") or ())
    return set()


def training_summary(model: object, repo: Path | None = None) -> str:
    """One line on a model's training data: a release's, a package's track count, or
    ``unknown``."""
    if isinstance(model, str):
        release = release_training(model)
        if release is not None:
            return release.summary
    tracks = training_tracks(model, repo)
    return f"{len(tracks)} listed tracks" if tracks else "unknown"


def training_overlap(
    model: object, trackset: TrackSet, repo: Path | None = None, label: str | None = None
) -> Overlap | None:
    """The tracks of ``trackset`` the model (or the release named ``label``) was trained with.

    Args:
        model: pretrained name, package path, or a model object (unknown training data).
        trackset: the evaluated dataset subset.
        repo: folder searched first for model files.
        label: the name the results go by, looked up among the releases when ``model`` is
            not a released name (estimate files named after the model they come from).

    Returns:
        None when no evaluated track is known to be in the training data.
    """
    names = [t.name for t in trackset.tracks]
    name = model if isinstance(model, str) and release_training(model) else label
    release = release_training(name) if isinstance(name, str) else None
    if (
        release is not None
        and trackset.kind in ("musdb", "musdb-hq")
        and release.includes_musdb(trackset.subset)
    ):
        return Overlap(
            names,
            f"{name} was trained with the MUSDB18 {trackset.subset} tracks "
            f"({release.summary}; {release.source})",
        )
    listed = training_tracks(model, repo)
    overlap = [n for n in names if n in listed]
    if overlap:
        return Overlap(overlap, _package_reason(overlap))
    return None


def _package_reason(overlap: Sequence[str]) -> str:
    more = f" and {len(overlap) - 3} more" if len(overlap) > 3 else ""
    return (
        f"the package lists {len(overlap)} evaluated track(s) as training tracks "
        f"({', '.join(overlap[:3])}{more})"
    )
