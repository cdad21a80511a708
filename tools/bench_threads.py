#!/usr/bin/env python3
"""The thread policy of the commands, quiet and loaded: whole-process ``separate`` times.

One full-size HT Demucs (release structure, seeded random weights: speed does not depend on the
values) separates the first ``--seconds`` of a real song, each run its own process timed from
start to exit, under three policies, interleaved round by round:

* ``torch default``: what the commands did before (torch's threads, one per core, and OpenMP's
  own wait policy: idle workers spin 300,000 rounds at every barrier), through
  ``DEMUCS_RR_WAIT_POLICY=torch``;
* ``--threads 1``;
* ``new default``: torch's threads, idle OpenMP workers sleep (``OMP_WAIT_POLICY=PASSIVE``, what
  :func:`demucs_rr.process.configure_process` sets).

Twice: on the machine as it is ("quiet": make sure nothing else runs) and with one competing
2-thread process (a torch matrix-multiplication loop, OpenMP's default policy), the situation of
a laptop or a shared server. The table gives each time and its ratio to the best policy of the
same condition, and to today's default. Usage::

    python3 tools/bench_threads.py --seconds 60 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

from bench_hybrid import DEFAULT_SONG, RELEASE_KWARGS  # noqa: E402
from bench_separate import write_report  # noqa: E402

POLICIES: dict[str, tuple[list[str], dict[str, str]]] = {
    "torch default (before)": ([], {"DEMUCS_RR_WAIT_POLICY": "torch"}),
    "--threads 1": (["--threads", "1"], {}),
    "new default": ([], {}),
}

LOAD = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    for _ in range(50):
        a = torch.tanh(a @ a * 1e-3)
"""


def prepare(work: Path, song: Path, seconds: float) -> tuple[Path, Path]:
    """``song.wav`` (first ``seconds`` of ``song``) and ``ht.safetensors`` (seeded HT Demucs)."""
    code = f"""
import sys, soundfile, torch
from demucs_rr.audio import load_for_model
from demucs_rr.hub import save_package
from demucs_rr.models.htdemucs import HTDemucs
mix, _ = load_for_model(sys.argv[1], 44100, 2)
soundfile.write(sys.argv[2], mix[:, : int({seconds} * 44100)].T.numpy(), 44100, subtype="PCM_16")
torch.manual_seed(0)
save_package(HTDemucs(**{RELEASE_KWARGS!r}), sys.argv[3], name="ht")
"""
    wav, package = work / "song.wav", work / "ht.safetensors"
    subprocess.run([sys.executable, "-c", code, str(song), str(wav), str(package)], check=True)
    return wav, package


def run_once(policy: str, wav: Path, package: Path, out: Path) -> float:
    """Wall seconds of one ``separate`` process under ``policy``."""
    extra, env = POLICIES[policy]
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    command = [sys.executable, "-m", "demucs_rr", *extra, "separate", "-q", "--overwrite"]
    command += ["-n", str(package), "-o", str(out), "-d", "cpu", str(wav)]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**base, **env})
    return time.perf_counter() - start


def measure(wav: Path, package: Path, work: Path, rounds: int, loaded: bool) -> dict[str, Any]:
    """Times of every policy, interleaved, with or without the competing process."""
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if loaded else None
    try:
        time.sleep(2 if loaded else 0)
        times: dict[str, list[float]] = {p: [] for p in POLICIES}
        for _ in range(rounds):
            for policy in POLICIES:
                times[policy].append(run_once(policy, wav, package, work / "out"))
                print(f"{'loaded' if loaded else 'quiet'}: {policy}: {times[policy][-1]:.1f} s")
        return {"times": times, "load": os.getloadavg()}
    finally:
        if load is not None:
            load.kill()
            load.wait()


def report(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown: median time per policy and condition, ratios to the best and to before."""
    lines = [
        f"# Thread policy of the commands: `separate`, HT Demucs, {args.seconds:g} s of a real "
        f"song, CPU ({os.cpu_count()} cores), median of {args.rounds} whole-process runs",
        "",
        "| condition | policy | time (s) | vs best policy | vs torch default (before) |",
        "|---|---|---|---|---|",
    ]
    for condition, result in results.items():
        median = {p: statistics.median(t) for p, t in result["times"].items()}
        best, before = min(median.values()), median["torch default (before)"]
        for policy, seconds in median.items():
            lines.append(
                f"| {condition} | {policy} | {seconds:.1f} | {seconds / best:.2f}x | "
                f"{seconds / before:.2f}x |"
            )
    lines += [
        "",
        "Loaded: one other process running a 2-thread torch loop (OpenMP's default policy) the "
        "whole time. Command: `python3 tools/bench_threads.py "
        f"--seconds {args.seconds:g} --rounds {args.rounds}`.",
    ]
    return lines


def main() -> None:
    """Prepare, measure quiet then loaded, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--song", type=Path, default=DEFAULT_SONG)
    parser.add_argument("--out", type=Path, default=TOOLS / "results" / "bench_threads.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wav, package = prepare(work, args.song, args.seconds)
        results = {
            "quiet": measure(wav, package, work, args.rounds, loaded=False),
            "loaded": measure(wav, package, work, args.rounds, loaded=True),
        }
    write_report(args.out, report(results, args), results)


if __name__ == "__main__":
    main()
