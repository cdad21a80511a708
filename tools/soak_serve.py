#!/usr/bin/env python3
"""Soak test of ``demucs-rr serve``: mixed uploads, restarts and kills for a set time, then a
check that no job was lost and that nothing was left behind.

A server (``python -m demucs_rr serve``, two workers, a fixed-fraction model whose stems are
known exactly) runs in its own process group while:

- two clients upload songs of 1-6 s with random options (format, stems, shifts), text files,
  playlists naming a file of the server, 10-minute silences (over the length limit);
- a checker downloads every finished job's vocals and compares them with 0.4 x the upload
  (wav/flac: within 3 LSB), then deletes most finished jobs;
- a client keeps ``/api/events`` open;
- every 20-50 s one of: SIGKILL or SIGTERM of a worker, SIGSTOP of a worker then a restart,
  a restart by SIGINT or SIGTERM to the server or to its process group, SIGKILL of the server,
  and (``--tmpfs-mb``, as root: the jobs folder on a small tmpfs) filling the disk for 15 s.

Every stop must end within 20 s with exit status 130 or 143, and after every stop or kill no
process of the server's group may remain. At the end the server drains its queue and is
stopped; then every accepted job (201) that the soak did not delete must be listed, done or
failed with a one-line error without a server path; the jobs folder must hold nothing but the
database, the lock, the model facts and the folders of listed jobs (no partial upload, staged
stem, temporary file); and no process of any server started may run.

    python tools/soak_serve.py --minutes 15 --tmpfs-mb 768
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_separate import write_report

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["drums", "bass", "other", "vocals"]
FRACTIONS = [0.1, 0.2, 0.3, 0.4]
STOP_BOUND = 20.0
KEEP = {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", ".lock", "model.json"}


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


def make_uploads(folder: Path) -> dict[str, tuple[str, bytes, np.ndarray | None]]:
    """kind -> (file name, bytes, int16 samples for exact checks)."""
    uploads: dict[str, tuple[str, bytes, np.ndarray | None]] = {}
    for seconds in (1, 2, 3, 6):
        t = np.arange(seconds * 44100) / 44100
        noise = np.random.default_rng(seconds).standard_normal((t.size, 2))
        mix = 0.2 * np.sin(2 * np.pi * np.outer(t, [220.0, 330.0])) + 0.02 * noise
        pcm = np.round(mix * 32767).astype(np.int16)
        buffer = io.BytesIO()
        sf.write(buffer, pcm, 44100, format="WAV", subtype="PCM_16")
        uploads[f"song{seconds}"] = (f"song {seconds}s.wav", buffer.getvalue(), pcm)
    uploads["text"] = ("notes.txt", b"not a song\n" * 50, None)
    secret = folder / "server-secret.wav"
    sf.write(secret, np.zeros((44100, 2), dtype=np.int16), 44100)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"
    uploads["playlist"] = ("list.m3u8", playlist.encode(), None)
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 44100, 2, format="FLAC") as handle:
        for _ in range(10):
            handle.write(np.zeros((60 * 44100, 2), dtype=np.int16))
    uploads["silence"] = ("ten minutes.flac", buffer.getvalue(), None)
    return uploads


def random_fields(rng: random.Random) -> dict[str, str]:
    fields = {"format": rng.choice(["wav", "wav", "flac", "mp3"]), "shifts": str(rng.randint(0, 2))}
    pick = rng.random()
    if pick < 0.2:
        fields["two_stems"] = "vocals"
    elif pick < 0.4:
        fields["stems"] = "vocals,bass"
    return fields


def uploader(
    client: Client, ledger: Ledger, uploads: dict, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    kinds = ["song1", "song2", "song3", "song6"] * 5 + ["text", "playlist", "silence"]
    while not stop.wait(rng.uniform(0.5, 3.0)):
        kind = rng.choice(kinds)
        name, data, _ = uploads[kind]
        fields = random_fields(rng) if kind.startswith("song") else {}
        try:
            status, body = client.upload(name, data, fields)
        except OSError:
            ledger.count("upload: server unreachable")
            continue
        ledger.count(f"upload answered {status}")
        if status == 201:
            with ledger.lock:
                ledger.accepted[body["id"]] = {"kind": kind, "fields": fields}
        elif not isinstance(body, dict) or set(body) != {"detail"} or "\n" in body["detail"]:
            ledger.problem(f"upload answered {status} without a one-line JSON detail: {body!r}")
        elif kind == "silence" and status != 413 and status not in (429, 503, 507):
            ledger.problem(f"the 10-minute silence got {status}")


def check_done(client: Client, ledger: Ledger, uploads: dict, job: dict) -> None:
    """Compare the vocals of a finished wav/flac job with 0.4 x its upload."""
    info = ledger.accepted.get(job["id"])
    if info is None or not info["kind"].startswith("song") or info["fields"]["format"] == "mp3":
        return
    vocals = next((s for s in job["stems"] if s["name"] == "vocals"), None)
    if vocals is None:
        ledger.problem(f"job {job['id']} has no vocals: {job['stems']}")
        return
    status, data = client.request("GET", vocals["url"])
    if status != 200:
        raise OSError(f"stem: {status}")
    got, _ = sf.read(io.BytesIO(data), dtype="int16")
    expected = np.round(0.4 * uploads[info["kind"]][2].astype(np.float64))
    if got.shape != expected.shape or np.abs(got - expected).max() > 3:
        ledger.problem(f"job {job['id']}: vocals differ from 0.4 x the upload")
    ledger.count("done jobs checked sample for sample")


def check_failed(ledger: Ledger, job: dict) -> None:
    """A failed job's error: one line, no server path; counted by its first words."""
    error = job["error"] or ""
    if not error or "\n" in error or "/" in error:
        ledger.problem(f"job {job['id']} failed with {error!r}")
    ledger.count(f"failed: {error.split(':')[0].split(' (')[0][:50]}")


def checker(
    client: Client, ledger: Ledger, uploads: dict, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while not stop.wait(2.0):
        try:
            jobs = client.json("GET", "/api/jobs")["jobs"]
            for job in jobs:
                if job["state"] not in ("done", "failed") or job["id"] in ledger.checked:
                    continue
                if job["state"] == "done":
                    check_done(client, ledger, uploads, job)
                else:
                    check_failed(ledger, job)
                ledger.checked.add(job["id"])
                if rng.random() < 0.8:
                    status, _ = client.request("DELETE", job["url"])
                    if status == 204:
                        with ledger.lock:
                            ledger.deleted.add(job["id"])
        except OSError:
            continue


def listener(client: Client, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", client.server.port, timeout=5)
            conn.request("GET", "/api/events")
            response = conn.getresponse()
            while not stop.is_set():
                line = response.fp.readline()
                if not line:
                    break
                if line.startswith(b"event: "):
                    ledger.count(f"events: {line[7:].strip().decode()}")
            conn.close()
        except (OSError, http.client.HTTPException):
            time.sleep(0.5)


def fill_disk(jobs: Path, seconds: float, ledger: Ledger) -> None:
    """Take every free byte of the jobs folder's file system for ``seconds``."""
    filler = jobs.parent / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 2**20)
    ledger.count("disk filled")
    time.sleep(seconds)
    filler.unlink()


def chaos(server: Server, ledger: Ledger, rng: random.Random, tmpfs: bool) -> str:
    """One disruption; returns its name."""
    events = ["kill-worker"] * 3 + ["term-worker", "stuck-worker", "kill-server"] * 2
    events += ["sigint-server", "sigterm-server", "sigint-group", "sigterm-group"]
    events += ["disk-full"] if tmpfs else []
    event = rng.choice(events)
    workers = server.workers()
    if event in ("kill-worker", "term-worker") and workers:
        os.kill(rng.choice(workers), signal.SIGKILL if event == "kill-worker" else signal.SIGTERM)
        return event
    if event == "disk-full":
        fill_disk(server.jobs, 15.0, ledger)
        return event
    if event == "kill-server":
        server.kill()
        left = server.leftovers()
        if left:
            ledger.problem(f"after SIGKILL of the server, {len(left)} process(es) still ran")
        server.start()
        return event
    if event == "stuck-worker" and workers:
        os.kill(rng.choice(workers), signal.SIGSTOP)
        event = "stuck-worker+sigterm-group"
    signum = signal.SIGINT if "sigint" in event else signal.SIGTERM
    code, took = server.stop(signum, group="group" in event)
    ledger.stops.append({"event": event, "code": code, "seconds": round(took, 2)})
    if code != (130 if signum == signal.SIGINT else 143) or took > STOP_BOUND:
        ledger.problem(f"{event}: exit {code} after {took:.1f} s")
    left = server.leftovers()
    if left:
        ledger.problem(f"{event}: {len(left)} process(es) left after the stop")
    server.start()
    return event


def drain(client: Client, seconds: float) -> list[dict]:
    """Wait until no job is queued or running; returns the final list."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            jobs = client.json("GET", "/api/jobs")["jobs"]
            if all(j["state"] in ("done", "failed") for j in jobs) or time.monotonic() > deadline:
                return list(jobs)
        time.sleep(1.0)


def audit_files(jobs: Path, listed: set[str]) -> list[str]:
    """What the jobs folder holds beyond the database, lock, facts and listed jobs' files."""
    extra = []
    for entry in jobs.iterdir():
        if entry.name in KEEP or entry.name in listed:
            continue
        if entry.name in (".incoming", ".tmp") and not any(entry.iterdir()):
            continue
        extra.append(entry.name)
    for job_id in listed:
        for root, _, files in os.walk(jobs / job_id):
            extra += [os.path.join(root, f) for f in files if f.startswith(".")]
    return extra


def soak(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="soak-serve-"))
    jobs = folder / "jobs"
    jobs.mkdir()
    if args.tmpfs_mb:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(folder)],
            check=True,
        )
        jobs.mkdir()
    package = folder / "frac.safetensors"
    make = (
        "import sys; from demucs_rr.hub.package import save_package; "
        "from demucs_rr.models.testing import FractionModel; "
        f"save_package(FractionModel({SOURCES}, {FRACTIONS}, segment_length=128, crop=13), "
        "sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", make, str(package)], cwd=REPO, check=True)
    rng = random.Random(args.seed)
    uploads = make_uploads(folder)
    server, ledger = Server(folder, jobs, package), Ledger()
    client, stop = Client(server), threading.Event()
    server.start()
    threads = [
        threading.Thread(target=uploader, args=(client, ledger, uploads, stop, args.seed + i))
        for i in range(2)
    ]
    threads.append(
        threading.Thread(target=checker, args=(client, ledger, uploads, stop, args.seed))
    )
    threads.append(threading.Thread(target=listener, args=(client, ledger, stop)))
    for thread in threads:
        thread.start()
    started = time.monotonic()
    end = started + args.minutes * 60
    while time.monotonic() + 20 < end:
        time.sleep(rng.uniform(20, 50))
        event = chaos(server, ledger, rng, bool(args.tmpfs_mb))
        ledger.count(f"chaos: {event}")
        print(
            f"{(time.monotonic() - started) / 60:5.1f} min: {event}; {dict(ledger.counts)}",
            flush=True,
        )
    stop.set()
    for thread in threads:
        thread.join(60)
    final = drain(client, 300)
    for job in final:  # the finished jobs the checker had not seen yet
        if job["id"] not in ledger.checked:
            if job["state"] == "done":
                check_done(client, ledger, uploads, job)
            elif job["state"] == "failed":
                check_failed(ledger, job)
    code, took = server.stop(signal.SIGTERM, False)
    ledger.stops.append({"event": "final sigterm-server", "code": code, "seconds": round(took, 2)})
    left_processes = server.leftovers()
    listed = {j["id"]: j for j in final}
    lost = sorted(set(ledger.accepted) - ledger.deleted - set(listed))
    unfinished = sorted(i for i, j in listed.items() if j["state"] not in ("done", "failed"))
    unknown = sorted(set(listed) - set(ledger.accepted))
    files = audit_files(jobs, set(listed))
    server.log.close()
    log = (folder / "server.log").read_text(errors="replace").splitlines()
    if args.tmpfs_mb:
        subprocess.run(["umount", str(folder)], check=True)
    shutil.rmtree(folder)
    result = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "server_starts": server.starts,
        "accepted": len(ledger.accepted),
        "deleted_by_soak": len(ledger.deleted),
        "final_jobs": len(listed),
        "final_done": sum(j["state"] == "done" for j in final),
        "final_failed": sum(j["state"] == "failed" for j in final),
        "lost": lost,
        "unfinished": unfinished,
        "unknown": unknown,
        "files_left": files,
        "processes_left": sorted(left_processes),
        "final_exit": code,
        "server_log_lines": len(log),
        "server_log_tracebacks": sum("Traceback" in line for line in log),
        "server_log_sample": log[:40],
        "counts": dict(sorted(ledger.counts.items())),
        "stops": ledger.stops,
        "max_stop_seconds": max(s["seconds"] for s in ledger.stops),
        "problems": ledger.problems,
    }
    return result


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    ok = not (
        result["server_log_tracebacks"]
        or result["lost"]
        or result["unfinished"]
        or result["files_left"]
        or result["processes_left"]
        or result["problems"]
    )
    lines = [
        "# Soak test of `demucs-rr serve`",
        "",
        f"`python tools/soak_serve.py --minutes {args.minutes}"
        + (f" --tmpfs-mb {args.tmpfs_mb}" if args.tmpfs_mb else "")
        + f" --seed {args.seed}`: {'PASSED' if ok else 'FAILED'}",
        "",
        f"- {result['minutes']} minutes, {result['server_starts']} server starts",
        f"- uploads accepted: {result['accepted']}; deleted by the soak after checking: "
        f"{result['deleted_by_soak']}; listed at the end: {result['final_jobs']} "
        f"({result['final_done']} done, {result['final_failed']} failed)",
        f"- lost jobs: {len(result['lost'])}; not finished after the drain: "
        f"{len(result['unfinished'])}; files left: {len(result['files_left'])}; "
        f"processes left: {len(result['processes_left'])}; problems: {len(result['problems'])}",
        f"- longest stop: {result['max_stop_seconds']} s; exit statuses: "
        f"{dict(Counter(s['code'] for s in result['stops']))}",
        "",
        "| what | count |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in result["counts"].items()]
    lines += [
        "",
        f"Server log: {result['server_log_lines']} lines over {result['server_starts']} starts, "
        f"{result['server_log_tracebacks']} tracebacks.",
        "",
        *[f"- problem: {p}" for p in result["problems"]],
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--tmpfs-mb", type=int, default=0, help="jobs folder on a tmpfs (root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "tools" / "results" / "soak_serve.md"))
    args = parser.parse_args()
    result = soak(args)
    write_report(Path(args.out), report(result, args), result)
    sys.exit(0 if "PASSED" in report(result, args)[2] else 1)


if __name__ == "__main__":
    main()
