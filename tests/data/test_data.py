"""Track scanning and its cache, training items, splits, dataset subsets for evaluation, MUSDB18
decoding and repitch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from demucs_rr.audio import resample
from demucs_rr.data import datasets, musdb, tracks
from demucs_rr.data.datasets import StemSegments, split_tracks
from demucs_rr.data.musdb import musdb_tracks, validation_tracks
from demucs_rr.data.repitch import draw_repitch, repitch, soundstretch_available
from demucs_rr.data.tracks import CACHE_NAME, load_track, scan_tracks
from demucs_rr.data.trackset import open_tracks
from demucs_rr.errors import AudioIOError, ConfigError
from demucs_rr.sources import MUSDB_SOURCES

RATE = 8000
STEMS = ["drums", "bass"]

needs_soundstretch = pytest.mark.skipif(
    not soundstretch_available(), reason="soundstretch not installed"
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))


def _write(path: Path, data: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Write (C, T) float samples as float wav; returns what reading gives back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data.T.astype(np.float32), rate, subtype="FLOAT")
    return data.astype(np.float32)


def _make_track(
    folder: Path, length: int, seed: int, rate: int = RATE, channels: int = 2, mixture: bool = True
) -> dict[str, np.ndarray]:
    """Random stems (and a mixture that is NOT their sum) in ``folder``; returns them."""
    rng = np.random.default_rng(seed)
    out = {
        name: _write(
            folder / f"{name}.wav",
            0.1 * rng.standard_normal((channels, length)) + 0.01 * (i + 1),
            rate,
        )
        for i, name in enumerate(STEMS)
    }
    if mixture:
        mix = sum(out.values()) * 0.8 + 0.05
        out["mixture"] = _write(folder / "mixture.wav", mix, rate)
    return out


def _stats(mix: np.ndarray) -> tuple[float, float]:
    mono = mix.astype(np.float64).mean(axis=0)
    return float(mono.mean()), float(np.std(mono, ddof=1))


# --------------------------------------------------------------------------- scan_tracks


def test_scan_metadata_values(tmp_path: Path) -> None:
    root = tmp_path / "set"
    a = _make_track(root / "Song A", 1000, 0)
    b = _make_track(root / "Song B", 700, 1, channels=1, mixture=False)
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("not a track")
    found = scan_tracks(root, STEMS)
    assert [t.name for t in found] == ["Song A", "Song B"]
    first, second = found
    assert (first.length, first.samplerate, first.channels) == (1000, RATE, 2)
    assert first.mixture == root.resolve() / "Song A" / "mixture.wav"
    assert first.stems == {name: root.resolve() / "Song A" / f"{name}.wav" for name in STEMS}
    assert (first.mean, first.std) == pytest.approx(_stats(a["mixture"]), rel=1e-6)
    assert second.mixture is None and second.channels == 1 and second.length == 700
    assert (second.mean, second.std) == pytest.approx(_stats(b["drums"] + b["bass"]), rel=1e-6)
    mix, stems = load_track(first, STEMS)
    assert mix.dtype == torch.float32 and stems.shape == (2, 2, 1000)
    np.testing.assert_array_equal(mix.numpy(), a["mixture"])
    np.testing.assert_array_equal(stems[1].numpy(), a["bass"])
    mix, stems = load_track(second, ["bass"])  # no mixture file: the sum of every stem
    np.testing.assert_array_equal(mix.numpy(), b["drums"] + b["bass"])
    np.testing.assert_array_equal(stems[0].numpy(), b["bass"])
    with pytest.raises(ConfigError, match="no stem 'vocals'"):
        load_track(first, ["vocals"])


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_load_track_refuses_a_stem_changed_since_the_scan(tmp_path: Path, suffix: str) -> None:
    """A stem rewritten shorter after the scan is one line naming it, whichever reader reads
    it (direct wav reader, soundfile)."""
    folder = tmp_path / "set" / "Song"
    rng = np.random.default_rng(0)
    for name in STEMS:
        soundfile.write(_path(folder, name, suffix), 0.1 * rng.standard_normal((1000, 2)), RATE)
    (track,) = scan_tracks(tmp_path / "set", STEMS, mixture=None)
    soundfile.write(_path(folder, "bass", suffix), np.zeros((600, 2)), RATE)
    with pytest.raises(AudioIOError, match=r"bass\.\w+: it changed since its track was scanned"):
        load_track(track, STEMS)


def _path(folder: Path, name: str, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}{suffix}"


def _forbid_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio was read although the metadata is cached")

    monkeypatch.setattr(soundfile, "read", fail)
    monkeypatch.setattr(soundfile, "info", fail)
    monkeypatch.setattr(tracks, "read_audio", fail)


def test_scan_cache_is_used_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "set"
    _make_track(root / "Song A", 1000, 0)
    _make_track(root / "Song B", 800, 1)
    first = scan_tracks(root, STEMS)
    assert (root / CACHE_NAME).is_file()
    with monkeypatch.context() as patch:
        _forbid_reads(patch)
        assert scan_tracks(root, STEMS) == first
    # replace one mixture (same size, new content and mtime): only that track changes
    new = _write(root / "Song B" / "mixture.wav", np.full((2, 800), 0.3))
    os.utime(root / "Song B" / "mixture.wav", ns=(1, 1))
    again = scan_tracks(root, STEMS)
    assert again[0] == first[0]
    assert again[1].mean == pytest.approx(_stats(new)[0]) and again[1].std == 0.0
    assert again[1].mean != pytest.approx(first[1].mean)
    # a cache disabled scan ignores a stale cache file
    (root / CACHE_NAME).write_text('{"version": 1, "files": {}, "stats": {}}')
    assert scan_tracks(root, STEMS, cache=False) == again


def test_scan_cache_falls_back_when_root_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "set"
    _make_track(root / "Song A", 500, 0)
    root.chmod(0o555)  # also honoured when the tests run as root
    try:
        first = scan_tracks(root, STEMS)
        assert not (root / CACHE_NAME).exists()
        cached = list((tmp_path / "cache" / "metadata").glob("*.json"))
        assert len(cached) == 1
        with monkeypatch.context() as patch:
            _forbid_reads(patch)
            assert scan_tracks(root, STEMS) == first
    finally:
        root.chmod(0o755)


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        scan_tracks(tmp_path / "missing", STEMS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no track folders"):
        scan_tracks(tmp_path / "empty", STEMS)
    root = tmp_path / "set"
    _make_track(root / "Song A", 500, 0)
    with pytest.raises(ConfigError, match=r"track 'Song A' is missing stem 'vocals'"):
        scan_tracks(root, [*STEMS, "vocals"])
    _write(root / "Song A" / "bass.wav", np.zeros((2, 499)))
    with pytest.raises(ConfigError, match=r"'Song A' has stems of different lengths: .*bass=499"):
        scan_tracks(root, STEMS)
    _write(root / "Song A" / "bass.wav", np.zeros((2, 500)), rate=16000)
    with pytest.raises(ConfigError, match=r"different sample rates: .*bass=16000"):
        scan_tracks(root, STEMS)
    _write(root / "Song A" / "bass.wav", np.zeros((2, 500)))
    shutil.copy(root / "Song A" / "bass.wav", root / "Song A" / "bass.flac")
    with pytest.raises(ConfigError, match="several files for stem 'bass'"):
        scan_tracks(root, STEMS)
    (root / "Song A" / "bass.flac").unlink()
    (root / "Song A" / "drums.wav").write_bytes(b"garbage" * 10)
    with pytest.raises(ConfigError, match=r"track 'Song A': .*drums\.wav"):
        scan_tracks(root, STEMS)


# --------------------------------------------------------------------------- StemSegments


def test_stem_segments_items_match_direct_slicing(tmp_path: Path) -> None:
    root = tmp_path / "set"
    data = {
        name: _make_track(root / name, length, seed)
        for name, length, seed in (("a", 8000, 0), ("b", 4400, 1), ("c", 1500, 2))
    }
    found = scan_tracks(root, STEMS)
    ds = StemSegments(found, STEMS, segment=2000, stride=1000, samplerate=RATE)
    assert len(ds) == 7 + 3 + 1
    expected = [("a", k * 1000) for k in range(7)] + [("b", k * 1000) for k in range(3)]
    expected.append(("c", 0))
    for index, (name, offset) in enumerate(expected):
        track, where = ds.locate(index)
        assert (track.name, where) == (name, offset)
        item = ds[index]
        assert item.shape == (2, 2, 2000) and item.dtype == torch.float32
        stems = np.stack([data[name][s] for s in STEMS])[..., offset : offset + 2000]
        ref = (stems - track.mean) / track.std
        np.testing.assert_allclose(item[..., : ref.shape[-1]].numpy(), ref, rtol=1e-5, atol=1e-5)
        assert not item[..., ref.shape[-1] :].any()  # zero padding of the short track
    raw = StemSegments(found, STEMS, segment=2000, stride=1000, normalize=False, samplerate=RATE)
    np.testing.assert_array_equal(
        raw[8].numpy(), np.stack([data["b"][s] for s in STEMS])[..., 1000:3000]
    )
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_stem_segments_convert_rate_and_channels(tmp_path: Path) -> None:
    root = tmp_path / "set"
    data = _make_track(root / "mono16k", 16000, 0, rate=16000, channels=1)
    found = scan_tracks(root, STEMS)
    ds = StemSegments(
        found, STEMS, segment=1000, stride=500, samplerate=RATE, channels=2, normalize=False
    )
    assert len(ds) == (8000 - 1000) // 500 + 1
    item = ds[6]  # starts at 3000 samples of 8 kHz = 6000 of 16 kHz
    assert item.shape == (2, 2, 1000)
    torch.testing.assert_close(item[:, 0], item[:, 1])
    full = resample(torch.from_numpy(np.stack([data[s] for s in STEMS])), 16000, RATE)
    # away from the item's edges, resampling the excerpt equals resampling the whole track
    torch.testing.assert_close(item[:, 0, 100:900], full[:, 0, 3100:3900], atol=2e-3, rtol=0)


def test_stem_segments_rejects_bad_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_track(tmp_path / "set" / "a", 1000, 0)
    found = scan_tracks(tmp_path / "set", STEMS)
    with pytest.raises(ConfigError, match="no stem 'vocals'"):
        StemSegments(found, ["vocals"], 100, 100)
    with pytest.raises(ConfigError, match="segment and stride"):
        StemSegments(found, STEMS, 0, 100)
    with pytest.raises(ConfigError, match="no tracks"):
        StemSegments([], STEMS, 100, 100)
    monkeypatch.setattr(datasets, "soundstretch_available", lambda: False)
    with pytest.raises(ConfigError, match="soundstretch"):
        StemSegments(found, STEMS, 100, 100, repitch_proba=0.2)


# --------------------------------------------------------------------------- splits


def _musdb_hq(root: Path) -> None:
    names = {"train": [validation_tracks()[0], "Zz Song"], "test": ["Test Song"]}
    for subset, tracks_ in names.items():
        for seed, name in enumerate(tracks_):
            folder = root / subset / name
            rng = np.random.default_rng(seed)
            stems = [
                _write(folder / f"{s}.wav", 0.1 * rng.standard_normal((2, 300)))
                for s in MUSDB_SOURCES
            ]
            _write(folder / "mixture.wav", sum(stems))


def test_musdb_hq_splits(tmp_path: Path) -> None:
    names = validation_tracks()
    assert len(names) == 14 and names[0] == "Actions - One Minute Smile"
    assert names == list(musdb.VALIDATION_TRACKS)
    _musdb_hq(tmp_path / "hq")
    assert [t.name for t in musdb_tracks(tmp_path / "hq", "train", True)] == ["Zz Song"]
    assert [t.name for t in musdb_tracks(tmp_path / "hq", "valid", True)] == [names[0]]
    assert [t.name for t in musdb_tracks(tmp_path / "hq", "test", True)] == ["Test Song"]
    splits = split_tracks(tmp_path / "hq", list(MUSDB_SOURCES), "musdb-hq")
    assert [t.name for t in splits.train + splits.valid + splits.test] == [
        "Zz Song",
        names[0],
        "Test Song",
    ]
    with pytest.raises(ConfigError, match="unknown MUSDB18 split"):
        musdb_tracks(tmp_path / "hq", "extra", True)
    shutil.rmtree(tmp_path / "hq" / "train" / names[0])
    with pytest.raises(ConfigError, match="none of the 14 MUSDB18 validation tracks"):
        musdb_tracks(tmp_path / "hq", "valid", True)


def test_folder_splits(tmp_path: Path) -> None:
    for split, count in (("train", 2), ("valid", 1)):
        for index in range(count):
            _make_track(tmp_path / split / f"{split}-{index}", 400, index)
    splits = split_tracks(tmp_path, STEMS)
    assert [t.name for t in splits.train] == ["train-0", "train-1"]
    assert [t.name for t in splits.valid] == ["valid-0"] and splits.test == []
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        split_tracks(tmp_path, STEMS, "raw")
    with pytest.raises(ConfigError, match="does not exist"):
        split_tracks(tmp_path, STEMS, subset_valid="validation")


# --------------------------------------------------------------------------- evaluation subsets


def test_scan_discovers_stems_when_none_are_named(tmp_path: Path) -> None:
    root = tmp_path / "set"
    a = _make_track(root / "Song A", 600, 0)
    _write(root / "Song B" / "guitar.wav", np.zeros((2, 600)))
    _write(root / "Song B" / "rest.wav", np.full((2, 600), 0.1))
    (root / "Artwork").mkdir()
    (root / "Artwork" / "cover.txt").write_text("no audio here")
    found = scan_tracks(root, None)
    assert [t.name for t in found] == ["Song A", "Song B"]
    assert list(found[0].stems) == ["bass", "drums"] and found[0].mixture is not None
    assert list(found[1].stems) == ["guitar", "rest"] and found[1].mixture is None
    mix, stems = load_track(found[0], list(found[0].stems))
    np.testing.assert_array_equal(stems[0].numpy(), a["bass"])
    _write(root / "Song B" / "rest.wav", np.zeros((2, 601)))
    with pytest.raises(ConfigError, match=r"track 'Song B' has stems of different lengths"):
        scan_tracks(root, None)


def test_open_tracks_folder_subsets(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _make_track(flat / "x", 300, 0)
    _make_track(flat / "y", 300, 1)
    whole = open_tracks("folder", flat)
    assert (whole.kind, whole.root, whole.subset) == ("folder", flat.resolve(), "test")
    assert [t.name for t in whole.tracks] == ["x", "y"] and whole.label == "folder-flat-test"
    assert whole.describe() == {"kind": "folder", "root": str(flat.resolve()), "subset": "test"}
    assert [t.name for t in open_tracks("folder", flat, names=["y"]).tracks] == ["y"]
    with pytest.raises(ConfigError, match="tracks not found in .*: nope"):
        open_tracks("folder", flat, names=["nope"])
    with pytest.raises(ConfigError, match="subset folder .*valid does not exist"):
        open_tracks("folder", flat, "valid")
    layered = tmp_path / "layered"
    _make_track(layered / "test" / "t", 300, 2)
    _make_track(layered / "valid" / "v", 300, 3)
    default = open_tracks("folder", layered)
    assert default.subset == "test" and [t.name for t in default.tracks] == ["t"]
    assert open_tracks("folder", layered, "valid").label == "folder-layered-valid"
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        open_tracks("wav", layered)


def test_open_tracks_musdb_hq(tmp_path: Path) -> None:
    _musdb_hq(tmp_path / "hq")
    test = open_tracks("musdb-hq", tmp_path / "hq")
    assert (test.subset, test.label, [t.name for t in test.tracks]) == (
        "test",
        "musdb-hq-test",
        ["Test Song"],
    )
    assert list(test.tracks[0].stems) == list(MUSDB_SOURCES)
    valid = open_tracks("musdb-hq", tmp_path / "hq", "valid")
    assert [t.name for t in valid.tracks] == [validation_tracks()[0]]
    with pytest.raises(ConfigError, match="not in the MUSDB18 train split .*: Test Song"):
        open_tracks("musdb-hq", tmp_path / "hq", "train", ["Test Song"])
    with pytest.raises(ConfigError, match="unknown MUSDB18 subset 'all'"):
        open_tracks("musdb-hq", tmp_path / "hq", "all")


def test_musdb_compressed_decodes_once(
    eval_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed: compressed MUSDB18 cannot be decoded")
    root = eval_data / "musdb18-stems"
    found = musdb_tracks(root, "train", False, cache_dir=tmp_path / "wav")
    assert [t.name for t in found] == ["Music Delta - 80s Rock"]
    track = found[0]
    assert (track.length, track.samplerate, track.channels) == (300032, 44100, 2)
    assert track.mixture is not None and track.mixture.is_relative_to(tmp_path / "wav")
    excerpt = eval_data / "musdb18-excerpts" / "Music Delta - 80s Rock"
    mix, stems = load_track(track, list(MUSDB_SOURCES))
    for name, wav in [("mixture", mix), *zip(MUSDB_SOURCES, stems, strict=True)]:
        ref, _ = soundfile.read(excerpt / f"{name}.wav", dtype="float32", always_2d=True)
        np.testing.assert_allclose(wav.numpy(), ref.T, atol=1.6e-5, rtol=0, err_msg=name)
    assert (track.mean, track.std) == pytest.approx(_stats(mix.numpy()), rel=1e-6)
    with pytest.raises(ConfigError, match="none of the 14"):
        musdb_tracks(root, "valid", False, cache_dir=tmp_path / "wav")

    def no_ffmpeg(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded twice")

    monkeypatch.setattr(musdb.subprocess, "run", no_ffmpeg)
    assert musdb_tracks(root, "train", False, cache_dir=tmp_path / "wav") == found
    monkeypatch.setattr(musdb.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs ffmpeg"):
        musdb_tracks(root, "train", False, cache_dir=tmp_path / "other")


# --------------------------------------------------------------------------- repitch


@needs_soundstretch
def test_repitch_changes_length_by_tempo() -> None:
    gen = torch.Generator().manual_seed(0)
    stems = torch.randn(2, 2, 8000, generator=gen) * 2  # peaks far above 1
    for tempo in (-12.0, 10.0):
        out = repitch(stems, 1, tempo, RATE, speech=[1])
        assert out.shape[:2] == (2, 2) and out.dtype == torch.float32
        assert abs(out.shape[-1] - 8000 / (1 + tempo / 100)) <= 8000 * 0.002
        assert out.abs().max() > 4  # no clipping at +-1 by default
    same = repitch(stems, 0, 0.0, RATE)
    assert abs(same.shape[-1] - 8000) <= 16
    assert repitch(stems, 0, 0.0, RATE, clamp=True).abs().max() <= 1.0  # official quirk


@needs_soundstretch
def test_stem_segments_repitch_is_seeded(tmp_path: Path) -> None:
    _make_track(tmp_path / "set" / "a", 3000, 0)
    found = scan_tracks(tmp_path / "set", STEMS)
    ds = StemSegments(
        found,
        STEMS,
        segment=1000,
        stride=1000,
        samplerate=RATE,
        repitch_proba=1.0,
        max_tempo=12.0,
        seed=0,
    )
    assert ds.read_length == 1137 and len(ds) == (3000 - 1137) // 1000 + 1
    first = ds[1]
    assert first.shape == (2, 2, 1000)
    torch.testing.assert_close(ds[1], first)
    # the draw of (seed 0, epoch 0, item 1), applied by hand to the un-repitched read
    rng = np.random.default_rng([0, 0, 1])
    assert rng.random() < 1.0
    semitones, tempo = draw_repitch(rng, 12.0)
    assert semitones != 0
    plain = StemSegments(found, STEMS, segment=1137, stride=1000, samplerate=RATE)
    expected = repitch(plain[1], semitones, tempo, RATE)[..., :1000]
    torch.testing.assert_close(first, expected)
    assert not torch.allclose(first, plain[1][..., :1000], atol=1e-2)
    ds.set_epoch(1)
    assert not torch.allclose(ds[1], first, atol=1e-2)
