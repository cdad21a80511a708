"""MUSDB18 and MUSDB18-HQ track lists with the official train / valid / test splits.

MUSDB18-HQ (``is_wav=True``) is read in place: ``root/{train,test}/<track>/<stem>.wav``.
Compressed MUSDB18 (``root/{train,test}/<track>.stem.mp4``, 5 AAC streams in the order mixture,
drums, bass, other, vocals) is decoded once with ffmpeg into the same HQ layout under a cache
folder (16-bit wav, like MUSDB18-HQ; one ffmpeg call per track writes all 5 streams), and then
read like MUSDB18-HQ. A decoded track is re-decoded when its ``.stem.mp4`` changes size or
modification time.

Splits as in the official recipe: ``train`` = the ``train`` folder minus the 14 validation
tracks listed in musdb's configuration (86 tracks), ``valid`` = those 14, ``test`` = the
``test`` folder (50 tracks). The validation names come from the installed ``musdb`` package's
``configs/mus.yaml`` when it is there, else from :data:`VALIDATION_TRACKS`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path

from demucs_rr import runtime
from demucs_rr.data.tracks import Track, scan_tracks
from demucs_rr.errors import ConfigError, DemucsRRError
from demucs_rr.sources import MUSDB_SOURCES

__all__ = [
    "SPLITS",
    "STEM_ORDER",
    "VALIDATION_TRACKS",
    "decode_stems",
    "musdb_tracks",
    "validation_tracks",
]

logger = logging.getLogger(__name__)

#: Audio streams of a ``.stem.mp4`` file, in stream order.
STEM_ORDER: tuple[str, ...] = ("mixture", *MUSDB_SOURCES)
#: The 14 validation tracks of musdb 0.4 (``validation_tracks`` in ``musdb/configs/mus.yaml``).
VALIDATION_TRACKS: tuple[str, ...] = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
_SUFFIX = ".stem.mp4"
_STAMP = ".source.json"
#: Official splits: ``train`` (86 tracks), ``valid`` (14, taken out of train), ``test`` (50).
SPLITS = ("train", "valid", "test")


def validation_tracks() -> list[str]:
    """The musdb validation track names, from the installed musdb package if any."""
    spec = importlib.util.find_spec("musdb")
    if spec is not None and spec.origin:
        config = Path(spec.origin).parent / "configs" / "mus.yaml"
        try:
            import yaml

            names = yaml.safe_load(config.read_text(encoding="utf-8"))["validation_tracks"]
            if names and all(isinstance(name, str) for name in names):
                return list(names)
        except Exception as err:  # any problem: fall back to the embedded list
            logger.debug("cannot read %s (%s); using the embedded list", config, err)
    return list(VALIDATION_TRACKS)


# --------------------------------------------------------------------------- decoding


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _decoded(folder: Path, source: Path) -> bool:
    """Whether ``folder`` holds a complete decode of the current ``source`` file."""
    try:
        stamp = json.loads((folder / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == _stamp(source) and all((folder / f"{s}.wav").is_file() for s in STEM_ORDER)


def _decode_one(source: Path, target: Path) -> None:
    """Decode the 5 streams of ``source`` into ``target/<stem>.wav``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name[:40]}.{secrets.token_hex(4)}.part"
    tmp.mkdir()  # permissions from the umask (mkdtemp would make it private)
    try:
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", "file:" + str(source)]
        for index, stem in enumerate(STEM_ORDER):
            command += [
                "-map",
                f"0:a:{index}",
                "-c:a",
                "pcm_s16le",
                "-f",
                "wav",
                "file:" + str(tmp / f"{stem}.wav"),
            ]
        proc = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            reason = " ".join(proc.stderr.decode("utf-8", "replace").split())[-300:]
            raise DemucsRRError(
                f"cannot decode {source} with ffmpeg: {reason} "
                "(a MUSDB18 .stem.mp4 has 5 audio streams)"
            )
        (tmp / _STAMP).write_text(json.dumps(_stamp(source)), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _decoded(target, source):  # another process finished it first, else fail
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def decode_stems(
    root: str | Path,
    subset: str,
    names: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Decode ``root/<subset>/*.stem.mp4`` once into an HQ-layout folder; returns that folder.

    Args:
        root: compressed MUSDB18 root.
        subset: ``"train"`` or ``"test"``.
        names: track names to decode (default: all in the subset).
        cache_dir: where the wav copies go (default
            ``$DEMUCS_RR_CACHE/musdb_wav/<hash of the absolute root>``); ``<subset>/`` is added.

    Raises:
        ConfigError: missing folder or no ``.stem.mp4`` files, ffmpeg missing.
        DemucsRRError: ffmpeg failed on a file.
    """
    folder = Path(root).expanduser().resolve() / subset
    if not folder.is_dir():
        raise ConfigError(f"MUSDB18 folder {folder} does not exist")
    files = {
        p.name[: -len(_SUFFIX)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(_SUFFIX)
    }
    if names is not None:
        wanted = set(names)
        files = {name: path for name, path in files.items() if name in wanted}
    if not files:
        raise ConfigError(f"no {_SUFFIX} files in {folder} (for MUSDB18-HQ use is_wav=True)")
    if cache_dir is None:
        digest = hashlib.sha256(str(folder.parent).encode("utf-8")).hexdigest()[:16]
        out = runtime.cache_dir() / "musdb_wav" / digest / subset
    else:
        out = Path(cache_dir).expanduser() / subset
    todo = {name: path for name, path in files.items() if not _decoded(out / name, path)}
    if todo and shutil.which("ffmpeg") is None:
        raise ConfigError(
            "compressed MUSDB18 needs ffmpeg to decode the .stem.mp4 files: "
            "install ffmpeg, or use MUSDB18-HQ (is_wav=True)"
        )
    for count, (name, path) in enumerate(todo.items(), 1):
        logger.info("decoding MUSDB18 track %d/%d: %s", count, len(todo), name)
        _decode_one(path, out / name)
    return out


# --------------------------------------------------------------------------- splits


def _split_names(base: Path, split: str, is_wav: bool) -> list[str]:
    """Track names of one split present in ``base`` (the ``train`` or ``test`` folder)."""
    valid = set(validation_tracks())
    if is_wav:
        present = [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
    else:
        present = [p.name[: -len(_SUFFIX)] for p in base.iterdir() if p.name.endswith(_SUFFIX)]
    if split == "valid":
        names = sorted(valid.intersection(present))
        if not names:
            raise ConfigError(f"none of the {len(valid)} MUSDB18 validation tracks is in {base}")
        return names
    names = sorted(set(present) - valid) if split == "train" else sorted(present)
    if not names:
        raise ConfigError(f"no MUSDB18 tracks for split {split!r} in {base}")
    return names


def musdb_tracks(
    root: str | Path,
    split: str,
    is_wav: bool,
    sources: Sequence[str] = MUSDB_SOURCES,
    *,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    names: Collection[str] | None = None,
) -> list[Track]:
    """Tracks of one official MUSDB18 split.

    Args:
        root: MUSDB18 root holding ``train/`` and ``test/``.
        split: ``"train"`` (train folder minus the validation tracks), ``"valid"`` (the 14
            validation tracks) or ``"test"``.
        is_wav: MUSDB18-HQ wav folders (True) or compressed ``.stem.mp4`` files (False).
        sources: stems to include; the mixture file is always used for the statistics.
        cache_dir: decode folder for compressed MUSDB18 (see :func:`decode_stems`).
        cache: use the metadata cache of :func:`scan_tracks`.
        names: only these tracks of the split (only they are decoded).

    Returns:
        Tracks sorted by name; ``Track.name`` is the MUSDB track name.

    Raises:
        ConfigError: unknown split, missing folders or files, a track missing a stem, a name
            of ``names`` not in the split, ffmpeg missing for compressed files, or none of
            the validation tracks present.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown MUSDB18 split {split!r}, choose from {', '.join(SPLITS)}")
    subset = "test" if split == "test" else "train"
    base = Path(root).expanduser() / subset
    if not base.is_dir():
        raise ConfigError(
            f"MUSDB18 folder {base} does not exist (expected "
            f"{Path(root).expanduser()}/{{train,test}}/)"
        )
    found = _split_names(base, split, is_wav)
    if names is not None:
        missing = sorted(set(names) - set(found))
        if missing:
            raise ConfigError(f"not in the MUSDB18 {split} split at {base}: {', '.join(missing)}")
        found = [name for name in found if name in set(names)]
    folder = base if is_wav else decode_stems(root, subset, found, cache_dir)
    return scan_tracks(folder, list(sources), "mixture", cache, include=found)
