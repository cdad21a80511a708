#!/usr/bin/env python3
"""Benchmark training steps of the full-size presets (Demucs v2, Conv-TasNet) on CPU or GPU.

Each preset runs in its own process (so peak memory is its own): the real ``train_step``
(augmentations, forward, per-source L1, backward, Adam) on random stems of the recipe's item
length, after warm-up steps. Data loading is not included. Results go to a Markdown table.

    python tools/bench_train.py                                   # CPU, fp32
    python tools/bench_train.py --device cuda --amp --batch 16 \
        --out tools/results/bench_train_gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("demucs", "tasnet")
#: Default items per step. Conv-TasNet keeps ~11 GiB of fp32 activations per 2.8 s item (40
#: blocks of 512 x 12409 frames), so one item is what a 24 GiB CPU box can hold.
DEFAULT_BATCH = {"demucs": 2, "tasnet": 1}


def worker(
    preset: str,
    batch: int,
    segment: float | None,
    steps: int,
    warmup: int,
    device: str,
    amp: bool,
    threads: int,
) -> dict:
    """Run ``warmup + steps`` training steps of ``preset``; return timing and peak memory."""
    import torch

    from demucs_rr.distributed import Group
    from demucs_rr.train.config import load_config
    from demucs_rr.train.loop import train_step
    from demucs_rr.train.state import build_state, make_model

    torch.set_num_threads(threads)
    overrides = [
        f"model={preset}",
        "dset=synthetic",
        f"batch_size={batch}",
        f"device={device}",
        f"amp={'bf16' if amp else 'fp32'}",
        f"augment.remix_group_size={min(4, batch)}",
    ]
    if segment is not None:
        overrides.append(f"segment={segment}")
    config = load_config(overrides)
    model = make_model(config)
    dist = Group.from_env(config.device, env={}, allow_mps=False)
    state = build_state(config, model, dist, steps_per_epoch=steps + warmup)
    rate = config.dset.samplerate
    out_length = round(config.segment * rate)
    length = model.valid_length(out_length) + round(config.augment.shift * rate)
    shape = (batch, len(config.dset.sources), config.dset.channels, length)
    stems = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in model.parameters())
    for _ in range(warmup):
        train_step(state, stems)
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        metrics = train_step(state, stems)
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    return dict(
        preset=preset,
        params_m=params / 1e6,
        batch=batch,
        segment_s=config.segment,
        item_samples=length,
        device=str(dist.device),
        precision="bf16" if amp else "fp32",
        threads=threads,
        s_per_step=elapsed,
        samples_per_s=batch / elapsed,
        audio_s_per_s=batch * out_length / rate / elapsed,
        loss=metrics["loss"],
        load_avg=os.getloadavg()[0],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        gpu_peak_mib=(
            torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda" else None
        ),
    )


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Training step benchmark",
        "",
        f"`python tools/bench_train.py {' '.join(sys.argv[1:])}`".replace("`` ", "`"),
        "",
        "Real `train_step` (augmentations, forward, per-source L1, backward, Adam) on random "
        f"stems; {args.warmup} warm-up step(s), then the mean of {args.steps}. Data loading is "
        "not included. Samples/s counts training items; audio s/s counts seconds of model "
        "output (the recipe's segment) per second of wall time. Peak RSS includes the weights, "
        "gradients and both Adam moments (4 x params x 4 bytes). Load = the machine's 1-minute "
        "load average after the steps: on a shared box, timings grow with it.",
        "",
        "| preset | params (M) | batch | segment (s) | device | precision | threads | s/step "
        "| samples/s | audio s/s | peak RSS (MiB) | peak GPU (MiB) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | failed: {r['error']} |" + " |" * 11)
            continue
        gpu = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "-"
        lines.append(
            f"| {r['preset']} | {r['params_m']:.1f} | {r['batch']} | {r['segment_s']:.2f} | "
            f"{r['device']} | {r['precision']} | {r['threads']} | {r['s_per_step']:.2f} | "
            f"{r['samples_per_s']:.2f} | {r['audio_s_per_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{gpu} | {r['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _run_one(preset: str, args: argparse.Namespace) -> dict:
    batch = args.batch or DEFAULT_BATCH[preset]
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        preset,
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.segment is not None:
        cmd += ["--segment", str(args.segment)]
    if args.amp:
        cmd.append("--amp")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(preset=preset, error=reason[:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument(
        "--batch", type=int, default=None, help=f"items per step (default: {DEFAULT_BATCH})"
    )
    parser.add_argument(
        "--segment",
        type=float,
        default=None,
        help="seconds per item (default: the preset's recipe)",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("tools/results/bench_train.md"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(
            args.worker,
            args.batch,
            args.segment,
            args.steps,
            args.warmup,
            args.device,
            args.amp,
            args.threads,
        )
        print(json.dumps(result))
        return
    rows = []
    for preset in args.presets:
        rows.append(_run_one(preset, args))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_table(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
