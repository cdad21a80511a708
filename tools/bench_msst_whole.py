#!/usr/bin/env python3
"""Whole process, demucs_rr against MSST: fp32 time, bf16 time and bf16 accuracy (CPU).

For each config (bundled MSST configs in ``demucs_rr/hub/msst/``; default: SCNet large, then
viperx BS-RoFormer ep_317), full-size structure with seeded random weights (see
``tools/msst_whole.py``), ``--seconds`` of a real song, the same thread count on both sides,
one after the other in each round:

1. ``python -m demucs_rr separate`` fp32;
2. ``python -m demucs_rr separate --precision bf16``;
3. MSST ``inference.py`` (fp32: MSST has no other precision on the CPU).

Reported: wall and CPU seconds of each process, ours / MSST (targets: fp32 <= 0.8x, bf16 <=
0.4x MSST fp32), max |ours fp32 - MSST| / max |MSST| per stem (fixture tolerance: within
``1e-5 max|MSST| + 1e-6`` everywhere), and the SNR of every bf16 stem against our fp32 stem
(target >= 40 dB). Each row records the ``uptime`` lines around each run and the demucs_rr
commit (the engine that ran: its chunking rule decides how many chunk forwards our side makes).

MSST runs with ``inference.batch_size`` set by ``--msst-batch-size`` (default 1, the setting of
MSST's own ``demix`` fixtures). At a larger batch size, MSST's ``demix`` gives every chunk of a
batch the window of the batch's last chunk (the last batch loses all its fade-outs; the first
chunk of a short track keeps its fade-in, so its first sample becomes 0/0 and then 0): the
stems then differ from ours, and from MSST at batch size 1, near the track's ends.

    python3 tools/bench_msst_whole.py --msst /path/to/MSST --msst-python VENV/bin/python \\
        --seconds 60 --threads 2 --work /tmp/msst-whole --out tools/results/bench_msst_whole.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from bench_separate import write_report
from msst_whole import (
    MODEL_TYPES,
    REPO,
    SONG,
    compare,
    git_head,
    make_checkpoint,
    measure,
    msst_command,
    ours_command,
    read_stems,
    snr_db,
    write_config,
    write_song,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--msst", type=Path, required=True, help="MSST checkout (commit ccc011a)")
    p.add_argument("--msst-python", required=True, help="Python with MSST's requirements")
    p.add_argument("--configs", nargs="+", choices=sorted(MODEL_TYPES),
                   default=["msst_scnet_large_musdb18", "viperx_bs_roformer_ep_317"])  # fmt: skip
    p.add_argument("--song", type=Path, default=SONG)
    p.add_argument("--offset", type=float, default=30.0, help="seconds into the song")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bf16", action="store_true", help="skip our bf16 run")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="runs to make")
    p.add_argument("--msst-batch-size", type=int, default=1, help="MSST inference.batch_size")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (outside the repo)")
    p.add_argument("--out", type=Path, default=REPO / "tools/results/bench_msst_whole.md")
    p.add_argument("--merge", action="store_true", help="keep the other configs' rows of --out")
    return p.parse_args()


SIDES = ("ours_fp32", "ours_bf16", "msst")
"""The runs of one round, in order."""


def bench_config(args: argparse.Namespace, name: str, song: Path) -> dict[str, Any]:
    """All rounds of one config; the measured runs and the output checks."""
    work = args.work / name
    inference = {"batch_size": args.msst_batch_size}
    model_type, _ = write_config(name, {}, work / "model.yaml", inference)
    ckpt = work / "model.ckpt"
    params = make_checkpoint(
        args.msst_python, args.msst, model_type, work / "model.yaml", args.seed, ckpt
    )
    runs: dict[str, list[dict[str, Any]]] = {"msst": [], "ours_fp32": [], "ours_bf16": []}
    sides = [s for s in SIDES if s in args.sides and not (args.no_bf16 and s == "ours_bf16")]
    for _ in range(args.rounds):
        for side in sides:
            out = work / f"out_{side}"
            if side == "msst":
                cmd = msst_command(
                    args.msst_python, args.msst, model_type, work / "model.yaml", ckpt,
                    song.parent, out,
                )  # fmt: skip
                cwd = args.msst
            else:
                precision = side.split("_")[1]
                cmd = ours_command(work / "model.yaml", ckpt, song, out, args.threads, precision)
                cwd = REPO
            run = measure(side, cmd, args.threads, work / f"{side}.log", cwd)
            runs[side].append(run.__dict__)
            if run.returncode != 0:
                raise SystemExit(f"{name}: {side} failed (log: {work / f'{side}.log'})")
    row: dict[str, Any] = {
        "config": name, "params": params, "seconds": args.seconds, "threads": args.threads,
        "runs": runs, "engine": git_head(), "msst_batch_size": args.msst_batch_size,
    }  # fmt: skip
    ours = read_stems(work / "out_ours_fp32") if runs["ours_fp32"] else {}
    if runs["msst"] and ours:
        msst = read_stems(work / "out_msst")
        row["err_vs_msst"] = compare(ours, msst)
        row["within_tolerance"] = within_tolerance(ours, msst)
    if runs["ours_bf16"] and ours:
        row["bf16_snr_db"] = snr_db(read_stems(work / "out_ours_bf16"), ours)
    return row


def within_tolerance(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> bool:
    """Every stem of ``ref`` written by us and within ``1e-5 max|ref| + 1e-6`` everywhere."""
    return all(
        name in ours
        and ours[name].shape == wanted.shape
        and bool(np.all(np.abs(ours[name] - wanted) <= 1e-5 * np.abs(wanted).max() + 1e-6))
        for name, wanted in ref.items()
    )


def _best(row: dict[str, Any], side: str, key: str) -> float | None:
    values = [r[key] for r in row["runs"].get(side, [])]
    return min(values) if values else None


def _seconds(row: dict[str, Any], side: str) -> tuple[float, float] | None:
    """Best-of-rounds (wall, CPU) seconds of one side, or None where it did not run."""
    wall, cpu = _best(row, side, "wall_s"), _best(row, side, "cpu_s")
    return (wall, cpu) if wall and cpu else None


def _pair(seconds: tuple[float, float] | None) -> str:
    return f"{seconds[0]:.1f} ({seconds[1]:.1f})" if seconds else "-"


def _ratio(ours: tuple[float, float] | None, ref: tuple[float, float] | None) -> str:
    if not (ours and ref):
        return "-"
    return f"{ours[0] / ref[0]:.2f}x ({ours[1] / ref[1]:.2f}x)"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: best-of-rounds wall (CPU) seconds and ratios, checks, load."""
    lines = [
        "| config | audio (s) | threads | MSST fp32 s (CPU) | ours fp32 s (CPU) | fp32 ratio "
        "wall (CPU) | ours bf16 s (CPU) | bf16 / MSST fp32 wall (CPU) | max err vs MSST "
        "(MSST batch; within tolerance) | bf16 SNR per stem (dB) "
        "| load before MSST run (else ours) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        msst, ours, bf16 = (_seconds(row, side) for side in ("msst", "ours_fp32", "ours_bf16"))
        err = max(row["err_vs_msst"].values()) if row.get("err_vs_msst") else float("nan")
        within = {True: "yes", False: "no", None: "?"}[row.get("within_tolerance")]
        batch = row.get("msst_batch_size", "config")
        snr = ", ".join(f"{k} {v:.1f}" for k, v in row.get("bf16_snr_db", {}).items()) or "-"
        load = next(iter(r for runs in row["runs"].values() for r in runs))["load_before"]
        lines.append(
            f"| {row['config']} | {row['seconds']:g} | {row['threads']} | {_pair(msst)} "
            f"| {_pair(ours)} | {_ratio(ours, msst)} | {_pair(bf16)} | {_ratio(bf16, msst)} "
            f"| {err:.1e} (batch {batch}; {within}) | {snr} "
            f"| {load.split('load average:')[-1].strip()} |"
        )
    return lines


def main() -> None:
    args = parse_args()
    args.work = args.work.resolve()
    song = write_song(args.song, args.offset, args.seconds, args.work / "input" / "song.wav")
    rows = []
    if args.merge and args.out.with_suffix(".json").exists():
        rows = [r for r in json.loads(args.out.with_suffix(".json").read_text())["rows"]
                if r["config"] not in args.configs]  # fmt: skip
    for name in args.configs:
        rows.append(bench_config(args, name, song))
        report(args, rows)


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    lines = [
        "# Whole process on the CPU: `python -m demucs_rr separate` vs MSST `inference.py`",
        "",
        "Full-size released structures with seeded random weights (MSST's class built after "
        "`torch.manual_seed(0)`, saved as a `.ckpt`, loaded by both), a float WAV excerpt of "
        f"{args.song.name} (from {args.offset:g} s), same thread count (`--threads` and "
        "OMP/MKL threads). Seconds: best round, wall with the process's CPU seconds (all "
        "threads) in brackets. Max err: max |ours fp32 - MSST| / max |MSST| over stems. "
        "The `engine` field of the JSON names the demucs_rr commit that ran.",
        "",
        *table(rows),
        "",
        "Command: `python3 tools/bench_msst_whole.py --msst MSST --msst-python PY "
        "--configs CONFIG --seconds S --threads N --work DIR --merge` (the `uptime` lines "
        "before and after each run, CPU seconds and peak RSS are in the JSON). Median wall "
        "of MSST runs per config: "
        + ", ".join(
            f"{r['config']} {median(x['wall_s'] for x in r['runs']['msst']):.1f} s"
            for r in rows
            if r["runs"]["msst"]
        ),
    ]
    write_report(args.out, lines, {"rows": rows})


if __name__ == "__main__":
    main()
