#!/usr/bin/env python3
"""Request latency of ``demucs-rr serve`` with and without many open event streams.

A server (``python -m demucs_rr serve``) gets ``--jobs`` jobs written straight into its
database, ``--running`` of which change their progress five times a second (as busy workers
do). Then, in one run:

1. ``--requests`` sequential ``GET /api/jobs/{id}`` (one kept-alive connection), one every
   ``--interval`` seconds: the baseline;
2. ``--streams`` clients open ``GET /api/events`` (spread over ``--addresses`` loopback source
   addresses, 127.0.0.2 and up, as distinct clients) and keep reading; the same requests again;
3. the streams are closed; the requests once more (a second baseline, so that a change in the
   machine's load during the run shows).

It reports the median, 90th percentile and maximum latency of each phase, the latency the
streams added (median with streams minus the mean of the two baselines), the ratio, the server's
CPU use in each phase, and the load of the machine (all cores busy fraction, load average),
which other users of a shared machine change.

    python tools/bench_serve_events.py --streams 100 --jobs 327
    python tools/bench_serve_events.py --checkout /tmp/old --server-args ""   # another version
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_separate import write_report

REPO = Path(__file__).resolve().parents[1]


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _process_cpu(pid: int) -> float:
    """CPU seconds used by a process (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(checkout: Path, folder: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """A server of the demucs_rr in ``checkout`` with a fraction model (its worker only takes
    queued jobs: it leaves the jobs written here alone)."""
    package = folder / "frac.safetensors"
    make = (
        "import sys; from demucs_rr.hub.package import save_package; "
        "from demucs_rr.models.testing import FractionModel; "
        "save_package(FractionModel(['drums','bass','other','vocals']), sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", make, str(package)], cwd=checkout, check=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "demucs_rr", "--threads", "1", "serve", "-n", str(package)]
    cmd += ["--port", str(port), "--jobs-dir", str(folder / "jobs"), "--workers", "1", *extra]
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start: {(folder / 'server.log').read_text()}")


def fill(database: Path, count: int, running: int) -> list[str]:
    """Write ``count`` jobs (``running`` of them running, the rest done); returns their ids."""
    now = time.time()
    ids = [f"{i:032x}" for i in range(1, count + 1)]
    stems = json.dumps(
        [{"name": s, "file": f"{s}.wav"} for s in ("drums", "bass", "other", "vocals")]
    )
    options = json.dumps(
        {"model": "frac", "two_stems": None, "stems": None, "format": "wav", "shifts": 0}
    )
    with sqlite3.connect(database) as db:
        for i, job_id in enumerate(ids):
            state = "running" if i >= count - running else "done"
            done = state == "done"
            db.execute(
                "INSERT INTO jobs (id, name, input, options, state, progress, stems, created, "
                "started, finished) VALUES (?, ?, 'input.wav', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, f"song {i}.wav", options, state, float(done), stems if done else "[]",
                 now + i * 1e-3, now, now if done else None),
            )  # fmt: skip
    return ids


class Progress(threading.Thread):
    """Moves the running jobs' progress five times a second, as workers do."""

    def __init__(self, database: Path, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.database, self.ids, self.stop = database, ids, threading.Event()
        self.updates = 0

    def run(self) -> None:
        step = 0
        with sqlite3.connect(self.database, timeout=30, isolation_level=None) as db:
            while not self.stop.wait(0.2):
                step += 1
                for job_id in self.ids:
                    db.execute(
                        "UPDATE jobs SET progress = ? WHERE id = ?", ((step % 1000) / 1000, job_id)
                    )
                    self.updates += 1


class Streams(threading.Thread):
    """``count`` open ``GET /api/events`` streams, read continuously by one thread."""

    def __init__(self, port: int, count: int, addresses: int) -> None:
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.received = 0
        self.closed = 0
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        for i in range(count):
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{2 + i % addresses}", 0)
            )
            sock.sendall(
                b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            )
            head = sock.recv(4096)
            if not head.startswith(b"HTTP/1.1 200") or b"text/event-stream" not in head.lower():
                raise SystemExit(f"stream {i} was refused: {head[:200]!r}")
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.socks.append(sock)

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.selector.unregister(sock)
                    self.closed += 1
                self.received += len(data)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for sock in self.socks:
            sock.close()


def measure(port: int, path: str, count: int, interval: float = 0.0) -> list[float]:
    """Latencies in ms of ``count`` GETs of ``path`` on one connection, one every ``interval``
    seconds at most."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(count):
        time.sleep(max(0.0, interval - (times[-1] / 1000 if times else 0.0)))
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status}")
    conn.close()
    return times


def phase(name: str, port: int, path: str, args: argparse.Namespace, server: int) -> dict[str, Any]:
    busy0, total0 = _cpu_times()
    cpu0, wall0 = _process_cpu(server), time.monotonic()
    times = measure(port, path, args.requests, args.interval)
    busy1, total1 = _cpu_times()
    wall = time.monotonic() - wall0
    return {
        "phase": name,
        "median_ms": statistics.median(times),
        "p90_ms": statistics.quantiles(times, n=10)[-1],
        "max_ms": max(times),
        "server_cpu_pct": 100 * (_process_cpu(server) - cpu0) / wall,
        "machine_busy_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1),
        "loadavg_1min": os.getloadavg()[0],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-serve-events-") as tmp:
        folder = Path(tmp)
        proc, port = start_server(args.checkout, folder, args.server_args.split())
        try:
            ids = fill(folder / "jobs" / "jobs.sqlite3", args.jobs, args.running)
            progress = Progress(folder / "jobs" / "jobs.sqlite3", ids[-args.running :])
            progress.start()
            path = f"/api/jobs/{ids[0]}"
            measure(port, path, 10)  # warm up
            rows = [phase("without streams", port, path, args, proc.pid)]
            streams = Streams(port, args.streams, args.addresses)
            streams.start()
            time.sleep(args.settle)
            rows.append(phase(f"{args.streams} streams open", port, path, args, proc.pid))
            received, closed = streams.received, streams.closed
            streams.close()
            time.sleep(args.settle)
            rows.append(phase("without streams again", port, path, args, proc.pid))
            progress.stop.set()
        finally:
            proc.terminate()
            proc.wait(30)
    base = (rows[0]["median_ms"] + rows[2]["median_ms"]) / 2
    return {
        "rows": rows,
        "added_ms": rows[1]["median_ms"] - base,
        "ratio": rows[1]["median_ms"] / base,
        "stream_bytes": received,
        "streams_closed_early": closed,
        "progress_updates": progress.updates,
        "cpus": os.cpu_count(),
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        "# Request latency of `demucs-rr serve` with open event streams",
        "",
        f"Server: {args.label or args.checkout}.",
        "",
        f"`python tools/bench_serve_events.py --streams {args.streams} --jobs {args.jobs} "
        f"--running {args.running} --requests {args.requests}`: {args.jobs} jobs, "
        f"{args.running} of them changing progress 5 times a second; `GET /api/jobs/ID` "
        f"{args.requests} times per phase, one every {args.interval} s, on {result['cpus']} CPUs.",
        "",
        "| phase | median ms | p90 ms | max ms | server CPU % | machine busy % | load 1 min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['phase']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['max_ms']:.1f} | "
            f"{r['server_cpu_pct']:.0f} | {r['machine_busy_pct']:.0f} | {r['loadavg_1min']:.2f} |"
        )
    lines += [
        "",
        f"Added by the streams (median): {result['added_ms']:.2f} ms "
        f"(ratio {result['ratio']:.2f}); the streams received {result['stream_bytes']} bytes, "
        f"{result['streams_closed_early']} closed early.",
        "Machine busy % counts every process of the machine (it is shared).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--addresses", type=int, default=10, help="loopback source addresses")
    parser.add_argument("--jobs", type=int, default=327)
    parser.add_argument("--running", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per phase")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between requests")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after opening/closing")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the demucs_rr to run")
    parser.add_argument("--server-args", default="--max-queued-jobs 0")
    parser.add_argument("--label", default="", help="what the server is, for the report")
    parser.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_serve_events.md"))
    args = parser.parse_args()
    result = run(args)
    write_report(Path(args.out), report(result, args), result)


if __name__ == "__main__":
    main()
