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
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_separate import write_report
from soak_serve_lib import Client, Ledger, Server

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["drums", "bass", "other", "vocals"]
FRACTIONS = [0.1, 0.2, 0.3, 0.4]
STOP_BOUND = 20.0
KEEP = {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", ".lock", "model.json"}


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


def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The soak's folder (on a tmpfs with ``--tmpfs-mb``), its jobs folder and model."""
    folder = Path(tempfile.mkdtemp(prefix="soak-serve-"))
    if args.tmpfs_mb:
        mount = ["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(folder)]
        subprocess.run(mount, check=True)
    jobs = folder / "jobs"
    jobs.mkdir()
    package = folder / "frac.safetensors"
    make = (
        "import sys; from demucs_rr.hub.package import save_package; "
        "from demucs_rr.models.testing import FractionModel; "
        f"save_package(FractionModel({SOURCES}, {FRACTIONS}, segment_length=128, crop=13), "
        "sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", make, str(package)], cwd=REPO, check=True)
    return folder, jobs, package


def disrupt(args: argparse.Namespace, server: Server, ledger: Ledger) -> float:
    """Disruptions until ``--minutes`` are nearly over; returns when it began."""
    rng = random.Random(args.seed)
    started = time.monotonic()
    end = started + args.minutes * 60
    while time.monotonic() + 20 < end:
        time.sleep(rng.uniform(20, 50))
        event = chaos(server, ledger, rng, bool(args.tmpfs_mb))
        ledger.count(f"chaos: {event}")
        minutes = (time.monotonic() - started) / 60
        print(f"{minutes:5.1f} min: {event}; {dict(ledger.counts)}", flush=True)
    return started


def finish(client: Client, ledger: Ledger, uploads: dict, server: Server) -> dict[str, Any]:
    """Drain the queue, check the jobs the checker did not see, stop the server; what is left."""
    final = drain(client, 300)
    for job in final:  # the finished jobs the checker had not seen yet
        if job["id"] not in ledger.checked:
            if job["state"] == "done":
                check_done(client, ledger, uploads, job)
            elif job["state"] == "failed":
                check_failed(ledger, job)
    code, took = server.stop(signal.SIGTERM, False)
    ledger.stops.append({"event": "final sigterm-server", "code": code, "seconds": round(took, 2)})
    listed = {j["id"]: j for j in final}
    return {
        "final_jobs": len(listed),
        "final_done": sum(j["state"] == "done" for j in final),
        "final_failed": sum(j["state"] == "failed" for j in final),
        "lost": sorted(set(ledger.accepted) - ledger.deleted - set(listed)),
        "unfinished": sorted(i for i, j in listed.items() if j["state"] not in ("done", "failed")),
        "unknown": sorted(set(listed) - set(ledger.accepted)),
        "files_left": audit_files(server.jobs, set(listed)),
        "processes_left": sorted(server.leftovers()),
        "final_exit": code,
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    folder, jobs, package = prepare(args)
    uploads = make_uploads(folder)
    server, ledger = Server(folder, jobs, package), Ledger()
    client, stop = Client(server), threading.Event()
    server.start()
    threads = [
        threading.Thread(target=uploader, args=(client, ledger, uploads, stop, args.seed + i))
        for i in range(2)
    ]
    threads.append(threading.Thread(target=checker, args=(client, ledger, uploads, stop, 0)))
    threads.append(threading.Thread(target=listener, args=(client, ledger, stop)))
    for thread in threads:
        thread.start()
    started = disrupt(args, server, ledger)
    stop.set()
    for thread in threads:
        thread.join(60)
    left = finish(client, ledger, uploads, server)
    server.log.close()
    log = (folder / "server.log").read_text(errors="replace").splitlines()
    if args.tmpfs_mb:
        subprocess.run(["umount", str(folder)], check=True)
    shutil.rmtree(folder)
    return {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "server_starts": server.starts,
        "accepted": len(ledger.accepted),
        "deleted_by_soak": len(ledger.deleted),
        **left,
        "server_log_lines": len(log),
        "server_log_tracebacks": sum("Traceback" in line for line in log),
        "server_log_sample": log[:40],
        "counts": dict(sorted(ledger.counts.items())),
        "stops": ledger.stops,
        "max_stop_seconds": max(s["seconds"] for s in ledger.stops),
        "problems": ledger.problems,
    }


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
