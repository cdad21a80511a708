"""Stems appear all together or not at all: the group commit and its rollback, the cleanup of
what killed runs left, the folder lock, and disk-full errors (stems and training checkpoints)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr import Separator
from demucs_rr.audio import WriteOptions
from demucs_rr.audio.blocks import BlockWriter
from demucs_rr.errors import AudioIOError, OutputError
from demucs_rr.models.testing import FractionModel
from demucs_rr.separate import outputs
from demucs_rr.separate.outputs import write_track
from demucs_rr.staging import LOCK_NAME, OutputGroup, folder_lock, staged_name
from demucs_rr.train.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(FractionModel(SOURCES, [0.1, 0.2, 0.3, 0.4]), device="cpu")


@pytest.fixture
def song(tmp_path: Path) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, make_tone_mix(0.5).T.numpy(), 44100)
    return path


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its content."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def write_stream(sep: Separator, song: Path, targets: dict[str, Path]) -> None:
    sep.separate_file_to(song, targets)


def write_memory(sep: Separator, song: Path, targets: dict[str, Path]) -> None:
    stems = sep.separate_file(song)[1]
    write_track({path: stems[name] for name, path in targets.items()}, 44100, WriteOptions())


WRITERS: dict[str, Callable[[Separator, Path, dict[str, Path]], None]] = {
    "stream": write_stream,
    "memory": write_memory,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("existing,fail", [(False, "place"), (True, "place"), (True, "backup")])
def test_failed_rename_in_the_middle_keeps_the_group_whole(
    separator: Separator,
    song: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    writer: str,
    existing: bool,
    fail: str,
) -> None:
    out = tmp_path / "out"
    folder = out / "frac" / "song"
    targets = {name: folder / f"{name}.wav" for name in SOURCES}
    if existing:  # a previous run's stems, replaced as with --overwrite
        folder.mkdir(parents=True)
        for name, path in targets.items():
            path.write_bytes(f"previous {name}".encode())
    out.mkdir(exist_ok=True)
    before = files(out)
    real = os.replace

    def flaky(src: Any, dst: Any) -> None:
        third = targets["other"]  # the 3rd stem: its backup, or its new file put in place
        placing = Path(dst) == third and Path(src).suffix == ".part"
        if (fail == "place" and placing) or (fail == "backup" and Path(src) == third):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(AudioIOError) as err:
        WRITERS[writer](separator, song, targets)
    assert str(err.value) == f"cannot write {folder}: Input/output error"
    assert files(out) == before  # previous stems intact, no new or hidden file
    if not existing:
        assert list(out.iterdir()) == []  # the model/track folders it created are gone


KILLED_COMMIT = """
import os, sys
from pathlib import Path
from demucs_rr.staging import OutputGroup
folder, stage = Path(sys.argv[1]), sys.argv[2]
targets = [folder / f"{s}.wav" for s in ("drums", "bass", "other", "vocals")]
group = OutputGroup(targets)
group.prepare()
for target in targets:
    group.staged[target].write_text("new " + target.stem)
    if stage == "writing":
        os._exit(9)  # killed while writing the stems
real = os.replace
def replace(src, dst):
    if Path(dst) == targets[2] or (stage == "backup" and Path(src) == targets[2]):
        os._exit(9)  # killed between two renames of the commit
    real(src, dst)
os.replace = replace
group.commit()
"""


@pytest.mark.integration
@pytest.mark.parametrize("stage,after", [("writing", "old"), ("backup", "new"), ("place", "new")])
def test_next_run_cleans_or_completes_a_killed_run(tmp_path: Path, stage: str, after: str) -> None:
    folder = tmp_path / "frac" / "song"
    folder.mkdir(parents=True)
    for name in SOURCES:
        (folder / f"{name}.wav").write_text(f"old {name}")
    ours = staged_name(folder / "drums.wav", "0123abcd")  # a live process's file: kept
    theirs = folder / ".drums.wav.otherhost-1-0123abcd.part"  # another host's file: kept
    ours.write_text("live")
    theirs.write_text("other host")
    killed = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(folder), stage])
    assert killed.returncode == 9
    assert len([p for p in folder.iterdir() if p.name.startswith(".")]) > 2  # leftovers

    OutputGroup([folder / "drums.wav"]).prepare()  # the next run into this folder

    expected = {f"{name}.wav": f"{after} {name}".encode() for name in SOURCES}
    expected |= {ours.name: b"live", theirs.name: b"other host"}
    assert files(folder) == expected


@pytest.mark.parametrize("error", ["oserror", "libsndfile"])
def test_disk_full_while_writing_stems_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    folder = out / "frac" / "song"
    written: list[Path] = []

    def full(wav: torch.Tensor, path: Path, samplerate: int, options: WriteOptions) -> None:
        written.append(path)
        path.write_bytes(b"RIFF partial")
        if len(written) == 2:
            raise ENOSPC if error == "oserror" else RuntimeError("System error.")

    class Usage:  # the disk is full while the partial files are there
        def __init__(self, path: object) -> None:
            self.free = 0 if any(p.exists() for p in written) else 1 << 30

    monkeypatch.setattr(outputs, "encode_file", full)
    monkeypatch.setattr("demucs_rr.staging.shutil.disk_usage", Usage)
    stems = {folder / f"{name}.wav": torch.zeros(2, 100) for name in SOURCES}
    with pytest.raises(AudioIOError) as err:
        write_track(stems, 44100, WriteOptions())
    assert str(err.value) == f"no space left on device while writing stems to {folder}"
    assert list(out.iterdir()) == []  # partial files and the folders it created are removed


def test_disk_full_reported_by_libsndfile_while_streaming(
    separator: Separator, song: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libsndfile says only "System error" on ENOSPC: little free space means disk full."""
    folder = tmp_path / "out" / "frac" / "song"
    (tmp_path / "out").mkdir()

    def system_error(self: BlockWriter, wav: torch.Tensor) -> None:
        raise RuntimeError("System error.")

    class Usage:
        free = 4096

    monkeypatch.setattr(BlockWriter, "write", system_error)
    monkeypatch.setattr("demucs_rr.staging.shutil.disk_usage", lambda path: Usage)
    with pytest.raises(AudioIOError) as err:
        separator.separate_file_to(song, {name: folder / f"{name}.flac" for name in SOURCES})
    assert str(err.value) == f"no space left on device while writing stems to {folder}"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("error", ["oserror", "torch"])
def test_disk_full_while_writing_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    path = tmp_path / "run" / "checkpoint.th"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(3)}})
    real_save = torch.save

    def full(obj: object, handle: Any, *args: object, **kwargs: object) -> None:
        handle.write(b"PK partial checkpoint")
        if error == "oserror":
            raise ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    class Usage:
        free = 0

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("demucs_rr.staging.shutil.disk_usage", lambda folder: Usage)
    with pytest.raises(OutputError) as err:
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    assert str(err.value) == (
        f"no space left on device while writing checkpoint {path}; "
        "the previous checkpoint is unchanged"
    )
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.th"]  # temp file removed
    saved = load_checkpoint(path)
    assert saved["epoch"] == 1 and torch.equal(saved["model"]["w"], torch.ones(3))


def test_folder_lock_excludes_and_leaves_no_file(tmp_path: Path) -> None:
    count = [0]

    def work() -> None:
        for _ in range(50):
            with folder_lock(tmp_path):
                seen = count[0]
                threading.Event().wait(0.0001)  # let another thread run inside the lock
                count[0] = seen + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count[0] == 200
    assert not (tmp_path / LOCK_NAME).exists()


def test_stem_files_get_the_usual_mode(separator: Separator, song: Path, tmp_path: Path) -> None:
    targets = {name: tmp_path / "o" / f"{name}.wav" for name in SOURCES}
    separator.separate_file_to(song, targets)
    mask = os.umask(0)
    os.umask(mask)
    assert {path.stat().st_mode & 0o777 for path in targets.values()} == {0o666 & ~mask}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        f"{name}.wav" for name in SOURCES
    )
    assert np.isfinite(sf.read(targets["drums"])[0]).all()
