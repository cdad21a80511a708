"""Typed errors of demucs_rr.

Library code raises these with a message that says how to fix the problem; only the CLI turns
them into a one-line message and a non-zero exit code.
"""


class DemucsRRError(Exception):
    """Base class of every error demucs_rr raises on purpose."""


class AudioIOError(DemucsRRError):
    """An audio file cannot be read, decoded or written."""


class ModelNotFoundError(DemucsRRError):
    """A model name or path does not resolve to a model package."""


class PackageFormatError(DemucsRRError):
    """A model package or checkpoint is malformed, unsafe or of an unknown version."""


class DownloadError(DemucsRRError):
    """A pretrained model could not be downloaded or failed its checksum."""


class ConfigError(DemucsRRError):
    """A user-supplied option or configuration value is invalid."""


class OutputError(DemucsRRError):
    """A file other than audio (a training checkpoint) cannot be written: disk full, no rights."""


class DeviceMemoryError(DemucsRRError):
    """The device (GPU or CPU) ran out of memory while separating; a smaller segment or batch
    size may fit."""


def one_line(
    err: BaseException, *, typed: bool = False, last: bool = False, limit: int = 300
) -> str:
    """An exception as one line for an error message.

    The first (``last``: the last) non-empty line of its message, whitespace collapsed and
    terminal colour codes removed; an OSError gives its ``strerror`` (no file names); an empty
    message gives the type name. ``typed`` prefixes ``Type: ``. At most ``limit`` characters.
    """
    import re

    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    message = " ".join((lines[-1] if last else lines[0]).split()) if lines else ""
    if not message:
        return type(err).__name__
    return (f"{type(err).__name__}: {message}" if typed else message)[:limit]
