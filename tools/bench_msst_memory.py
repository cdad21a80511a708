#!/usr/bin/env python3
"""Peak memory of the whole process against track length, demucs_rr and MSST (CPU).

The target (peak RSS of a 30-minute song <= 1.2x that of a 3-minute one) is a property of the
separation loop, not of the network's width: MSST's ``demix`` holds the whole decoded track and
two full-length float32 accumulators (sources x channels x samples), while a streaming engine
holds a few chunks. So by default each family is measured with a reduced-width network of the
same config: same chunk size, same STFT, same number of stems and the same ``inference``
section (overlap, batch), only the widths of the layers reduced (``REDUCED`` below; the JSON
records the exact changes). ``--full`` uses the full-size structure instead (the same numbers
plus the weights and activations of the big model; hours on a CPU, minutes on a GPU).

For each length (``--minutes``, default 3 and 30: the real song looped), each side runs once
in fp32 (MSST ``inference.py``, ``python -m demucs_rr separate``) and reports the peak RSS of
its process (``os.wait4``), wall and CPU seconds and the ``uptime`` around it.

    python3 tools/bench_msst_memory.py --msst /path/to/MSST --msst-python VENV/bin/python \\
        --config viperx_bs_roformer_ep_317 --threads 2 --work /tmp/msst-memory
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from bench_separate import write_report
from msst_whole import (
    MODEL_TYPES,
    REPO,
    SONG,
    git_head,
    make_checkpoint,
    measure,
    msst_command,
    ours_command,
    parse_value,
    write_config,
    write_song,
)

REDUCED: dict[str, dict[str, Any]] = {
    "bs_roformer": {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "mlp_expansion_factor": 1},
    "mel_band_roformer": {
        "dim": 32,
        "depth": 1,
        "heads": 2,
        "dim_head": 16,
        "mlp_expansion_factor": 1,
    },  # fmt: skip
    "scnet": {"dims": [4, 8, 16, 32], "num_dplayer": 2},
    "mdx23c": {"num_channels": 16, "growth": 8, "num_blocks_per_scale": 1},
}
"""Layer widths changed for the reduced-width runs (the parity fixtures' sizes)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--msst", type=Path, required=True, help="MSST checkout (commit ccc011a)")
    p.add_argument("--msst-python", required=True, help="Python with MSST's requirements")
    p.add_argument("--config", choices=sorted(MODEL_TYPES), default="viperx_bs_roformer_ep_317")
    p.add_argument("--full", action="store_true", help="full-size network (no width reduction)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="further model: changes (after the reduction)")  # fmt: skip
    p.add_argument("--minutes", type=float, nargs="+", default=[3.0, 30.0])
    p.add_argument("--sides", nargs="+", choices=["ours", "msst"], default=["ours", "msst"])
    p.add_argument("--song", type=Path, default=SONG)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, required=True, help="scratch folder (outside the repo)")
    p.add_argument("--out", type=Path, default=REPO / "tools/results/bench_msst_memory.md")
    p.add_argument("--merge", action="store_true", help="keep the other configs' rows of --out")
    return p.parse_args()


def run_length(
    args: argparse.Namespace, minutes: float, model_type: str, work: Path
) -> dict[str, Any]:
    """Both sides on ``minutes`` of audio; their runs (outputs deleted afterwards)."""
    song_dir = work / f"input_{minutes:g}min"
    song = write_song(args.song, 0.0, minutes * 60, song_dir / "song.wav")
    config, ckpt = work / "model.yaml", work / "model.ckpt"
    runs = {}
    for side in args.sides:
        out = work / f"out_{side}_{minutes:g}min"
        if side == "msst":
            cmd = msst_command(args.msst_python, args.msst, model_type, config, ckpt, song_dir, out)
            cwd = args.msst
        else:
            cmd = ours_command(config, ckpt, song, out, args.threads, "fp32")
            cwd = REPO
        run = measure(side, cmd, args.threads, work / f"{side}_{minutes:g}min.log", cwd)
        if run.returncode != 0:
            raise SystemExit(f"{side} failed on {minutes:g} min (log in {work})")
        runs[side] = run.__dict__
        shutil.rmtree(out, ignore_errors=True)  # stems of a 30-minute song: gigabytes
    return runs


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| config | network | threads | side | " + " | ".join(
            f"{m:g} min: peak RSS MiB, wall s (CPU s)" for m in rows[0]["minutes"]
        ) + " | RSS ratio longest / shortest | load before each run |",
        "|---|---|---|---|" + "---|" * len(rows[0]["minutes"]) + "---|---|",
    ]  # fmt: skip
    for row in rows:
        for side in row["sides"]:
            runs = [row["runs"][f"{m:g}"][side] for m in row["minutes"]]
            cells = " | ".join(
                f"{r['peak_rss_mib']:.0f}, {r['wall_s']:.0f} ({r['cpu_s']:.0f})" for r in runs
            )
            ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
            loads = "; ".join(r["load_before"].split("load average:")[-1].strip() for r in runs)
            lines.append(
                f"| {row['config']} | {row['network']} | {row['threads']} | {side} | {cells} "
                f"| {ratio:.2f}x | {loads} |"
            )
    return lines


def main() -> None:
    args = parse_args()
    args.work = args.work.resolve()
    model_type = MODEL_TYPES[args.config]
    changes = {} if args.full else dict(REDUCED[model_type])
    changes.update({k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)})
    work = args.work / (args.config + ("_full" if args.full else "_reduced"))
    write_config(args.config, changes, work / "model.yaml")
    params = make_checkpoint(
        args.msst_python, args.msst, model_type, work / "model.yaml", args.seed, work / "model.ckpt"
    )
    network = "full size" if not changes else "reduced: " + ", ".join(
        f"{k}={v}" for k, v in changes.items()
    )  # fmt: skip
    row: dict[str, Any] = {
        "config": args.config, "network": f"{network} ({params:,} params)", "changes": changes,
        "threads": args.threads, "minutes": args.minutes, "sides": args.sides,
        "engine": git_head(), "runs": {},
    }  # fmt: skip
    for minutes in args.minutes:
        row["runs"][f"{minutes:g}"] = run_length(args, minutes, model_type, work)
    rows = []
    if args.merge and args.out.with_suffix(".json").exists():
        old = json.loads(args.out.with_suffix(".json").read_text())["rows"]
        rows = [r for r in old if (r["config"], r["network"]) != (row["config"], row["network"])]
    rows.append(row)
    lines = [
        "# Peak memory against track length: `python -m demucs_rr separate` vs MSST (CPU, fp32)",
        "",
        "Whole processes, peak RSS from `os.wait4`; the song looped to each length; same chunk "
        "size, STFT and `inference` section as the released config, layer widths as stated "
        "(see the script's docstring for why). The `engine` field of the JSON names the "
        "demucs_rr commit that ran.",
        "",
        *table(rows),
        "",
        "Command: `python3 tools/bench_msst_memory.py --msst MSST --msst-python PY --config "
        "CONFIG --threads N --work DIR --merge` (`--full` for the full-size network).",
    ]
    write_report(args.out, lines, {"rows": rows})


if __name__ == "__main__":
    main()
