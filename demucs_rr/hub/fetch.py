"""Downloading model files with a progress bar, atomically, checked against a sha256 prefix.

A download is hashed while it streams and renamed into place only when its sha256 prefix
matches. A file already in the cache is hashed once on first use (it may have been put there by
hand) and the result is recorded in a ``.verified`` sidecar (digest, size, mtime), so that later
runs only compare size and mtime.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from demucs_rr.errors import DownloadError
from demucs_rr.staging import atomic_write, folder_lock

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


def _manual_hint(dest: Path, url: str, reason: str) -> str:
    return (
        f"could not download {dest.name} from {url} ({reason}). Download it on a machine with "
        f"internet access and put it at {dest}, or pass -n /path/to/file"
    )


ManualHint = Callable[[Path, str, str], str]
"""``(dest, url, reason) -> message`` of an error when a download cannot complete."""


def download(
    url: str,
    dest: Path,
    sha256_prefix: str,
    progress: bool = True,
    timeout: float = 30,
    manual_hint: ManualHint | None = None,
) -> Path:
    """Download ``url`` to ``dest``, checking the sha256 prefix, atomically.

    The body streams into a hidden staged file beside ``dest`` (``atomic_write``) renamed to
    ``dest`` only after the whole file arrived and its sha256 starts with ``sha256_prefix``. On
    any failure the staged file is deleted and nothing is left at ``dest``.

    Args:
        url: http(s) URL.
        dest: final path.
        sha256_prefix: expected leading hex digits of the file's sha256; empty for a file
            whose checksum nobody published (:func:`fetch_pinned` pins it then).
        progress: show a tqdm bar (bytes) on stderr.
        timeout: socket timeout in seconds (connect and each read).
        manual_hint: builds the one-line message of a failed transfer (default: put the file
            at ``dest`` or pass ``-n /path/to/file``).

    Returns:
        ``dest``.

    Raises:
        DownloadError: HTTP error, unreachable host, timeout, short transfer, or checksum
            mismatch; the message is one line and says how to fetch the file by hand.
    """
    dest = Path(dest)
    hint = manual_hint or _manual_hint
    prefix = sha256_prefix.lower()
    if not re.fullmatch(r"[0-9a-f]*", prefix):
        raise ValueError(f"sha256_prefix must be hex digits, got {sha256_prefix!r}")
    hasher = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "demucs_rr"})
        with (
            atomic_write(dest) as part,
            urllib.request.urlopen(request, timeout=timeout) as response,
            open(part, "wb") as out,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received < total:
                raise DownloadError(
                    hint(dest, url, f"transfer interrupted after {received} of {total} bytes")
                )
            digest = hasher.hexdigest()
            if not digest.startswith(prefix):
                raise DownloadError(
                    f"checksum mismatch for {url}: expected sha256 {prefix}..., got "
                    f"{digest[: max(len(prefix), 8)]}...; the server or mirror serves a "
                    "different file"
                )
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise DownloadError(hint(dest, url, f"HTTP {exc.code} {exc.reason}")) from None
    except urllib.error.URLError as exc:
        raise DownloadError(hint(dest, url, str(exc.reason))) from exc
    except (http.client.HTTPException, OSError) as exc:  # reset, timeout, disk full...
        raise DownloadError(hint(dest, url, f"{type(exc).__name__}: {exc}")) from exc
    _write_verified(dest, digest)
    return dest


# --------------------------------------------------------------------------- verification


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_verified(path: Path, digest: str) -> None:
    stat = path.stat()
    record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        _sidecar(path).write_text(json.dumps(record))
    except OSError as exc:  # read-only cache: we simply rehash next time
        logger.debug("cannot record verification of %s: %s", path, exc)


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    return _sha256_file(path)


def verify_cached(path: Path, sha256_prefix: str, url: str) -> None:
    """Check a cached file against its sha256 prefix, hashing it only once per (size, mtime).

    Raises:
        DownloadError: the file's sha256 does not start with ``sha256_prefix``.
    """
    stat = path.stat()
    try:
        record = json.loads(_sidecar(path).read_text())
        if (
            record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns
            and str(record.get("sha256", "")).startswith(sha256_prefix)
        ):
            return
    except (OSError, ValueError, AttributeError):
        pass
    logger.info("verifying checksum of %s", path)
    digest = _sha256_file(path)
    if not digest.startswith(sha256_prefix):
        raise DownloadError(
            f"checksum mismatch for cached file {path}: expected sha256 {sha256_prefix}..., got "
            f"{digest[:8]}...; delete it to download again, or replace it with the file from {url}"
        )
    _write_verified(path, digest)


def checksum_state(path: Path, sha256_prefix: str) -> str:
    """``"missing"``, ``"ok"`` or ``"bad checksum"``: the state of a cached file (hashed only
    when its size or mtime changed since it was last verified)."""
    if not path.is_file():
        return "missing"
    try:
        verify_cached(path, sha256_prefix, "")
    except DownloadError:
        return "bad checksum"
    except OSError:
        return "unreadable"
    return "ok"


# --------------------------------------------------------------------------- pinned files

PINS_NAME = "pinned-sha256.json"
"""File in the cache folder holding the sha256 pinned for files without a published one."""


def _pins(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / PINS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def pinned_sha256(path: Path) -> str | None:
    """The sha256 pinned for the cached file ``path`` when it was downloaded, or None."""
    return _pins(path.parent).get(path.name)


def fetch_pinned(url: str, dest: Path, progress: bool = True) -> Path:
    """``dest`` for a file whose checksum nobody published: downloaded once, its sha256 pinned
    in the cache folder (``pinned-sha256.json``), and checked against the pin on every later
    use, so that a file that changes after its first download is noticed.

    Raises:
        DownloadError: the download fails, or the cached file no longer matches its pin (or
            was put there by hand without one: it is pinned then).
    """
    dest = Path(dest)
    pinned = pinned_sha256(dest)
    if dest.is_file():
        if pinned is None:  # put there by hand: trust it from now on
            pinned = sha256_file(dest)
            _pin(dest, pinned)
        verify_cached(dest, pinned, url)
        return dest
    download(url, dest, pinned or "", progress)
    if pinned is None:
        _pin(dest, json.loads(_sidecar(dest).read_text())["sha256"])
    return dest


def _pin(path: Path, digest: str) -> None:
    with folder_lock(path.parent):
        pins = _pins(path.parent)
        pins[path.name] = digest
        with atomic_write(path.parent / PINS_NAME) as tmp:
            tmp.write_text(json.dumps(pins, indent=1, sort_keys=True))
