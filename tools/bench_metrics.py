#!/usr/bin/env python3
"""Benchmark our BSSEval v4 against museval, side by side on the same signals.

For each track length: 4 stereo stems at 44.1 kHz (tones + noise; estimates = reference + 10 %
of the next source + noise, float32 like decoded audio and model outputs), scored by
``museval.evaluate`` (v4, 1 s windows: the MUSDB18 call) and by ours in SDR-only mode
(:func:`framewise_sdr`) and in full mode (:func:`bss_eval`; Levinson, Cholesky and LU solvers;
CPU and CUDA when present). Reports the best wall and CPU time of several runs, speed-ups, and
the largest difference to museval's values. Results go to Markdown and JSON.
OpenMP's idle workers sleep (``OMP_WAIT_POLICY=PASSIVE``), as under the command line: with
libgomp's default spinning, the Levinson solver's many small operations run ~10x slower on two
threads of a busy machine.

    python tools/bench_metrics.py --seconds 30 240 --out tools/results/bench_metrics.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from demucs_rr.process import set_wait_policy

set_wait_policy()  # as the command line does before torch starts: idle OpenMP workers sleep
import torch  # noqa: E402

from demucs_rr.evaluate.bsseval import SOLVERS, bss_eval  # noqa: E402
from demucs_rr.evaluate.metrics import framewise_sdr  # noqa: E402

RATE = 44100


def signals(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 2, T) float32 references and estimates."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    refs = []
    for j, f0 in enumerate((55.0, 110.0, 220.0, 440.0)):
        chans = [
            0.2
            * torch.sin(2 * math.pi * f0 * (1 + 0.01 * c) * t + j)
            * (1 + 0.5 * torch.sin(2 * math.pi * 0.3 * (j + 1) * t))
            for c in range(2)
        ]
        refs.append(
            torch.stack(chans)
            + 0.05 * torch.randn(2, t.numel(), generator=gen, dtype=torch.float64)
        )
    r = torch.stack(refs)
    e = (
        r
        + 0.1 * r.roll(1, dims=0)
        + 0.02 * torch.randn(r.shape, generator=gen, dtype=torch.float64)
    )
    return r.float(), e.float()


def best_time(fn, repeats: int, sync: bool = False) -> tuple[float, float, object]:
    """Best wall time and best CPU time (this process, all threads) of ``repeats`` calls (after
    one warm-up call) and the last result."""
    out = fn()
    best = best_cpu = math.inf
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu, out


def run_museval(refs: torch.Tensor, ests: torch.Tensor) -> tuple[float, float, dict]:
    """One museval.evaluate call (its cost makes repeats expensive): wall s, CPU s, values."""
    import museval

    r = refs.permute(0, 2, 1).double().numpy()
    e = ests.permute(0, 2, 1).double().numpy()
    start, cpu = time.perf_counter(), time.process_time()
    sdr, isr, sir, sar = museval.evaluate(r, e, win=RATE, hop=RATE)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def max_diff(ours: dict, theirs: dict) -> dict:
    return {m: float(np.nanmax(np.abs(np.asarray(ours[m]) - theirs[m]))) for m in ours}


def _ours(
    refs: torch.Tensor,
    ests: torch.Tensor,
    device: str,
    threads: int,
    args: argparse.Namespace,
    museval_run: tuple[float, float, dict],
) -> list[dict]:
    """Our SDR-only and full modes on one device / thread count."""
    museval_time, museval_cpu, museval_values = museval_run
    if device == "cpu":
        torch.set_num_threads(threads)
    r, e = refs.to(device), ests.to(device)
    sync = device == "cuda"
    base = dict(
        seconds=refs.shape[-1] / RATE, device=device, threads=threads if device == "cpu" else None
    )
    t_sdr, c_sdr, sdr = best_time(lambda: framewise_sdr(r, e), args.repeats_fast, sync)
    rows = [
        dict(
            base,
            impl="ours SDR-only",
            time_s=t_sdr,
            cpu_s=c_sdr,
            speedup=museval_time / t_sdr,
            cpu_speedup=museval_cpu / c_sdr,
            max_abs_diff_db=max_diff({"SDR": sdr.cpu().numpy()}, museval_values),
        )
    ]
    for solver in args.solvers:
        t_full, c_full, res = best_time(
            lambda s=solver: bss_eval(r, e, solver=s), args.repeats, sync
        )
        values = {
            "SDR": res.sdr.cpu().numpy(),
            "ISR": res.isr.cpu().numpy(),
            "SIR": res.sir.cpu().numpy(),
            "SAR": res.sar.cpu().numpy(),
        }
        rows.append(
            dict(
                base,
                impl=f"ours full ({solver})",
                time_s=t_full,
                cpu_s=c_full,
                speedup=museval_time / t_full,
                cpu_speedup=museval_cpu / c_full,
                max_abs_diff_db=max_diff(values, museval_values),
            )
        )
    return rows


def _worker(args: argparse.Namespace) -> None:
    """One thread count in a fresh process (MKL misbehaves when the thread count changes)."""
    refs, ests = signals(args.seconds[0])
    with np.load(args.worker) as data:
        museval_values = {m: data[m] for m in ("SDR", "ISR", "SIR", "SAR")}
        museval_run = (float(data["time"]), float(data["cpu"]), museval_values)
    rows = []
    if args.threads[0] > 0:
        rows = _ours(refs, ests, "cpu", args.threads[0], args, museval_run)
    elif torch.cuda.is_available():
        rows = _ours(refs, ests, "cuda", 1, args, museval_run)
    print("ROWS " + json.dumps(rows), flush=True)


def bench_length(seconds: float, args: argparse.Namespace) -> list[dict]:
    """museval once, then ours in one subprocess per configuration, on the same signals."""
    refs, ests = signals(seconds)
    elapsed, cpu, values = run_museval(refs, ests)
    rows = [
        dict(
            seconds=seconds,
            impl="museval 0.4.1 (full, numpy)",
            device="cpu",
            threads=None,
            time_s=elapsed,
            cpu_s=cpu,
            speedup=1.0,
            cpu_speedup=1.0,
            max_abs_diff_db=None,
        )
    ]
    print(json.dumps(rows[0]), flush=True)
    configs = list(args.threads) + ([0] if torch.cuda.is_available() and not args.no_cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "museval.npz"
        np.savez(path, time=elapsed, cpu=cpu, **values)
        for threads in configs:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                str(path),
                "--seconds",
                str(seconds),
                "--threads",
                str(threads),
                "--repeats",
                str(args.repeats),
                "--repeats-fast",
                str(args.repeats_fast),
                "--solvers",
                *args.solvers,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            new = json.loads(out.split("ROWS ", 1)[1])
            for row in new:
                print(json.dumps(row), flush=True)
            rows += new
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# BSSEval v4: demucs_rr vs museval",
        "",
        f"4 stereo stems, 44.1 kHz, v4 with 1 s windows/hops; best of {env['repeats']} runs "
        f"for ours (SDR-only: best of {env['repeats_fast']}), one run of museval.",
        "",
        f"Machine: {env['cpu']} ({env['cores']} cores), "
        f"torch {env['torch']}, GPU: {env['gpu']}; load average at start "
        f"{env['loadavg']} (shared machine: absolute times vary, ratios are side by "
        "side).",
        "",
        "Time: wall; CPU: this process, all its threads (less sensitive to other jobs).",
        "",
        "| track | implementation | device (threads) | time / CPU | speed-up vs museval, "
        "wall / CPU | max abs diff SDR / ISR / SIR / SAR (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = r["max_abs_diff_db"]
        dtext = (
            "—"
            if not diff
            else " / ".join(f"{diff[m]:.1e}" for m in ("SDR", "ISR", "SIR", "SAR") if m in diff)
        )
        dev = r["device"] + (f" ({r['threads']})" if r.get("threads") else "")
        lines.append(
            f"| {r['seconds']:g} s | {r['impl']} | {dev} | {_seconds(r['time_s'])} / "
            f"{_seconds(r['cpu_s'])} | {r['speedup']:.0f}x / {r['cpu_speedup']:.0f}x | {dtext} |"
        )
    lines += ["", f"Load average at the end: {env['loadavg_end']}."]
    return "\n".join(lines) + "\n"


def _seconds(t: float) -> str:
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 240.0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of our full mode")
    parser.add_argument("--repeats-fast", type=int, default=20, help="runs of SDR-only")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch intra-op thread counts to run ours with, each in its own process (default 1 2)",
    )
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--out", default="tools/results/bench_metrics.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # museval values (.npz) path
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    env = dict(
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        loadavg=" ".join(f"{x:.2f}" for x in os.getloadavg()),
        repeats=args.repeats,
        repeats_fast=args.repeats_fast,
    )
    rows = [row for s in args.seconds for row in bench_length(s, args)]
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, env))
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(markdown(rows, env))


if __name__ == "__main__":
    main()
