#!/usr/bin/env python3
"""Benchmark streaming separation with a causal Conv-TasNet on the CPU.

The model has the released size (N256 L20 B256 H512 P3 X10 R4) made causal (``causal=True``,
``norm_type='cLN'``) with random weights (speed does not depend on the weights). A synthetic
stereo signal at 44.1 kHz is streamed in fixed blocks through
:class:`demucs_rr.separate.causal.StreamingSeparator`, timing every block; the same model then
separates the whole signal in one offline pass for comparison.

Two phases, because the machine may be shared:

1. compute cost on one thread, measured in CPU time of that thread (insensitive to other
   processes), plus a check that the streamed output equals the offline one;
2. wall-clock real-time factor and per-block latency with ``--threads`` threads: each of
   ``--repeats`` runs first waits for the other processes to go quiet (``--wait`` s in all at
   most); the fastest run is reported, with the CPU share other processes took during it.

    python tools/bench_stream.py --seconds 5 --block 1024 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from demucs_rr.models.tasnet import ConvTasNet
from demucs_rr.separate.causal import StreamingSeparator

SOURCES = ["drums", "bass", "other", "vocals"]
CONFIG = dict(N=256, L=20, B=256, H=512, P=3, X=10, R=4, causal=True, norm_type="cLN")
STREAM_DEADLINE_S = 60.0  # a streaming run stops early past this (RTF over what it covered)


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (or the platform string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OthersMeter:
    """Share of the machine's CPU used by *other* processes between start() and share()."""

    def start(self) -> OthersMeter:
        self._busy, self._own, self._wall = self._read(), self._own_cpu(), time.perf_counter()
        return self

    def share(self) -> float:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        others = (self._read() - self._busy) - (self._own_cpu() - self._own)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))

    @staticmethod
    def _own_cpu() -> float:
        return sum(os.times()[:2])

    @staticmethod
    def _read() -> float:
        """Busy CPU seconds of the whole machine so far (Linux /proc/stat; NaN elsewhere)."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Wait until others use < ``threshold`` of the CPU over 2 s (at most ``max_wait`` s)."""
    deadline = time.perf_counter() + max_wait
    while True:
        meter = OthersMeter().start()
        time.sleep(2.0)
        share = meter.share()
        if share < threshold or time.perf_counter() > deadline:
            return share


def stream_once(
    model: ConvTasNet,
    mix: torch.Tensor,
    block: int,
    clock=time.perf_counter,
    deadline: float = float("inf"),
) -> tuple[list[float], torch.Tensor]:
    """Stream ``mix`` (C, T) in blocks; return per-block times (ms) and the (S, C, T') output."""
    streamer = StreamingSeparator(model)
    times, outs, stop = [], [], time.perf_counter() + deadline
    for start in range(0, mix.size(-1), block):
        begin = clock()
        outs.append(streamer.process(mix[:, start : start + block]))
        times.append(1000.0 * (clock() - begin))
        if time.perf_counter() > stop:
            break
    outs.append(streamer.flush())
    return times, torch.cat(outs, dim=-1)


def offline_once(
    model: ConvTasNet, mix: torch.Tensor, clock=time.perf_counter
) -> tuple[float, torch.Tensor]:
    """One offline forward pass: (seconds on ``clock``, (S, C, T) output)."""
    begin = clock()
    with torch.inference_mode():
        out = model(mix[None])[0]
    return clock() - begin, out


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest-rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def single_core_cost(model: ConvTasNet, mix: torch.Tensor, block: int) -> dict:
    """Phase 1: CPU seconds per audio second on one thread, and stream/offline agreement."""
    torch.set_num_threads(1)
    seconds = mix.size(-1) / model.samplerate
    times, streamed = stream_once(model, mix, block, clock=time.thread_time)
    offline_s, reference = offline_once(model, mix, clock=time.thread_time)
    error = (streamed - reference).abs().max() / reference.abs().max()
    return {
        "stream_cpu_s_per_audio_s": sum(times) / 1000.0 / seconds,
        "offline_cpu_s_per_audio_s": offline_s / seconds,
        "stream_vs_offline_max_rel_error": float(error),
    }


def wall_clock(
    model: ConvTasNet, mix: torch.Tensor, block: int, threads: int, repeats: int, wait: float
) -> dict:
    """Phase 2: wall-clock RTF and per-block latency with ``threads`` threads.

    Each repeat first waits (up to ``wait / repeats`` s) for the machine to go quiet and
    records the CPU share other processes took while it ran; the fastest repeat is reported.
    """
    torch.set_num_threads(threads)
    seconds = mix.size(-1) / model.samplerate
    runs = []
    for _ in range(repeats):
        wait_quiet(wait / repeats)
        meter = OthersMeter().start()
        times = stream_once(model, mix, block, deadline=STREAM_DEADLINE_S)[0]
        stream_others = meter.share()
        meter.start()
        offline = offline_once(model, mix)[0] / seconds
        rtf = sum(times) / 1000.0 / (len(times) * block / model.samplerate)
        runs.append(
            {
                "stream_rtf": rtf,
                "others": stream_others,
                "offline_rtf": offline,
                "offline_others": meter.share(),
                "times": times,
            }
        )
    best = min(runs, key=lambda run: run["stream_rtf"])
    best_offline = min(runs, key=lambda run: run["offline_rtf"])
    times, budget_ms = best["times"], 1000.0 * block / model.samplerate
    return {
        "stream_rtf_best": best["stream_rtf"],
        "stream_rtf_median": statistics.median(r["stream_rtf"] for r in runs),
        "offline_rtf_best": best_offline["offline_rtf"],
        "offline_cpu_share_of_other_processes": best_offline["offline_others"],
        "offline_rtf_median": statistics.median(r["offline_rtf"] for r in runs),
        "block_ms_mean": statistics.fmean(times), "block_ms_median": statistics.median(times),
        "block_ms_p95": percentile(times, 0.95), "block_ms_max": max(times),
        "block_budget_ms": budget_ms, "blocks": len(times),
        "blocks_over_budget": sum(t > budget_ms for t in times),
        "cpu_share_of_other_processes": best["others"],
        "runs": [{k: v for k, v in r.items() if k != "times"} for r in runs],
    }  # fmt: skip


def run(seconds: float, block: int, threads: int, repeats: int, wait: float) -> dict:
    """Both phases; returns a JSON-able result dict."""
    torch.manual_seed(0)
    model = ConvTasNet(SOURCES, **CONFIG).eval()
    rate = model.samplerate
    mix = 0.5 * torch.randn(2, int(seconds * rate), generator=torch.Generator().manual_seed(1))
    stream_once(model, mix[:, :rate], block)  # warm-up: allocator, kernels
    offline_once(model, mix[:, :rate])
    streamer = StreamingSeparator(model)
    result = {
        "model": {"class": "ConvTasNet", **CONFIG, "sources": SOURCES,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "audio_seconds": seconds, "samplerate": rate, "block_samples": block,
        "threads": threads, "repeats": repeats,
        "algorithmic_latency_samples": streamer.latency_samples,
        "algorithmic_latency_ms": streamer.latency_ms,
        "min_algorithmic_latency_samples": streamer.min_latency_samples,
        "single_core": single_core_cost(model, mix, block),
    }  # fmt: skip
    result["wall_clock"] = wall_clock(model, mix, block, threads, repeats, wait)
    result["environment"] = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    return result


def markdown(r: dict) -> str:
    """A human-readable report of :func:`run`'s result."""
    env, one, wall = r["environment"], r["single_core"], r["wall_clock"]
    block, rate = r["block_samples"], r["samplerate"]
    total = block - 1 + r["algorithmic_latency_samples"]
    return "\n".join([
        "# Streaming Conv-TasNet benchmark", "",
        f"Causal Conv-TasNet of the released size (N256 L20 B256 H512 P3 X10 R4, cLN, "
        f"{r['model']['parameters']:,} parameters, random weights); {r['audio_seconds']:g} s "
        f"of stereo noise at {rate} Hz in blocks of {block} samples; {env['cpu']} "
        f"({env['cpu_count']} cores), torch {env['torch']}; {env['date']}.", "",
        "| measure | value |", "|---|---|",
        f"| streaming RTF, {r['threads']} threads, wall clock | {wall['stream_rtf_best']:.3f} "
        f"(median of {r['repeats']} repeats: {wall['stream_rtf_median']:.3f}) |",
        f"| per-block processing (fastest repeat), mean / median / p95 / max | "
        f"{wall['block_ms_mean']:.2f} / {wall['block_ms_median']:.2f} / "
        f"{wall['block_ms_p95']:.2f} / {wall['block_ms_max']:.2f} ms |",
        f"| real-time budget per block | {wall['block_budget_ms']:.2f} ms; "
        f"{wall['blocks_over_budget']} of {wall['blocks']} blocks over it |",
        f"| offline single-pass RTF, {r['threads']} threads | {wall['offline_rtf_best']:.3f} "
        f"(median {wall['offline_rtf_median']:.3f}) |",
        f"| CPU share taken by other processes during the best streaming / offline run | "
        f"{100 * wall['cpu_share_of_other_processes']:.0f} % / "
        f"{100 * wall['offline_cpu_share_of_other_processes']:.0f} % |",
        f"| single-thread compute cost, streaming / offline | "
        f"{one['stream_cpu_s_per_audio_s']:.3f} / {one['offline_cpu_s_per_audio_s']:.3f} "
        f"CPU-s per audio-s |",
        f"| algorithmic latency, worst / best case | {r['algorithmic_latency_samples']} / "
        f"{r['min_algorithmic_latency_samples']} samples ({r['algorithmic_latency_ms']:.3f} ms "
        f"worst) |",
        f"| input-to-output latency with {block}-sample blocks | {total} samples = "
        f"{1000 * total / rate:.2f} ms + the block's processing time |",
        f"| streamed vs offline output, max relative error | "
        f"{one['stream_vs_offline_max_rel_error']:.1e} |", "",
        "RTF = processing time / audio duration (below 1: faster than real time). The "
        "single-thread cost is CPU time of the computing thread, so other processes barely "
        "move it; wall-clock numbers are inflated whenever other processes take CPU share. "
        "Algorithmic latency: output sample t needs encoder frame floor(t / hop), which ends "
        "at input sample floor(t / hop) * hop + L - 1: L - 1 = 19 samples of delay for the "
        "first sample of each hop, L - hop = 10 for the last.", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio length (s)")
    parser.add_argument("--block", type=int, default=1024, help="block size (samples)")
    parser.add_argument("--threads", type=int, default=2, help="threads of phase 2")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of phase 2")
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="max seconds to wait for other processes to go quiet",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("tools/results/bench_stream.md"),
        help="Markdown report; the JSON goes next to it",
    )
    args = parser.parse_args(argv)
    result = run(args.seconds, args.block, args.threads, args.repeats, args.wait)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
