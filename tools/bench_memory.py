#!/usr/bin/env python3
"""Peak memory of ``demucs-rr separate`` against the track length, in one run.

Generates stereo 44.1 kHz int16 wav inputs of the given durations (written block by block, so a
3-hour file never sits in memory), saves a tiny model package (``FractionModel``, 4 stems, 0.45 s
segments, a 13-sample crop so that the engine pads chunks with real context), then separates
each input (int16 wav, clip mode ``rescale`` unless ``--clip-mode`` says otherwise) in its own
process and records that process's peak RSS (``ru_maxrss`` from ``os.wait4``) and wall time.
Inputs and stems are deleted after each run (a 3-hour input is ~1.9 GB, its stems ~7.6 GB plus
~15 GB of float32 staging for ``rescale``).

    python3 tools/bench_memory.py --minutes 3 30 180 --clip-mode clamp

``--msst DIR`` measures a band-split model instead (MSST's faded chunking): the ``model.ckpt``
and ``config.yaml`` of an MSST parity fixture case, converted to a package first.

    python3 tools/bench_memory.py --minutes 3 30 --clip-mode none \
        --msst ../shared/fixtures/msst/bs_roformer_vocals --name bench_memory_msst

Writes ``tools/results/bench_memory.md`` (and ``.json``; ``--name`` changes the file name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tools" / "results"
RATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]


def make_input(path: Path, minutes: float, block_s: int = 10) -> None:
    """Write ``minutes`` of a stereo tone-plus-noise mix as int16 wav, one block at a time."""
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with soundfile.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as handle:
        for start in range(0, total, block_s * RATE):
            n = min(block_s * RATE, total - start)
            t = (start + np.arange(n)) / RATE
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
            handle.write((tone + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))


def make_model(path: Path) -> Path:
    """Save the tiny package used for every run, from a child process: this process must stay
    smaller than the runs it measures, since a child's ``ru_maxrss`` starts from its parent's
    RSS at fork time."""
    code = (
        "import sys; from demucs_rr.hub.package import save_package; "
        "from demucs_rr.models.testing import FractionModel; "
        f"save_package(FractionModel({SOURCES!r}, [0.1, 0.2, 0.3, 0.4], segment_length=20000, "
        "crop=13), sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)
    return path


def make_msst_model(case: Path, path: Path) -> tuple[Path, int, str]:
    """Convert an MSST fixture case to a package (in a child process, as :func:`make_model`);
    returns it with the number of stem files ``separate`` writes and a description."""
    code = (
        "import sys; from pathlib import Path; from demucs_rr.hub.msst import load_msst; "
        "from demucs_rr.hub.package import save_package; case = Path(sys.argv[1]); "
        "save_package(load_msst(case / 'model.ckpt', case / 'config.yaml').build(), sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", code, str(case), str(path)], check=True, cwd=ROOT)
    meta = json.loads((case / "meta.json").read_text())
    outputs = len(meta["instruments_out"])  # a single-target model writes TARGET and no_TARGET
    return path, outputs, f"MSST fixture {case.name} ({meta['model_type']}) package"


def measure(
    model: Path, song: Path, out: Path, clip_mode: str, outputs: int = len(SOURCES)
) -> dict[str, float]:
    """Separate ``song`` in a child process; its peak RSS (MiB) and wall time (s)."""
    cmd = [sys.executable, "-m", "demucs_rr", "separate", "-q", "-n", str(model)]
    cmd += ["--clip-mode", clip_mode]
    cmd += ["-o", str(out), "-d", "cpu", str(song)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"separate failed on {song} (status {status})")
    stems = sorted(out.rglob("*.wav"))
    if len(stems) != outputs:
        raise SystemExit(f"expected {len(SOURCES)} stems, found {stems}")
    frames = soundfile.info(str(stems[0])).frames
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "frames": frames}


def _self_rss() -> float:
    """This process's own peak RSS in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TINY = "Tiny FractionModel package (4 stems, 0.45 s segments)"


def report(rows: list[dict[str, float]], command: str, clip_mode: str, what: str = TINY) -> str:
    """Markdown table with ratios to the first (shortest) input."""
    base = rows[0]["peak_rss_mib"]
    lines = [
        "# Peak memory of `separate` against track length",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. {what}, int16 wav, clip mode {clip_mode}, "
        "each run in its own "
        "process; peak RSS is `ru_maxrss` of that process.",
        "",
        "| input | peak RSS (MiB) | vs first | wall time (s) | real-time factor |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = row["minutes"] * 60
        lines.append(
            f"| {row['minutes']:g} min | {row['peak_rss_mib']:.0f} | "
            f"{row['peak_rss_mib'] / base:.2f}x | {row['wall_s']:.1f} | "
            f"{row['wall_s'] / seconds:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every duration, smallest first, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[3, 30, 180])
    parser.add_argument("--workdir", default="/tmp/demucs_rr_bench_memory")
    parser.add_argument("--name", default="bench_memory", help="results file name, no suffix")
    parser.add_argument(
        "--clip-mode",
        default="rescale",
        choices=["rescale", "clamp", "none"],
        help="rescale (default) stages float32 stems: ~4x the stem bytes on disk for a moment",
    )
    parser.add_argument("--msst", type=Path, help="an MSST fixture case folder to measure")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model, outputs, what = make_model(work / "tiny.safetensors"), len(SOURCES), TINY
    if args.msst is not None:
        model, outputs, what = make_msst_model(args.msst.resolve(), work / "msst.safetensors")
    rows = []
    print(f"bench process peak RSS before the runs: {_self_rss():.0f} MiB", flush=True)
    try:
        for minutes in sorted(args.minutes):
            song = work / f"mix_{minutes:g}min.wav"
            make_input(song, minutes)
            measured = measure(model, song, work / "out", args.clip_mode, outputs)
            row = {"minutes": minutes, **measured}
            expected = int(minutes * 60 * RATE)
            assert row["frames"] == expected, (row["frames"], expected)
            print(json.dumps(row), flush=True)
            rows.append(row)
            song.unlink()
            shutil.rmtree(work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python3 tools/bench_memory.py --minutes " + " ".join(f"{m:g}" for m in args.minutes)
    command += f" --clip-mode {args.clip_mode}"
    if args.msst is not None:
        command += f" --msst {args.msst}"
    if args.name != "bench_memory":
        command += f" --name {args.name}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(report(rows, command, args.clip_mode, what))
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(report(rows, command, args.clip_mode, what))


if __name__ == "__main__":
    main()
