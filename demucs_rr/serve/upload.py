"""Receiving an upload: a streaming multipart parser that enforces the size limit as bytes arrive.

The request body goes straight from the socket through ``python_multipart`` into a temporary
file under ``<jobs-dir>/.incoming/`` named by random digits (the client's file name never
touches the filesystem). A ``Content-Length`` above the limit is refused before any byte is
read; a body without one is refused as soon as it passes the limit, and the partial file is
deleted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from demucs_rr.errors import DemucsRRError

MAX_FIELDS = 16
MAX_FIELD_BYTES = 1024
FORM_OVERHEAD = 64 * 1024
"""Bytes a request may carry beyond the file limit (boundaries, headers, option fields)."""


class HTTPProblem(DemucsRRError):
    """A request the server refuses, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A received upload.

    Attributes:
        fields: the text fields of the form.
        filename: the client's file name (display text only), or None.
        path: the temporary file holding the upload.
        size: its size in bytes.
        head: its first bytes (for content sniffing).
    """

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    head: bytes = b""


class _FormReader:
    """Callbacks of :class:`MultipartParser` that fill an :class:`Upload`."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.upload = Upload()
        self._file: IO[bytes] | None = None
        self._header: list[bytes] = [b"", b""]
        self._disposition = b""
        self._name: str | None = None
        self._value = bytearray()
        self._in_file = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add_header(0, d[s:e]),
            "on_header_value": lambda d, s, e: self._add_header(1, d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda d, s, e: self._data(d[s:e]),
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._name, self._in_file = b"", None, False
        self._value.clear()

    def _add_header(self, index: int, data: bytes) -> None:
        self._header[index] += data

    def _header_end(self) -> None:
        if self._header[0].strip().lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params and self._name != "file":
            raise HTTPProblem(400, f"unexpected file field {self._name!r}: send the song as 'file'")
        if self._name == "file":
            if self.upload.path is not None:
                raise HTTPProblem(400, "one file per upload: send several requests")
            self.upload.filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self.upload.path = self.folder / f"{secrets.token_hex(8)}.part"
            self._file = _open_part(self.upload.path)
            self._in_file = True
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise HTTPProblem(400, f"too many form fields (at most {MAX_FIELDS})")

    def _data(self, data: bytes) -> None:
        if self._in_file and self._file is not None:
            self.upload.size += len(data)
            if self.upload.size > self.limit:
                raise HTTPProblem(413, _too_large(self.limit))
            if len(self.upload.head) < 64:
                self.upload.head += data[: 64 - len(self.upload.head)]
            self._file.write(data)
            return
        self._value += data
        if len(self._value) > MAX_FIELD_BYTES:
            raise HTTPProblem(400, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} B")

    def _part_end(self) -> None:
        if self._in_file:
            self.close()
        elif self._name:
            try:
                self.upload.fields[self._name] = self._value.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise HTTPProblem(400, f"form field {self._name!r} is not UTF-8 text") from None

    def close(self) -> None:
        """Close the temporary file (kept)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._in_file = False

    def discard(self) -> None:
        """Close and delete the temporary file."""
        self.close()
        if self.upload.path is not None:
            self.upload.path.unlink(missing_ok=True)


def _open_part(path: Path) -> IO[bytes]:
    """Create the temporary file of an upload (unbuffered: a full disk fails the first write
    past the free space, not a later flush)."""
    return path.open("wb", buffering=0)


def _too_large(limit: int) -> str:
    return f"the upload is larger than the server's limit of {limit / 2**20:.4g} MB"


def _boundary(request: Request) -> bytes:
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPProblem(415, "send the file as multipart/form-data (curl -F file=@song.mp3)")
    return params[b"boundary"]


def _check_length(request: Request, limit: int) -> None:
    """Refuse a declared body length above the limit before reading the body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise HTTPProblem(413, _too_large(limit))


async def receive_upload(request: Request, folder: Path, limit: int) -> Upload:
    """Stream a multipart upload to a temporary file in ``folder``.

    Args:
        request: the incoming request.
        folder: where the temporary file goes (created if missing).
        limit: largest accepted file, in bytes.

    Raises:
        HTTPProblem: 413 above the limit, 415 not multipart, 400 malformed or no file.
    """
    _check_length(request, limit)
    boundary = _boundary(request)
    folder.mkdir(parents=True, exist_ok=True)
    reader = _FormReader(folder, limit)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise HTTPProblem(413, _too_large(limit))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        reader.discard()
        raise HTTPProblem(400, "malformed multipart body") from None
    except BaseException:  # too large, client gone, disk full, cancelled: keep nothing
        reader.discard()
        raise
    reader.close()
    if reader.upload.path is None:
        raise HTTPProblem(400, "no file in the upload: send it as form field 'file'")
    return reader.upload
