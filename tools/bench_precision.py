#!/usr/bin/env python3
"""``--precision bf16`` against fp32, per model: speed and SNR of the stems on real songs.

Every architecture at its released size with seeded random weights (the official weights cannot
be downloaded here; rounding error depends on the sizes and the signal path, which are the
released ones), separated through the ``Separator`` (the CLI's engine) in fp32 and in bf16, on
``--seconds`` of each song. SNR per stem = 10 log10(|fp32|^2 / |bf16 - fp32|^2). Each model
runs in its own process, fp32 first, then bf16, each timed after one warm-up chunk.

    python3 tools/bench_precision.py --seconds 20 --threads 2 --out tools/results/bench_precision.md
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench_separate import write_report

SHARED = Path(__file__).resolve().parents[2] / "shared"
SONGS = SHARED / "eval-data/full-songs/librosa-data"
DEFAULT_SONGS = [
    SONGS / "Kevin_MacLeod_-_Vibe_Ace.hq.ogg",
    SONGS / "Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg",
]
MODELS = ["htdemucs", "hdemucs", "demucs_v2", "tasnet"]


def build(name: str) -> Any:
    """The released structure of ``name`` with seeded random weights."""
    import torch

    torch.manual_seed(0)
    sources = ["drums", "bass", "other", "vocals"]
    if name == "demucs_v2":
        from demucs_rr.models.demucs_v2 import demucs_v2

        return demucs_v2("demucs")
    if name == "tasnet":
        from demucs_rr.models.tasnet import ConvTasNet

        return ConvTasNet(sources=sources)
    index = json.loads((SHARED / "fixtures/official/keys/index.json").read_text())
    kwargs = dict(
        index["v4_htdemucs" if name == "htdemucs" else "v3_hdemucs"]["constructor_kwargs"]
    )
    segment = kwargs["segment"]
    if isinstance(segment, dict):
        kwargs["segment"] = Fraction(segment["numerator"], segment["denominator"])
    if name == "htdemucs":
        from demucs_rr.models.htdemucs import HTDemucs

        return HTDemucs(**kwargs)
    from demucs_rr.models.hdemucs import HDemucs

    return HDemucs(**kwargs)


def worker(name: str, songs: list[str], seconds: float, threads: int) -> dict[str, Any]:
    """Separate every song in fp32 and bf16 with model ``name``; times and SNRs."""
    import torch

    from demucs_rr.audio import load_for_model
    from demucs_rr.separate.api import Separator

    torch.set_num_threads(threads)
    model = build(name).eval()
    result: dict[str, Any] = {"model": name, "songs": {}, "fp32_s": 0.0, "bf16_s": 0.0}
    seps = {p: Separator(model, device="cpu", precision=p) for p in ("fp32", "bf16")}
    for song in songs:
        mix, _ = load_for_model(song, model.samplerate, model.audio_channels)
        start = int(30 * model.samplerate)
        mix = mix[:, start : start + int(seconds * model.samplerate)]
        out = {}
        for precision, sep in seps.items():
            sep.separate_tensor(mix[:, : model.samplerate], model.samplerate)  # warm-up
            begin = time.perf_counter()
            out[precision] = sep.separate_tensor(mix, model.samplerate)
            result[f"{precision}_s"] += time.perf_counter() - begin
        snr = {}
        for stem, ref in out["fp32"].items():
            err = float((out["bf16"][stem].double() - ref.double()).pow(2).sum())
            snr[stem] = 10 * math.log10(float(ref.double().pow(2).sum()) / max(err, 1e-300))
        result["songs"][Path(song).name] = snr
    return result


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"# bf16 vs fp32 per model: {args.seconds:g} s of each of {len(args.songs)} real songs, "
        f"CPU, {args.threads} threads",
        "",
        "Released structures, seeded random weights; `Separator` (the CLI's engine), default "
        "segment, overlap 0.25, shifts 0. SNR of the bf16 stems against the fp32 stems.",
        "",
        "| model | fp32 (s) | bf16 (s) | bf16 / fp32 | lowest stem SNR (dB) | per-stem SNR, "
        "first song (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lowest = min(min(s.values()) for s in r["songs"].values())
        first = next(iter(r["songs"].values()))
        per = ", ".join(f"{k} {v:.1f}" for k, v in first.items())
        lines.append(
            f"| {r['model']} | {r['fp32_s']:.1f} | {r['bf16_s']:.1f} | "
            f"{r['bf16_s'] / r['fp32_s']:.2f}x | {lowest:.1f} | {per} |"
        )
    lines += [
        "",
        f"Command: `python3 tools/bench_precision.py --seconds {args.seconds:g} --threads "
        f"{args.threads}`. Songs: " + ", ".join(Path(s).name for s in args.songs) + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--songs", nargs="*", default=[str(s) for s in DEFAULT_SONGS])
    parser.add_argument("--out", default="tools/results/bench_precision.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.songs, args.seconds, args.threads)))
        return
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(args.seconds)]
        cmd += ["--threads", str(args.threads), "--songs", *args.songs]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(
            f"{name}: fp32 {rows[-1]['fp32_s']:.1f} s, bf16 {rows[-1]['bf16_s']:.1f} s",
            file=sys.stderr,
        )
    write_report(Path(args.out), report(rows, args), rows)


if __name__ == "__main__":
    main()
