"""File modes of files written through a temporary file then renamed.

:func:`tempfile.mkstemp` creates files with mode 0600; files demucs_rr writes that way (packages,
checkpoints, evaluation JSON) get the mode an ordinary ``open(path, "w")`` would give them: 0666
less the process umask (usually 0644).
"""

from __future__ import annotations

import os

__all__ = ["normal_file_mode", "set_normal_mode"]


def normal_file_mode() -> int:
    """0666 less the current umask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def set_normal_mode(fd: int) -> None:
    """Give the open file ``fd`` (e.g. from ``mkstemp``) the umask-derived mode."""
    os.fchmod(fd, normal_file_mode())
