"""``demucs-rr serve`` as a user runs it (``python -m demucs_rr serve``) in its own process group,
with its process tree (forkserver, workers) read from ``/proc``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Wait up to ``seconds`` for ``pids`` to end; returns those still running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return left
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


@dataclass
class Server:
    """A running ``demucs-rr serve`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    jobs: Path
    log: Path
    token: str | None = None
    known: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """``(status, JSON body or bytes)`` of a request."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, data = err.code, err.read()
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data

    def upload(self, path: Path, **fields: str) -> tuple[int, Any]:
        boundary = "demucsrrtestboundary"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\n\r\n'.encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", "/api/jobs", b"".join(parts), headers)

    def tree(self) -> set[int]:
        """The server's live descendants (forkserver, resource tracker, workers), remembered."""
        found = descendants(self.proc.pid)
        self.known |= found
        return found

    def workers(self) -> list[int]:
        """Worker processes: the forkserver's children."""
        return sorted(p for p in self.tree() if _parent_of(_parent_of(p) or 0) == self.proc.pid)

    def wait_workers(self, count: int, seconds: float = 60.0) -> list[int]:
        """Wait until ``count`` workers run and the API reports them alive."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            workers = self.workers()
            if len(workers) == count:
                status, info = self.request("GET", "/api/info")
                if status == 200 and info["workers_alive"] == count:
                    return workers
            time.sleep(0.1)
        raise AssertionError(f"{count} workers did not start: {self.log.read_text()[-2000:]}")

    def stop_with(self, signum: int, group: bool, seconds: float = 30.0) -> tuple[int, float]:
        """Send ``signum`` to the server (``group``: its whole process group); returns the exit
        status and how long the server took to exit (fails past ``seconds``)."""
        self.tree()
        start = time.monotonic()
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not exit within {seconds} s") from None
        return code, time.monotonic() - start

    def kill(self) -> None:
        """SIGKILL the whole process group and everything ever seen below the server."""
        for pid in self.known | descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start_server(
    package: Path, jobs: Path, workers: int = 1, *args: str, env: dict[str, str] | None = None
) -> Server:
    """Start ``python -m demucs_rr serve`` on a free port in a new session; wait for the API."""
    port = free_port()
    log = jobs.parent / f"{jobs.name}-server-{port}.log"
    cmd = [sys.executable, "-m", "demucs_rr", "--threads", "1", "serve", "-n", str(package)]
    cmd += ["--port", str(port), "--jobs-dir", str(jobs), "--workers", str(workers), *args]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    server = Server(proc, port, jobs, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError(f"the server did not open its port: {log.read_text()}")
