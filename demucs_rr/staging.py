"""Staged output files: hidden names, all-or-nothing groups, a folder lock, stale-file cleanup.

Every output file is first written under a hidden name beside its target,
``.NAME.HOST-PID-TAG.KIND`` (``part``: the file being written; ``f32``: a scratch file; ``old``:
the previous target during a commit). An :class:`OutputGroup` (the stems of one track) is
committed under an exclusive ``flock`` on ``.demucs_rr.lock`` in the group's folder (the
deepest folder holding all its targets):

1. the journal ``.demucs_rr.HOST-PID-TAG.journal`` is written, listing the staged files, which
   are all complete by then;
2. the targets that exist are renamed to ``old`` backups;
3. the staged files are renamed onto the targets;
4. the backups, then the journal, are deleted.

Each rename is atomic. When a rename of step 2 or 3 fails, the renames done are undone: the
previous files are back and no new file is visible (if undoing fails too, the journal stays and
the next run completes the commit). When the process dies between two renames
(SIGKILL, a crash), the journal stays; the next group written into one of those folders on the
same host, seeing that the process is gone, rolls the commit forward (the whole new set). Other
leftovers of dead processes (staged files of a run killed while writing, backups) are deleted.
Files of live processes, or of another host, are never touched. Nothing is fsync'ed: the promise
holds for processes that die, not for a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from demucs_rr.errors import AudioIOError, ConfigError, one_line

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, the commit is still atomic
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "OutputGroup",
    "atomic_write",
    "clean_stale",
    "folder_lock",
    "is_disk_full",
    "normal_file_mode",
    "staged_name",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".demucs_rr.lock"
HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<owner>(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]{8})"
    r"\.(?P<kind>[a-z0-9]+)$"
)
_LOW_SPACE = 1 << 20  # a library error with less free space than this means "disk full"
_MAX_NAME = 120  # bytes of the target name kept in a staged name (NAME_MAX is 255)


def staged_name(target: Path, tag: str, kind: str = "part") -> Path:
    """Hidden name beside ``target`` owned by this process: ``.NAME.HOST-PID-TAG.KIND``."""
    name = target.name
    if len(name.encode()) > _MAX_NAME:  # keep the staged name under the file-system limit
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # the same for every KIND
        name = name.encode()[: _MAX_NAME - 9].decode(errors="ignore") + "~" + digest
    return target.with_name(f".{name}.{HOST}-{os.getpid()}-{tag}.{kind}")


def normal_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask (read from
    ``/proc/self/status`` where it can be, so that the umask is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _create_staged(target: Path, kind: str = "part") -> Path:
    """Create an empty hidden staged file beside ``target`` (mode 0666 less the umask)."""
    for _ in range(16):
        tmp = staged_name(target, secrets.token_hex(4), kind)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Write ``path`` all or nothing: the block writes the yielded hidden file beside it
    (``.NAME.HOST-PID-TAG.part``, created empty), which is renamed onto ``path`` when the block
    succeeds and removed when it fails. ``path`` is therefore either what it was or the complete
    new file; a process killed meanwhile leaves a staged file that :func:`clean_stale` removes.

    Parent folders are created; the new file gets the mode of ``open(path, "w")`` whatever the
    writer did (safetensors writes 0600). With ``fsync`` the data reach the disk before the
    rename (checkpoints); otherwise nothing is fsync'ed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_staged(target)
    try:
        yield tmp
        os.chmod(tmp, normal_file_mode())
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _owner_alive(host: str, pid: int) -> bool:
    """Whether the process that named a staged file may still run (another host's: assume so)."""
    if host != HOST or os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` means the disk or the quota is full.

    True for ENOSPC or EDQUOT anywhere in the exception chain, and for a library error without
    an errno (libsndfile's "System error", torch's zip writer) while ``folder`` has less than
    1 MiB free.
    """
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, OSError):
        return False
    try:
        return shutil.disk_usage(folder).free < _LOW_SPACE
    except OSError:
        return False


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.demucs_rr.lock``, removed again on release.

    The holder unlinks the lock file before unlocking; a waiter that then gets the lock on the
    unlinked file sees that the name is gone or names another file, and tries again.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _journal_path(folder: Path, owner: str) -> Path:
    return folder / f".demucs_rr.{owner}.journal"


def _write_journal(journal: Path, staged: dict[Path, Path]) -> None:
    """Write the journal of a commit: staged -> target pairs relative to its folder."""
    root = os.path.abspath(journal.parent)
    pairs = [[os.path.relpath(s, root), os.path.relpath(t, root)] for t, s in staged.items()]
    try:
        with open(journal, "x", encoding="utf-8") as handle:
            json.dump({"format": "demucs_rr.commit", "files": pairs}, handle)
    except BaseException:
        journal.unlink(missing_ok=True)
        raise


def _read_journal(journal: Path, owner: str) -> list[tuple[Path, Path]] | None:
    """The (staged, target) pairs of ``journal``; None when it is torn or not ours to follow."""
    try:
        files = json.loads(journal.read_text(encoding="utf-8"))["files"]
        pairs = [(Path(s), Path(t)) for s, t in files]
    except (ValueError, KeyError, TypeError):
        return None
    for staged, target in pairs:
        match = _NAME.match(staged.name)
        if not match or match["owner"] != owner or match["kind"] != "part":
            return None
        if any(p.is_absolute() or ".." in p.parts for p in (staged, target)):
            return None
    return [(journal.parent / s, journal.parent / t) for s, t in pairs]


def _roll_forward(journal: Path, owner: str) -> None:
    """Finish the commit a dead process began: every staged file onto its target."""
    with folder_lock(journal.parent):
        if not journal.exists():
            return  # another run finished it
        pairs = _read_journal(journal, owner)
        for staged, target in pairs or []:
            if staged.exists():
                os.replace(staged, target)
        for staged, _ in pairs or []:
            staged.with_name(staged.name[: -len("part")] + "old").unlink(missing_ok=True)
        journal.unlink()
    if pairs:
        logger.warning("completed the commit of %d files that a killed run began", len(pairs))


def _find_journal(folder: Path, owner: str) -> Path | None:
    """The journal of ``owner`` in ``folder`` or one of its parents (a group's common folder)."""
    for parent in (folder, *folder.parents):
        journal = _journal_path(parent, owner)
        if journal.exists():
            return journal
    return None


def clean_stale(folder: Path) -> None:
    """Finish or remove what processes that died left in ``folder`` (same host only).

    A commit with a journal is rolled forward; then every other file of the dead process there
    (staged, scratch, backups) is deleted. Problems are logged, never raised.
    """
    owners: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match and not _owner_alive(match["host"], int(match["pid"])):
                owners.setdefault(match["owner"], []).append(Path(entry.path))
    for owner, files in owners.items():
        try:
            journal = _find_journal(folder, owner)
            if journal is not None:
                _roll_forward(journal, owner)
            for path in files:
                path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("cannot clean the files a killed run left in %s: %s", folder, err)
    if owners:
        logger.info("removed the files of %d killed run(s) from %s", len(owners), folder)


class OutputGroup:
    """Files that appear together or not at all (the stems of one track).

    Args:
        targets: final paths, distinct; missing folders are created by :meth:`prepare`.
        what: what the files are, for error messages (``stems``).

    Attributes:
        staged: target -> the hidden file to write it into.
        root: the deepest folder holding every target (lock and journal live there).
    """

    def __init__(self, targets: Iterable[Path], what: str = "stems") -> None:
        self.targets = [Path(t) for t in targets]
        if len({os.path.abspath(t) for t in self.targets}) != len(self.targets):
            raise ConfigError(f"two outputs would be the same file: {self.targets}")
        self.tag, self.what = secrets.token_hex(4), what
        self.root = Path(os.path.commonpath([os.path.abspath(t.parent) for t in self.targets]))
        self.staged = {t: staged_name(t, self.tag) for t in self.targets}
        self.scratch: dict[Path, Path] = {}  # scratch file -> its target
        self.created: list[Path] = []
        self.done = False  # committed, or a failed rollback left it to the next run

    def scratch_file(self, target: Path, kind: str) -> Path:
        """A hidden scratch file beside ``target``, removed by :meth:`abort` and stale cleanup."""
        path = staged_name(target, self.tag, kind)
        self.scratch[path] = target
        return path

    def prepare(self) -> None:
        """Create missing folders (:meth:`abort` removes them if still empty) and clean what
        dead processes left in them (:func:`clean_stale`)."""
        for folder in sorted({t.parent for t in self.targets}):
            missing = []
            for parent in (folder, *folder.parents):
                if parent.exists():
                    break
                missing.append(parent)
            folder.mkdir(parents=True, exist_ok=True)
            self.created += missing
            clean_stale(folder)
        for target in self.targets:
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, f"{target} is a folder")

    def commit(self) -> None:
        """Rename every staged file onto its target, all or none (see the module docstring)."""
        journal = _journal_path(self.root, f"{HOST}-{os.getpid()}-{self.tag}")
        with folder_lock(self.root):
            _write_journal(journal, self.staged)
            backups: list[Path] = []
            placed: list[Path] = []
            try:
                for target in self.targets:
                    if os.path.lexists(target):
                        os.replace(target, self._backup(target))
                        backups.append(target)
                for target in self.targets:
                    os.replace(self.staged[target], target)
                    placed.append(target)
            except BaseException:
                self._roll_back(placed, backups, journal)
                raise
            self.done = True
            for target in backups:
                with contextlib.suppress(OSError):
                    self._backup(target).unlink()
            journal.unlink(missing_ok=True)

    def _backup(self, target: Path) -> Path:
        return staged_name(target, self.tag, "old")

    def _roll_back(self, placed: list[Path], backups: list[Path], journal: Path) -> None:
        """Undo a failed commit; if that fails too, leave the journal for the next run."""
        try:
            for target in reversed(placed):
                os.replace(target, self.staged[target])
            for target in reversed(backups):
                os.replace(self._backup(target), target)
        except OSError as err:
            self.done = True  # keep the staged files: the next run completes the commit
            logger.warning(
                "cannot undo a failed commit in %s (%s); the next run will", self.root, err
            )
            return
        journal.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove staged and scratch files and the folders :meth:`prepare` created, if empty."""
        if self.done:
            return
        for path in (*self.staged.values(), *self.scratch):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for folder in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def failure(self, err: BaseException, target: Path | None = None) -> AudioIOError:
        """A one-line error for ``err``, naming the output folder or ``target`` (no temp names)."""
        if isinstance(err, AudioIOError):
            return err
        if is_disk_full(err, self.root):
            return AudioIOError(f"no space left on device while writing {self.what} to {self.root}")
        # libsndfile names the file it opened: name the target instead
        text = one_line(err, limit=500)
        for hidden, final in (*((s, t) for t, s in self.staged.items()), *self.scratch.items()):
            text = text.replace(str(hidden), str(final))
        return AudioIOError(f"cannot write {target or self.root}: {text}")
