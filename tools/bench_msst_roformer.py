#!/usr/bin/env python3
"""One-chunk forward of demucs_rr's RoFormers against MSST's own modules, side by side.

Full-size released structures (the shipped configs of viperx BS-RoFormer ep_317 and Kimberley
Jensen's Mel-Band RoFormer) with seeded random weights: MSST's class is built right after
``torch.manual_seed(0)`` and its state dict is strict-loaded into ours, so both compute the same
function. The input is one chunk (the config's ``chunk_size``, or ``--seconds``) of a real song.
Per thread count, every round times MSST fp32, ours fp32 and ours under
``torch.autocast('cpu', dtype=torch.bfloat16)`` one after the other (interleaved, so that load
from other processes hits all three alike); the table gives the fastest round and the median.
Checks: max |ours - MSST| / max |MSST| (fp32; fixture tolerance 1e-5), and the SNR of our bf16
output against our fp32 output per stem.

MSST's dependencies (einops, rotary-embedding-torch, beartype, librosa) must be importable;
they are not demucs_rr dependencies:

    python3 tools/bench_msst_roformer.py --msst /path/to/Music-Source-Separation-Training \\
        --threads 1 2 --rounds 3 --out tools/results/bench_msst_roformer.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from bench_separate import write_report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HUB = REPO / "demucs_rr" / "hub" / "msst"
SONG = REPO.parent / "shared/eval-data/full-songs/librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg"
CONFIGS = {
    "viperx_bs_roformer_ep_317": ("bs_roformer", "bs_roformer", "BSRoformer"),
    "kj_mel_band_roformer_vocals": ("mel_band_roformer", "mel_band_roformer", "MelBandRoformer"),
}


class _MsstLoader(yaml.SafeLoader):
    """Safe loader plus MSST's ``!!python/tuple`` (kept a tuple: MSST's beartype wants one)."""


_MsstLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def build_pair(name: str, msst: Path) -> tuple[Any, Any, dict[str, Any]]:
    """MSST's model with seed-0 weights, ours with the same weights, and the config."""
    from demucs_rr.hub.msst_roformer import roformer_kwargs
    from demucs_rr.models.registry import build_model

    model_type, module, cls_name = CONFIGS[name]
    config = yaml.load((HUB / f"{name}.yaml").read_text(), Loader=_MsstLoader)
    sys.path.insert(0, str(msst))
    msst_cls = getattr(importlib.import_module(f"models.bs_roformer.{module}"), cls_name)
    torch.manual_seed(0)
    reference = msst_cls(**config["model"]).eval()
    class_name, kwargs = roformer_kwargs(config, model_type)
    with torch.device("meta"):
        ours = build_model(class_name, kwargs)
    ours = ours.to_empty(device="cpu")
    ours.load_state_dict(reference.state_dict(), strict=True)
    for module_ in ours.modules():
        if hasattr(module_, "reset_buffers"):
            module_.reset_buffers()
    return reference, ours.eval(), config


def chunk(config: dict[str, Any], seconds: float | None) -> torch.Tensor:
    """(1, 2, L) from 30 s into the song; L = the config's chunk size unless ``seconds``."""
    from demucs_rr.audio import load_for_model

    length = int(seconds * 44100) if seconds else int(config["audio"]["chunk_size"])
    mix, _ = load_for_model(SONG, 44100, 2)
    return mix[None, :, 30 * 44100 : 30 * 44100 + length].contiguous()


def timed(fn: Any, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Wall and process CPU seconds of ``fn(x)`` (inference mode), output as (B, S, C, T)."""
    with torch.inference_mode():
        begin, begin_cpu = time.perf_counter(), time.process_time()
        out = fn(x)
        wall, cpu = time.perf_counter() - begin, time.process_time() - begin_cpu
    return wall, cpu, out.float().reshape(x.shape[0], -1, *x.shape[1:])


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> list[float]:
    """Per stem 10 log10(|ref|^2 / |est - ref|^2) of (B, S, C, T) tensors."""
    out = []
    for stem in range(ref.shape[1]):
        r, e = ref[:, stem].double(), est[:, stem].double()
        out.append(
            10 * math.log10(float(r.pow(2).sum()) / max(float((e - r).pow(2).sum()), 1e-300))
        )
    return out


def run(name: str, args: argparse.Namespace, done: Any) -> list[dict[str, Any]]:
    """Rounds of MSST fp32 / ours fp32 / ours bf16 per thread count; ``done(row)`` after each."""
    reference, ours, config = build_pair(name, args.msst)
    x = chunk(config, args.seconds)

    def bf16(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result: torch.Tensor = ours(inp)
        return result

    runners = {"msst": reference, "ours": ours, "ours_bf16": bf16}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for fn in runners.values():  # warm-up on a short piece
            timed(fn, x[..., : 4 * 44100])
        times: dict[str, list[float]] = {key: [] for key in runners}
        cpu: dict[str, list[float]] = {key: [] for key in runners}
        outs: dict[str, torch.Tensor] = {}
        for _ in range(args.rounds):
            for key, fn in runners.items():
                wall, used, outs[key] = timed(fn, x)
                times[key].append(wall)
                cpu[key].append(used)
                print(
                    f"{name} threads={threads} {key}: {wall:.2f} s ({used:.2f} s CPU)", flush=True
                )
        ref = outs["msst"]
        rows.append({
            "config": name, "threads": threads, "samples": x.shape[-1], "times_s": times,
            "cpu_s": cpu, "load_average": list(os.getloadavg()),
            "rel_err_vs_msst": float((outs["ours"] - ref).abs().max() / ref.abs().max()),
            "bf16_snr_db": snr_db(outs["ours"], outs["ours_bf16"]),
        })  # fmt: skip
        done(rows[-1])
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        "# RoFormer one-chunk forward: demucs_rr vs MSST (CPU)",
        "",
        "Full-size released structures, seeded random weights (MSST's, loaded into ours), one "
        "chunk of a real song, `torch.inference_mode()`; rounds interleaved. Times: fastest "
        "round, wall seconds with the process CPU seconds in brackets (the CPU is shared: CPU "
        "seconds are the steadier comparison at 1 thread). err: max |ours - MSST| / max |MSST| "
        "(fp32). SNR: ours under bf16 autocast against ours in fp32.",
        "",
        "| config | samples | threads | MSST fp32 (s) | ours fp32 (s) | ours / MSST wall (CPU) "
        "| ours bf16 (s) | bf16 / MSST fp32 wall (CPU) | err | bf16 SNR per stem (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        wall = {k: min(v) for k, v in row["times_s"].items()}
        cpu = {k: min(v) for k, v in row["cpu_s"].items()}
        lines.append(
            f"| {row['config']} | {row['samples']} | {row['threads']} "
            f"| {wall['msst']:.1f} ({cpu['msst']:.1f}) | {wall['ours']:.1f} ({cpu['ours']:.1f}) "
            f"| {wall['ours'] / wall['msst']:.2f}x ({cpu['ours'] / cpu['msst']:.2f}x) "
            f"| {wall['ours_bf16']:.1f} ({cpu['ours_bf16']:.1f}) "
            f"| {wall['ours_bf16'] / wall['msst']:.2f}x ({cpu['ours_bf16'] / cpu['msst']:.2f}x) "
            f"| {row['rel_err_vs_msst']:.1e} "
            f"| {', '.join(f'{s:.1f}' for s in row['bf16_snr_db'])} |"
        )
    lines += [
        "",
        "Command (one run per config here, `--merge` keeping the other rows): `python3 "
        "tools/bench_msst_roformer.py --msst MSST_CHECKOUT --configs CONFIG --threads 1 2 "
        f"--rounds 3 --merge`. CPU: {args.cpu}, 2 cores shared with other jobs (load average "
        "per row in the JSON, with process CPU seconds beside the wall times); "
        f"torch {torch.__version__}.",
    ]
    return lines


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--msst", type=Path, required=True, help="MSST checkout")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, help="chunk length instead of the config's")
    parser.add_argument("--out", type=Path, default=REPO / "tools/results/bench_msst_roformer.md")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other rows of an earlier report"
    )
    args = parser.parse_args()
    args.cpu = cpu_name()
    previous = args.out.with_suffix(".json")
    rows: list[dict[str, Any]] = []
    if args.merge and previous.exists():  # keep the rows of earlier runs not redone here
        redone = {(name, threads) for name in args.configs for threads in args.threads}
        rows = [
            r for r in json.loads(previous.read_text()) if (r["config"], r["threads"]) not in redone
        ]

    def done(row: dict[str, Any]) -> None:  # rewrite the report after every row
        rows.append(row)
        write_report(args.out, report(rows, args), rows)

    for name in args.configs:
        run(name, args, done)


if __name__ == "__main__":
    main()
