#!/usr/bin/env python3
"""Benchmark separation speed and memory on the CPU (or a GPU), side by side.

Each configuration runs in its own process (so peak memory is its own) on the same synthetic
stereo song; the model is the full-size v2 Demucs with random weights (speed does not depend on
the weights). Results go to a Markdown table and a JSON file.

    python tools/bench_separate.py --seconds 60 --out tools/results/bench_separate.md

``--hybrid PYTHON`` instead compares the full-size HTDemucs (release structure, seeded random
weights) through demucs_rr's ``Separator`` with the official ``demucs==4.1.0`` ``apply_model`` on
a real song, run by ``PYTHON``: the interpreter of a benchmark-only virtual environment outside
the repository that has the official package (e.g. ``python3 -m venv --system-site-packages
/tmp/bench-official && /tmp/bench-official/bin/pip install --no-deps demucs==4.1.0 einops
openunmix``). The weights go there as an official package; the code is in
``tools/bench_hybrid.py``.

    python tools/bench_separate.py --hybrid /tmp/bench-official/bin/python \
        --out tools/results/bench_separate_hybrid.md
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "default (40 s chunks, batch 1)": dict(),
    "10 s chunks, batch 1": dict(segment=10.0),
    "10 s chunks, batch 4": dict(segment=10.0, batch_size=4),
    "no split (one pass)": dict(split=False),
}


def worker(seconds: float, channels: int, config: dict, device: str, threads: int) -> dict:
    """Separate a synthetic song once; return timing and peak memory."""
    import torch

    from demucs_rr.models.demucs_v2 import demucs_v2
    from demucs_rr.separate.api import Separator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = demucs_v2("demucs", channels=channels)
    sep = Separator(model, device=device, **config)
    sr = sep.samplerate
    t = torch.arange(int(seconds * sr)) / sr
    mix = 0.3 * torch.stack([torch.sin(2 * math.pi * 220 * t), torch.sin(2 * math.pi * 330 * t)])
    mix += 0.05 * torch.randn(mix.shape, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    sep.separate_tensor(mix, sr)
    if sep.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if sep.device.type == "cuda" else None
    return dict(seconds=elapsed, rtf=elapsed / seconds, peak_rss_mib=peak_rss, gpu_mib=gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="song length")
    parser.add_argument("--channels", type=int, default=64, help="Demucs width (64 = release)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="subset of configuration names")
    parser.add_argument(
        "--out",
        help="report path (default: tools/results/bench_separate.md; "
        "bench_separate_cli.md with --official, bench_separate_hybrid.md with --hybrid)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--hybrid",
        metavar="PYTHON",
        help="compare full-size HTDemucs with the official apply_model run by PYTHON",
    )
    parser.add_argument(
        "--official",
        metavar="PYTHON",
        help="whole-process `separate` (fp32, bf16) vs the official CLI run by PYTHON",
    )
    parser.add_argument("--snr-songs", nargs="*", help="--official: songs for the bf16 SNR")
    parser.add_argument("--song", help="--hybrid/--official: audio file (default: eval-data)")
    parser.add_argument("--repeat", type=int, default=1, help="--hybrid/--official: runs")
    args = parser.parse_args()
    results = Path(__file__).resolve().parent / "results"
    default = "bench_separate_cli.md" if args.official else "bench_separate.md"
    default = "bench_separate_hybrid.md" if args.hybrid else default
    args.out = args.out or str(results / default)
    if args.official:
        import bench_cli

        result = bench_cli.run_comparison(args)
        write_report(Path(args.out), bench_cli.report(result, args), result)
        return
    if args.hybrid:
        from bench_hybrid import run_comparison

        run_comparison(args)
        return
    if args.worker:
        res = worker(
            args.seconds, args.channels, json.loads(args.worker), args.device, args.threads
        )
        print(json.dumps(res))
        return
    rows = []
    for name, config in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            json.dumps(config),
            "--seconds",
            str(args.seconds),
            "--channels",
            str(args.channels),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        res = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(dict(config=name, **res))
        print(
            f"{name}: {res['seconds']:.1f} s, RTF {res['rtf']:.2f}, "
            f"peak RSS {res['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
    base = rows[0]
    lines = [
        f"# Separation benchmark: v2 Demucs (channels={args.channels}), "
        f"{args.seconds:g} s stereo song, device {args.device}, {args.threads} threads",
        "",
        "| configuration | time (s) | real-time factor | vs first | peak RSS (MiB) |"
        + (" GPU peak (MiB) |" if args.device != "cpu" else ""),
        "|---|---|---|---|---|" + ("---|" if args.device != "cpu" else ""),
    ]
    for r in rows:
        line = (
            f"| {r['config']} | {r['seconds']:.1f} | {r['rtf']:.2f} | "
            f"{r['seconds'] / base['seconds']:.2f}x | {r['peak_rss_mib']:.0f} |"
        )
        if args.device != "cpu":
            line += f" {r['gpu_mib']:.0f} |"
        lines.append(line)
    lines += ["", "Real-time factor = processing time / audio duration (lower is faster)."]
    write_report(Path(args.out), lines, rows)


def write_report(out: Path, lines: list[str], data: object) -> None:
    """Markdown report to ``out``, the raw numbers beside it as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
