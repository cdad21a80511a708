"""What the released models were trained on, as their official documentation states it.

Every entry of :data:`~demucs_rr.hub.catalogue.PRETRAINED` and
:data:`~demucs_rr.hub.releases.OFFICIAL_BAGS` carries one. Evaluation uses it to mark scores on
tracks a model was trained with (see :mod:`demucs_rr.evaluate.contamination`): a model trained
with the MUSDB18 test set scores higher there than on unseen music, and leaderboards keep it
out of their ranking. Packages trained here record their training tracks instead (the
``training`` block's ``train_tracks``).

Sources: the Demucs v2 README and ``demucs/pretrained.py`` (MUSDB18 train only; "extra" = 150
more songs), the Demucs v4 README ("`mdx_extra`: trained with extra training data (including
MusDB test set)", "`htdemucs`: Trained on MusDB + 800 songs") and ``docs/training.md``
(Track A of MDX 2021 = MusDB HQ only; Track B models add the MUSDB18 test set and extra data).
The band-split releases (:data:`~demucs_rr.hub.msst_releases.MSST_RELEASES`) carry the words of
MSST's table of pre-trained models (``trained_on``), read by :func:`published_training`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MDX_DOCS",
    "MSST_DOCS",
    "MUSDB_SUBSETS",
    "TRAIN",
    "TRAIN_TEST",
    "V2_DOCS",
    "V4_DOCS",
    "TrainingData",
    "published_training",
]

#: MUSDB18 subsets a release can have been trained with: ``train`` (the 100 tracks of the
#: official train split, whose 14 validation tracks included) and ``test`` (50 tracks).
MUSDB_SUBSETS = ("train", "test")


@dataclass(frozen=True)
class TrainingData:
    """The training data of a released model.

    Attributes:
        summary: one line, e.g. ``MUSDB18-HQ train + test + extra songs``.
        musdb: the MUSDB18 subsets among the training data (see :data:`MUSDB_SUBSETS`).
        source: where the official documentation says so.
    """

    summary: str
    musdb: frozenset[str]
    source: str

    def includes_musdb(self, subset: str) -> bool:
        """Whether the MUSDB18 ``subset`` (``train``, ``valid`` or ``test``) was trained on;
        ``valid`` is part of the official train split."""
        return ("train" if subset == "valid" else subset) in self.musdb


TRAIN = frozenset({"train"})
"""MUSDB18 train split only."""
TRAIN_TEST = frozenset({"train", "test"})
"""MUSDB18 train and test splits."""
V2_DOCS = "Demucs v2 README and demucs/pretrained.py"
V4_DOCS = "Demucs v4 README (list of pre-trained models)"
MDX_DOCS = "Demucs v4 README and docs/training.md (MDX 2021 track B)"
MSST_DOCS = "MSST README (table of pre-trained models)"

PUBLISHED_MUSDB: dict[str, frozenset[str]] = {
    "MUSDB18-HQ train": TRAIN,
    "not published": frozenset(),
}
"""The MUSDB18 subsets in each ``trained_on`` wording of the band-split releases. "not
published" (the community vocal models) marks nothing: like a package that lists no tracks,
its overlap is unknown, and the leaderboard says so in its training-data column."""


def published_training(trained_on: str, source: str = MSST_DOCS) -> TrainingData:
    """The :class:`TrainingData` of a release whose training data is one published wording.

    Raises:
        KeyError: a wording not in :data:`PUBLISHED_MUSDB` (a new release must be read and
            added there, not guessed).
    """
    return TrainingData(trained_on, PUBLISHED_MUSDB[trained_on], source)
