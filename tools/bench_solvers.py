#!/usr/bin/env python3
"""BSSEval's normal-equation solvers alone, on the largest system of a MUSDB18 track.

The system of the SIR filters of 4 stereo stems: 8 signals x 512 taps = 4096 unknowns (block
Toeplitz), 4 right-hand sides, from 5 s of noise (the system's size does not depend on the
track length). Each configuration runs in its own process (the OpenMP wait policy is fixed when
torch starts): 1 and 2 threads, with OpenMP's idle workers sleeping (``OMP_WAIT_POLICY=PASSIVE``,
what the command line sets) and, for 2 threads, spinning (libgomp's default, what a Python
program that imports torch itself gets; ``solve_normal`` then uses Cholesky instead of the
recursion, which is timed here anyway). Best of 3 wall and CPU times, and the load average.

    python tools/bench_solvers.py --out tools/results/bench_solvers.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ((1, "PASSIVE"), (2, "PASSIVE"), (2, "default"))
SOLVERS = ("levinson", "cholesky", "lu")


def worker(threads: int) -> list[dict]:
    """Time every solver in this process (torch started with the inherited wait policy)."""
    import torch

    from demucs_rr.evaluate import solvers
    from demucs_rr.evaluate.solvers import solve_normal
    from demucs_rr.evaluate.spectral import fast_len

    solvers._workers_spin = lambda device: False  # time the recursion itself, never its fallback

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(8, 44100 * 5, dtype=torch.float64)
    spectra = torch.fft.rfft(x, n=fast_len(x.shape[1] + 512))
    corr = torch.fft.irfft(spectra[:, None] * spectra[None].conj(), n=fast_len(x.shape[1] + 512))
    r = corr[..., :512][None].contiguous()  # (1, P, P, L) correlations at lags 0..511
    d = torch.randn(1, 8 * 512, 4, dtype=torch.float64)
    rows = []
    for solver in SOLVERS:
        solve_normal(r, d, solver)  # warm-up
        wall = cpu = float("inf")
        for _ in range(3):
            start, clock = time.perf_counter(), time.process_time()
            solve_normal(r, d, solver)
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - clock)
        rows.append({"solver": solver, "wall_s": wall, "cpu_s": cpu})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tools/results/bench_solvers.md")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("ROWS " + json.dumps(worker(args.worker)), flush=True)
        return
    results = []
    for threads, policy in CONFIGS:
        env = {
            k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        }
        if policy == "PASSIVE":
            env["OMP_WAIT_POLICY"] = policy
        before = os.getloadavg()
        cmd = [sys.executable, __file__, "--worker", str(threads)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        for row in json.loads(out.split("ROWS ", 1)[1]):
            results.append({**row, "threads": threads, "policy": policy, "load": before})
    lines = [
        "# BSSEval normal-equation solvers: 4096 unknowns (8 signals x 512 taps), 4 right sides",
        "",
        "`python tools/bench_solvers.py`; best of 3, each configuration in its own process. "
        "CPU: the process, all threads. Shared machine: load average (1, 5, 15 min) at the "
        "start of each configuration.",
        "",
        "| threads | OpenMP idle workers | solver | wall | CPU | load |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        idle = "sleep (PASSIVE)" if r["policy"] == "PASSIVE" else "spin first (libgomp default)"
        load = ", ".join(f"{x:.1f}" for x in r["load"])
        lines.append(
            f"| {r['threads']} | {idle} | {r['solver']} | {r['wall_s']:.3f} s | "
            f"{r['cpu_s']:.3f} s | {load} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
