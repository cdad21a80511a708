#!/usr/bin/env python3
"""Forward pass of one chunk, ours against MSST's own model code, SCNet large and MDX23C.

The full-size structures of MSST's ``config_musdb18_scnet_large.yaml`` and
``config_musdb18_mdx23c.yaml`` (read from the MSST checkout given with ``--msst``; MSST's
Python dependencies must be importable, e.g. ml_collections), seeded random weights
(``torch.manual_seed(0)`` then MSST's constructor), copied into ours with a strict
``load_state_dict``. Input: one chunk (``audio.chunk_size``) of a real song from the shared
evaluation data (``--song``), or seeded noise when it is absent.

Per thread count, after one warm-up pass of each, ``--rounds`` rounds of: MSST fp32, ours fp32,
ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``. Reported: median and best wall
time, ours / MSST, the largest difference between the two fp32 outputs against the fixture
tolerance (1e-5 max|ref| + 1e-6), and the SNR of our bf16 output to our fp32 output per stem
(10 log10 |fp32|^2 / |bf16 - fp32|^2). The machine's load average is recorded: other work on
the cores slows both sides, so compare within a row.

    python3 tools/bench_msst_tfc.py --msst /path/to/Music-Source-Separation-Training \\
        --rounds 3 --threads 1 2 --out tools/results/bench_msst_tfc.md

The report is rewritten after every row; ``--merge`` keeps the rows of other families or
thread counts already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_separate import write_report

from demucs_rr.hub.msst_tfc import tfc_kwargs
from demucs_rr.models.registry import build_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_SONG = SHARED / "eval-data/full-songs/librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg"
CONFIGS = {
    "scnet": "configs/config_musdb18_scnet_large.yaml",
    "mdx23c": "configs/config_musdb18_mdx23c.yaml",
}


def read_msst_config(path: Path) -> dict[str, Any]:
    """An MSST YAML (``!!python/tuple`` read as a list; no other python tag)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor(
        "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
    )
    with path.open() as file:
        config: dict[str, Any] = yaml.load(file, Loader=Loader)
    return config


def build_pair(family: str, msst: Path) -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    """(config, MSST's model, ours with MSST's weights), both in eval mode."""
    config = read_msst_config(msst / CONFIGS[family])
    sys.path.insert(0, str(msst))
    torch.manual_seed(0)
    if family == "scnet":
        from models.scnet.scnet import SCNet  # MSST's

        reference = SCNet(**config["model"])
    else:
        from ml_collections import ConfigDict
        from models.mdx23c_tfc_tdf_v3 import TFC_TDF_net  # MSST's

        reference = TFC_TDF_net(ConfigDict(config))
    name, kwargs = tfc_kwargs(config, family)
    ours = build_model(name, kwargs)
    assert isinstance(ours, torch.nn.Module)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return config, reference.eval(), ours.eval()


def chunk(song: Path, length: int) -> torch.Tensor:
    """(1, 2, length) from 30 s into ``song``, or seeded noise when it is absent."""
    if song.is_file():
        import soundfile

        data, _ = soundfile.read(str(song), dtype="float32", always_2d=True)
        start = min(30 * 44100, max(len(data) - length, 0))
        audio = torch.from_numpy(data[start : start + length].T.copy())
        audio = audio[:2] if audio.size(0) >= 2 else audio.repeat(2, 1)
        return torch.nn.functional.pad(audio, (0, length - audio.size(-1)))[None]
    return torch.randn(1, 2, length, generator=torch.Generator().manual_seed(0)) * 0.1


def timed(
    model: torch.nn.Module, mix: torch.Tensor, bf16: bool = False
) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of one forward pass, and its float32 output."""
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        start, cpu = time.perf_counter(), time.process_time()
        out = model(mix)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, out.float()


def measure(
    family: str, msst: Path, song: Path, threads: list[int], rounds: int
) -> Iterator[dict[str, Any]]:
    """One row per thread count, as each is measured."""
    config, reference, ours = build_pair(family, msst)
    mix = chunk(song, config["audio"]["chunk_size"])
    for count in threads:
        torch.set_num_threads(count)
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {"msst": [], "ours": [], "ours_bf16": []}
        cpu: dict[str, list[float]] = {key: [] for key in times}
        for variant in times:  # warm-up
            timed(reference if variant == "msst" else ours, mix, variant == "ours_bf16")
        for _ in range(rounds):
            for variant in times:
                model = reference if variant == "msst" else ours
                wall, seconds, result = timed(model, mix, bf16=variant == "ours_bf16")
                times[variant].append(wall)
                cpu[variant].append(seconds)
                if variant == "msst":
                    ref = result
                elif variant == "ours":
                    out = result
                else:
                    low = result
        error = float((out - ref).abs().max())
        bound = 1e-5 * float(ref.abs().max()) + 1e-6
        noise = (low - out).square().sum(dim=(0, 2, 3))
        snr = 10 * torch.log10(out.square().sum(dim=(0, 2, 3)) / noise.clamp_min(1e-30))
        row = {
                "family": family, "threads": count, "chunk": mix.size(-1), "rounds": rounds,
                "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                "seconds": times, "cpu_seconds": cpu, "error": error, "tolerance": bound,
                "snr_db": [round(float(v), 2) for v in snr], "command": " ".join(sys.argv),
        }  # fmt: skip
        print(row, flush=True)
        yield row


def report(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "# Forward pass of one chunk: demucs_rr against MSST (CPU)",
        "",
        f"torch {torch.__version__}; best of the rounds (median in brackets), seconds of "
        "wall time, then the best process CPU seconds (all "
        "threads; less disturbed by other work on the machine); MSST at commit ccc011a, same "
        "weights, same process.",
        "",
        "| model | threads | MSST fp32 | ours fp32 | ours / MSST | ours bf16 | bf16 / MSST fp32 "
        "| CPU s: MSST, ours, bf16 (ratio) | max diff / tolerance | bf16 SNR per stem (dB) "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        best = {key: min(value) for key, value in row["seconds"].items()}
        cpu = {key: min(value) for key, value in row["cpu_seconds"].items()}
        median = {key: statistics.median(value) for key, value in row["seconds"].items()}
        name = {"scnet": "SCNet large", "mdx23c": "MDX23C MUSDB18"}[row["family"]]
        lines.append(
            f"| {name} ({row['chunk']} samples) | {row['threads']} "
            f"| {best['msst']:.2f} ({median['msst']:.2f}) | {best['ours']:.2f} "
            f"({median['ours']:.2f}) | {best['ours'] / best['msst']:.2f} "
            f"| {best['ours_bf16']:.2f} ({median['ours_bf16']:.2f}) "
            f"| {best['ours_bf16'] / best['msst']:.2f} "
            f"| {cpu['msst']:.1f}, {cpu['ours']:.1f}, {cpu['ours_bf16']:.1f} "
            f"({cpu['ours'] / cpu['msst']:.2f}, {cpu['ours_bf16'] / cpu['msst']:.2f}) "
            f"| {row['error']:.1e} / {row['tolerance']:.1e} "
            f"| {', '.join(f'{v:.1f}' for v in row['snr_db'])} "
            f"| {row['load_before']} -> {row['load_after']} |"
        )
    lines += ["", "Commands (one per row group):", ""]
    lines += [f"- `{command}`" for command in dict.fromkeys(row["command"] for row in rows)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--msst", type=Path, required=True, help="MSST checkout (ccc011a)")
    parser.add_argument("--song", type=Path, default=DEFAULT_SONG)
    parser.add_argument("--family", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("tools/results/bench_msst_tfc.md"))
    parser.add_argument(
        "--merge", action="store_true", help="keep the other rows of an existing --out report"
    )
    args = parser.parse_args()
    saved = args.out.with_suffix(".json")
    rows = json.loads(saved.read_text())["rows"] if args.merge and saved.is_file() else []
    for family in args.family:
        for row in measure(family, args.msst, args.song, args.threads, args.rounds):
            key = (row["family"], row["threads"])
            rows = [old for old in rows if (old["family"], old["threads"]) != key] + [row]
            rows.sort(key=lambda item: (list(CONFIGS).index(item["family"]), item["threads"]))
            write_report(args.out, report(rows), {"rows": rows, "numpy": np.__version__})


if __name__ == "__main__":
    main()
