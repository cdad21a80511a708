"""Plumbing of ``tools/soak_serve.py``: the server under test in its own process group, an
HTTP client that survives restarts, and the ledger of what the soak did and saw."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_members(pgids: set[int]) -> set[int]:
    """Live processes whose process group is one of ``pgids``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) in pgids:
            found.add(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


class Server:
    """The server under test; restarted after every stop."""

    def __init__(self, folder: Path, jobs: Path, package: Path) -> None:
        self.folder, self.jobs, self.package = folder, jobs, package
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgids: set[int] = set()
        self.log = (folder / "server.log").open("ab")
        self.starts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "demucs_rr", "--threads", "1", "serve"]
        cmd += ["-n", str(self.package), "--port", str(self.port), "--jobs-dir", str(self.jobs)]
        cmd += ["--workers", "2", "--max-audio-minutes", "5", "--max-queued-jobs", "40"]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pgids.add(self.proc.pid)
        self.starts += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode} at start")
            time.sleep(0.2)
        raise SystemExit("the server did not open its port within 90 s")

    def workers(self) -> list[int]:
        assert self.proc is not None
        return [w for c in children(self.proc.pid) for w in children(c)]

    def stop(self, signum: int, group: bool) -> tuple[int, float]:
        assert self.proc is not None
        start = time.monotonic()
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        return code, time.monotonic() - start

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def leftovers(self, seconds: float = 5.0) -> set[int]:
        """Processes of the server groups still running ``seconds`` after a stop (then killed)."""
        deadline = time.monotonic() + seconds
        while (left := group_members(self.pgids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return left


class Client:
    """HTTP requests to the server; connection errors (a restart) raise ``OSError``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except http.client.HTTPException as exc:
            raise OSError(str(exc)) from exc
        finally:
            conn.close()

    def json(self, method: str, path: str) -> Any:
        status, data = self.request(method, path)
        if status != 200:
            raise OSError(f"{method} {path}: {status}")
        return json.loads(data)

    def upload(self, name: str, data: bytes, fields: dict[str, str]) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        status, body = self.request("POST", "/api/jobs", b"".join(parts), headers)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


class Ledger:
    """What the soak did and saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.checked: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.stops: list[dict[str, Any]] = []

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)
        print("PROBLEM:", text, flush=True)
