"""Training data of every released model, and which evaluated tracks it marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from demucs_rr.data.tracks import Track
from demucs_rr.data.trackset import TrackSet
from demucs_rr.evaluate.contamination import release_training, training_overlap, training_summary
from demucs_rr.hub.catalogue import PRETRAINED
from demucs_rr.hub.msst_releases import MSST_RELEASES
from demucs_rr.hub.releases import OFFICIAL_BAGS
from demucs_rr.hub.training_data import published_training

RELEASES = sorted({*PRETRAINED, *OFFICIAL_BAGS, *MSST_RELEASES})
TEST_SET_TRAINED = {"mdx_extra", "mdx_extra_q"}
"""The Demucs README: "trained with extra training data (including MusDB test set)"."""


def _trackset(kind: str, subset: str, names: tuple[str, ...] = ("a", "b")) -> TrackSet:
    tracks = [Track(n, {}, None, 44100, 44100, 2, 0.0, 1.0) for n in names]
    return TrackSet(kind, Path("/data"), subset, tracks)


@pytest.mark.parametrize("name", RELEASES)
def test_every_release_states_its_training_data(name: str) -> None:
    training = release_training(name)
    assert training is not None and training.summary and training.source
    assert training.includes_musdb("test") == (name in TEST_SET_TRAINED)


@pytest.mark.parametrize("name", sorted(MSST_RELEASES))
def test_band_split_releases_read_their_published_wording(name: str) -> None:
    """The MUSDB18-HQ-only releases mark the train split (and its validation tracks); the
    community vocal models, whose training data is not published, mark nothing."""
    release = MSST_RELEASES[name]
    training = release_training(name)
    assert training is not None and training.summary == release.trained_on
    musdb_only = release.trained_on == "MUSDB18-HQ train"
    assert musdb_only == ("musdb18" in name)
    for subset in ("train", "valid"):
        assert training.includes_musdb(subset) == musdb_only
    assert training_summary(name) == release.trained_on


def test_an_unread_wording_is_refused() -> None:
    with pytest.raises(KeyError):
        published_training("MUSDB18-HQ train + 2000 songs")


@pytest.mark.parametrize(
    ("label", "kind", "subset", "marked"),
    [
        ("scnet_musdb18", "musdb-hq", "train", True),
        ("scnet_musdb18", "musdb-hq", "valid", True),
        ("scnet_musdb18", "musdb-hq", "test", False),
        ("scnet_musdb18", "folder", "train", False),
        ("mdx_extra_q", "musdb", "test", True),
        ("htdemucs", "musdb-hq", "test", False),
        ("bs_roformer_viperx_317", "musdb-hq", "test", False),
        ("my_tool", "musdb-hq", "test", False),
    ],
)
def test_estimates_labelled_after_a_release_are_marked(
    label: str, kind: str, subset: str, marked: bool
) -> None:
    overlap = training_overlap(None, _trackset(kind, subset), label=label)
    assert (overlap is not None) == marked
    if overlap is not None:
        assert overlap.tracks == ["a", "b"] and f"MUSDB18 {subset} tracks" in overlap.reason
