"""What a job is on disk and which options it takes.

A job lives in ``<jobs-dir>/<id>/``: ``input.<ext>`` (the upload, renamed; the client's file
name is only kept as display text), ``stems/<stem>.<ext>`` (written by the CLI's all-or-nothing
writer), ``waveforms/<stem>.png`` and, once asked for, ``stems.zip``. Ids are 128 random bits in
hex, so a job's files are reachable only by whoever holds its id.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demucs_rr.audio.ffmpeg import container_of
from demucs_rr.audio.options import FORMATS
from demucs_rr.errors import ConfigError
from demucs_rr.staging import clean_stale

JOB_ID = re.compile(r"[0-9a-f]{32}")
STEM_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
MAX_SHIFTS = 10
FORM_FIELDS = ("model", "two_stems", "stems", "format", "shifts")


UPLOAD_FORM: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the song"},
                    "model": {"type": "string", "description": "a name of GET /api/info models"},
                    "two_stems": {"type": "string", "description": "write STEM and no_STEM"},
                    "stems": {"type": "string", "description": "comma-separated subset"},
                    "format": {"type": "string", "enum": list(FORMATS), "default": "wav"},
                    "shifts": {"type": "integer", "minimum": 0, "maximum": MAX_SHIFTS},
                },
            }
        }
    },
}
"""OpenAPI ``requestBody`` of ``POST /api/jobs`` (the form is parsed by hand, as it streams)."""


def new_job_id() -> str:
    """A fresh random job id (32 hex digits)."""
    return secrets.token_hex(16)


def model_label(model: str) -> str:
    """The name a model is shown under: a file's stem (as ``separate`` names its folder), so
    that no server path reaches a client."""
    return Path(model).stem if Path(model).suffix else model


def clean_job_folder(folder: Path) -> None:
    """Remove what dead processes left in a job's folder (staged stems, scratch files, a
    staged zip or waveform: :func:`~demucs_rr.staging.clean_stale`)."""
    for sub in (folder, folder / "stems", folder / "waveforms"):
        if sub.is_dir():
            clean_stale(sub)


def job_dir(root: Path, job_id: str) -> Path:
    """The folder of a job; ``job_id`` must be a valid id (checked, never a path)."""
    if JOB_ID.fullmatch(job_id) is None:
        raise ConfigError(f"not a job id: {job_id[:40]!r}")
    return root / job_id


@dataclass(frozen=True)
class JobOptions:
    """The separation options a client may choose per job.

    Attributes:
        model: model name (the server's model or a pretrained name).
        two_stems: write this stem and ``no_<stem>`` only.
        stems: subset of stems to write (``None``: all).
        format: ``wav``, ``flac`` or ``mp3``.
        shifts: shift-trick passes (0 to :data:`MAX_SHIFTS`).
    """

    model: str
    two_stems: str | None = None
    stems: list[str] | None = None
    format: str = "wav"
    shifts: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stored with the job)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOptions:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in ("model", "two_stems", "stems", "format", "shifts")})

    @classmethod
    def from_form(cls, form: dict[str, str], models: list[str]) -> JobOptions:
        """Validate the text fields of an upload form.

        Args:
            form: field name -> value (empty values mean the default).
            models: accepted model names (labels); the first is the server's model.

        Raises:
            ConfigError: an unknown field or a bad value, in one line.
        """
        unknown = sorted(set(form) - set(FORM_FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown form field(s) {', '.join(unknown)}; use file, {', '.join(FORM_FIELDS)}"
            )
        model = form.get("model") or models[0]
        if model not in models:
            raise ConfigError(f"unknown model {model!r}: this server offers {', '.join(models)}")
        fmt = (form.get("format") or "wav").lower()
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
        two_stems = form.get("two_stems") or None
        stems = [s.strip() for s in (form.get("stems") or "").split(",") if s.strip()] or None
        for name in ([two_stems] if two_stems else []) + (stems or []):
            if STEM_NAME.fullmatch(name) is None:
                raise ConfigError(f"bad stem name {name[:40]!r}: letters, digits and _ only")
        if two_stems and stems:
            raise ConfigError("choose either two_stems or stems, not both")
        return cls(model, two_stems, stems, fmt, _shifts(form.get("shifts") or "0"))


def _shifts(text: str) -> int:
    """Parse the ``shifts`` field."""
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"shifts must be an integer, got {text[:20]!r}") from None
    if not 0 <= value <= MAX_SHIFTS:
        raise ConfigError(f"shifts must be within 0..{MAX_SHIFTS}, got {value}")
    return value


def display_name(filename: str | None) -> str:
    """The client's file name as safe display text: no folders, no control characters."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = " ".join(name.split())[:120]
    return name or "upload"


def file_stem(name: str) -> str:
    """A file-name-safe track name for downloads (``my song.mp3`` -> ``my song``)."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = re.sub(r"[^\w .()-]+", "_", stem).strip(" .")
    return stem[:80] or "track"


def sniff_extension(head: bytes) -> str | None:
    """Extension of the audio or video container the first bytes of a file belong to
    (``wav``, ``flac``, ``m4a``, ...; :func:`~demucs_rr.audio.ffmpeg.container_of`), or None."""
    container = container_of(head)
    return container.extension if container else None


def input_extension(head: bytes, filename: str | None) -> str:
    """Extension to store an upload under: sniffed from its bytes, else the client's when it is
    plain letters and digits (so the reader sees what ``separate`` would see), else ``bin``."""
    sniffed = sniff_extension(head)
    if sniffed:
        return sniffed
    suffix = Path(display_name(filename)).suffix.lower()[1:]
    return suffix if re.fullmatch(r"[a-z0-9]{1,8}", suffix) else "bin"
