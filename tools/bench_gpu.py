#!/usr/bin/env python3
"""Songs per hour on one device: demucs_rr ``separate`` (batched chunks, bf16/fp16) vs the
official ``demucs==4.1.0`` CLI, same full-size HTDemucs weights, in one run.

Meant for a machine with a GPU (``--device cuda``); ``--device cpu`` runs the same steps (a dry
run of the script). The official side needs a benchmark-only venv (see ``bench_cli.py``)::

    python3 tools/bench_gpu.py --official /tmp/bench-official/bin/python --device cuda \\
        --songs 8 --seconds 180

Steps: the first ``--seconds`` of a real song written ``--songs`` times into a folder (the
library); seeded full-size HTDemucs exported as an official package (``bench_cli.prepare`` /
``export_official``); then, each as its own process timed from start to exit, the official CLI
on the whole library (its default: one chunk at a time, fp32) and ``demucs-rr separate`` on the
whole library for every ``--batch-sizes`` x ``--precisions`` combination; songs per hour =
songs / wall time x 3600, speed-up against the official run. Stems of our fp32 run are compared
with the official stems of the first song (parity, after the documented mean convention) and
each reduced-precision run's stems with our fp32 stems (SNR). Results go to
``tools/results/bench_gpu_{device}.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_cli import _export, prepare  # noqa: E402
from bench_hybrid import DEFAULT_SONG, SOURCES  # noqa: E402
from bench_separate import write_report  # noqa: E402


def _timed(cmd: list[str], threads: int) -> float:
    """Wall seconds of ``cmd`` as its own process; exits with its stderr when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _library(work: Path, song: Path, seconds: float, count: int) -> list[Path]:
    """``count`` copies of the first ``seconds`` of ``song`` in ``work/library``."""
    prepare(work, song, seconds, "song")
    folder = work / "library"
    folder.mkdir(exist_ok=True)
    paths = [folder / f"song{index:03d}.wav" for index in range(count)]
    for path in paths:
        shutil.copyfile(work / "song.wav", path)
    return paths


def _stems(folder: Path) -> Any:
    import numpy as np
    import soundfile

    return np.stack([soundfile.read(folder / f"{s}.wav", dtype="float64")[0] for s in SOURCES])


def _quality(work: Path, runs: list[dict[str, Any]]) -> None:
    """Parity of our fp32 run with the official stems, SNR of the others vs our fp32 (song 0)."""
    import numpy as np
    import soundfile

    ref_run = next(r for r in runs if r["side"] == "ours" and r["precision"] == "fp32")
    ours = _stems(Path(ref_run["out"]) / "htbench" / "song000")
    official = _stems(work / "out-official" / "htbench" / "song000")
    mix = soundfile.read(work / "library" / "song000.wav", dtype="float64")[0]
    mean = float(mix.mean(1).mean())
    diff = np.abs((ours - mean / len(SOURCES)) - (official - mean)).max()
    ref_run["parity_max_abs"] = float(diff)
    ref_run["parity_tol"] = float(1e-4 * np.abs(official).max())  # GPU / full-size: 1e-4 rel
    for run in runs:
        if run["side"] == "ours" and run is not ref_run:
            est = _stems(Path(run["out"]) / "htbench" / "song000")
            err = ((est - ours) ** 2).sum(axis=(1, 2))
            if not err.any():
                run["identical"] = True  # e.g. fp32 with another batch size
                continue
            snr = 10 * np.log10((ours**2).sum(axis=(1, 2)) / np.maximum(err, 1e-300))
            run["snr_db"] = dict(zip(SOURCES, snr.round(2).tolist(), strict=True))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """All runs on one library; returns the results."""
    paths = _library(work, Path(args.song), args.seconds, args.songs)
    _export(args.official, work)
    common = ["-d", args.device, "--shifts", "0", "--overlap", "0.25", "--float32"]
    common += ["--clip-mode", "none"]
    runs: list[dict[str, Any]] = []
    out = work / "out-official"
    cmd = [args.official, "-m", "demucs.separate", "--repo", str(work / "repo"), "-n", "htbench"]
    seconds = _timed([*cmd, *common, "-o", str(out), *map(str, paths)], args.threads)
    runs.append({"side": "official", "batch": 1, "precision": "fp32", "seconds": seconds})
    print(f"official: {seconds:.1f} s", file=sys.stderr)
    for precision in args.precisions:
        for batch in args.batch_sizes:
            out = work / f"out-{precision}-b{batch}"
            cmd = [sys.executable, "-m", "demucs_rr", "--threads", str(args.threads)]
            cmd += ["separate", "-q", "-n", str(work / "repo" / "htbench.th")]
            cmd += ["--precision", precision, "-b", str(batch), *common, "-o", str(out)]
            seconds = _timed([*cmd, *map(str, paths)], args.threads)
            runs.append(
                {
                    "side": "ours",
                    "batch": batch,
                    "precision": precision,
                    "seconds": seconds,
                    "out": str(out),
                }
            )
            print(f"ours {precision} batch {batch}: {seconds:.1f} s", file=sys.stderr)
    _quality(work, runs)
    for r in runs:
        r["songs_per_hour"] = args.songs / r["seconds"] * 3600
        r["speedup"] = runs[0]["seconds"] / r["seconds"]
        r.pop("out", None)
    return {"device": args.device, "songs": args.songs, "seconds_each": args.seconds, "runs": runs}


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown lines of ``result``."""
    lines = [
        f"# Songs per hour on {result['device']}: `separate` vs the official demucs 4.1.0 CLI",
        "",
        f"{result['songs']} songs of {result['seconds_each']:g} s (one real song, copied), "
        "full-size HTDemucs (release structure, seeded random weights), shifts 0, overlap "
        "0.25, float32 wav; each run one process over the whole library, start to exit.",
        "",
        "| side | precision | batch | time (s) | songs per hour | vs official | quality |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if "parity_max_abs" in r:
            quality = f"max abs {r['parity_max_abs']:.1e} vs official (tol {r['parity_tol']:.1e})"
        elif "snr_db" in r:
            quality = "SNR vs fp32 " + ", ".join(f"{k} {v:.1f}" for k, v in r["snr_db"].items())
        elif r.get("identical"):
            quality = "same stems as fp32 batch 1"
        else:
            quality = "-"
        lines.append(
            f"| {r['side']} | {r['precision']} | {r['batch']} | {r['seconds']:.1f} | "
            f"{r['songs_per_hour']:.0f} | {r['speedup']:.2f}x | {quality} |"
        )
    lines += ["", f"Command: `python3 tools/bench_gpu.py {' '.join(sys.argv[1:])}`."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, metavar="PYTHON")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--song", default=str(DEFAULT_SONG))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="report path (default tools/results/bench_gpu_DEVICE.md)")
    args = parser.parse_args()
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")  # the reference of the quality columns
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        result = run(args, Path(tmp))
    out = Path(args.out or TOOLS / "results" / f"bench_gpu_{args.device.split(':')[0]}.md")
    write_report(out, report(result, args), result)


if __name__ == "__main__":
    main()
