#!/usr/bin/env python3
"""v2 Demucs on the CPU: measured separation time against its compute / bandwidth bound.

The bound is a roofline estimate from numbers measured on this machine in the same run:

- ``peak``: best fp32 GEMM throughput (2048^3 ``torch.mm``) at the benchmark's thread count;
- ``bandwidth``: best rate at which one LSTM step's recurrent weight (4H x H fp32 = 64 MiB for
  H = 2048) is streamed through a matrix product with B = 1, 2, 4, 8 vectors (``W @ h``, the
  recurrence's own kernel), the best over B: it does not fit in cache, so every step of every
  direction and layer re-reads it, and an ideal kernel would stream it at that rate for any B.

For each forward call the engine makes (their input shapes are recorded), the bound is::

    (conv/linear FLOPs + LSTM input-projection FLOPs) / peak
      + steps x layers x 2 directions x max(64 MiB / bandwidth, 2 B 4H H / peak)

with FLOPs counted by ``torch.utils.flop_counter`` for the convolutions and analytically for
the LSTM (which that counter does not see on the CPU). Everything outside the model (whole-track
statistics, windows, overlap-add) counts as measured time but not in the bound, so the ratio is
an upper estimate of the model's own inefficiency. Results go to a Markdown table and JSON::

    python3 tools/bench_v2_bound.py --seconds 60 --threads 2 --out tools/results/bench_v2_bound.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

CONFIGS: dict[str, dict[str, Any]] = {
    "default (batch 1)": {},
    "10 s chunks, batch 4": {"segment": 10.0, "batch_size": 4},
    "10 s chunks, batch 8": {"segment": 10.0, "batch_size": 8},
    "no split (one pass)": {"split": False},
}


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_peaks(hidden: int, batches: list[int]) -> dict[str, Any]:
    """Measured GEMM FLOP/s and recurrent-weight streaming rate (bytes/s) per batch size."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    peak = 2 * n**3 / _best(lambda: torch.mm(a, b), 10)
    weight = torch.randn(4 * hidden, hidden)
    rates = {}
    for batch in batches:
        h = torch.randn(hidden, batch)
        torch.mm(weight, h)
        rates[batch] = weight.numel() * 4 / _best(lambda h=h: torch.mm(weight, h), 30)
    return {"peak_flops": peak, "weight_rate": rates}


class CallRecorder:
    """Wraps a model's forward to record input shapes: (B, C, L) per call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.model = model
        self.forward = model.forward

        def recording(x: torch.Tensor) -> torch.Tensor:
            self.shapes.append(tuple(x.shape))
            return self.forward(x)

        model.forward = recording  # type: ignore[method-assign]


def call_bound(model: Any, shape: tuple[int, ...], peaks: dict[str, Any]) -> dict[str, float]:
    """Bound (seconds) of one forward on an input of ``shape``, and its parts."""
    lstm = model.lstm.lstm
    seen: list[tuple[int, ...]] = []
    handle = lstm.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward(torch.zeros(shape))
    handle.remove()
    steps, batch, _ = seen[0]
    hidden, layers = lstm.hidden_size, lstm.num_layers
    inputs = [lstm.input_size] + [2 * hidden] * (layers - 1)
    proj = sum(2 * steps * batch * 2 * 4 * hidden * i for i in inputs)
    rate = max(peaks["weight_rate"].values())
    flops = 2 * batch * 4 * hidden * hidden
    step = max(4 * hidden * hidden * 4 / rate, flops / peaks["peak_flops"])
    compute = (counter.get_total_flops() + proj) / peaks["peak_flops"]
    recurrence = steps * layers * 2 * step
    return {"compute": compute, "recurrence": recurrence, "total": compute + recurrence}


def run_config(name: str, config: dict[str, Any], mix: torch.Tensor, peaks: dict) -> dict:
    """Separate ``mix`` with one configuration; measured time and bound."""
    from demucs_rr.models.demucs_v2 import demucs_v2
    from demucs_rr.separate.api import Separator

    torch.manual_seed(0)
    model = demucs_v2("demucs").eval()
    recorder = CallRecorder(model)
    sep = Separator(model, device="cpu", **config)
    sep.separate_tensor(mix[:, : 44100 * 2], 44100)  # warm-up (allocator, oneDNN primitives)
    recorder.shapes.clear()
    start = time.perf_counter()
    sep.separate_tensor(mix, 44100)
    measured = time.perf_counter() - start
    parts = {"compute": 0.0, "recurrence": 0.0, "total": 0.0}
    cache: dict[tuple[int, ...], dict[str, float]] = {}
    for shape in recorder.shapes:
        if shape not in cache:
            cache[shape] = call_bound(model, shape, peaks)
        for key in parts:
            parts[key] += cache[shape][key]
    row = {"config": name, "measured": measured, "calls": len(recorder.shapes), **parts}
    row["ratio"] = measured / parts["total"]
    print(f"{name}: {measured:.1f} s, bound {parts['total']:.1f} s", flush=True)
    return row


def report(rows: list[dict], peaks: dict, args: argparse.Namespace) -> list[str]:
    rates = ", ".join(f"B={b}: {r / 1e9:.1f} GB/s" for b, r in peaks["weight_rate"].items())
    lines = [
        f"# v2 Demucs (full size) vs its compute/bandwidth bound: {args.seconds:g} s stereo, "
        f"CPU, {args.threads} threads",
        "",
        f"Measured here in the same run: fp32 GEMM peak {peaks['peak_flops'] / 1e9:.1f} GFLOP/s; "
        f"recurrent weight (64 MiB) streamed at {rates}.",
        "",
        "| configuration | measured (s) | bound (s) | of which compute | of which LSTM "
        "recurrence | measured / bound |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['measured']:.1f} | {r['total']:.1f} | {r['compute']:.1f} | "
            f"{r['recurrence']:.1f} | {r['ratio']:.2f}x |"
        )
    lines += [
        "",
        "Bound = (conv + LSTM input FLOPs) / GEMM peak + per LSTM step max(weight bytes / "
        "rate, FLOPs / peak); see the module docstring. Measured includes everything the "
        f"engine does. Command: `python3 tools/bench_v2_bound.py --seconds {args.seconds:g} "
        f"--threads {args.threads}`.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="subset of configuration names")
    parser.add_argument("--out", default="tools/results/bench_v2_bound.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = machine_peaks(2048, [1, 2, 4, 8])
    sr = 44100
    t = torch.arange(int(args.seconds * sr)) / sr
    mix = 0.3 * torch.stack([torch.sin(2 * math.pi * 220 * t), torch.sin(2 * math.pi * 330 * t)])
    mix += 0.05 * torch.randn(mix.shape, generator=torch.Generator().manual_seed(0))
    rows = [
        run_config(name, config, mix, peaks)
        for name, config in CONFIGS.items()
        if not args.only or name in args.only
    ]
    lines = report(rows, peaks, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"peaks": peaks, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
