#!/usr/bin/env python3
"""Leaderboard benchmark: a whole MUSDB18-sized test set scored from estimate files, and our
BSSEval v4 side by side with museval on a subset.

Run on the output of tools/make_leaderboard_set.py (or a real MUSDB18-HQ root holding
``musdb/test`` and a tool's stems in ``estimates/<name>``):

1. ``demucs-rr evaluate --estimates`` on every track, full metrics (SDR/ISR/SIR/SAR + global
   SDR), as a user runs it (one worker process per core, decoding included): wall and CPU time;
2. the same with ``--sdr-only`` (museval SDR + global SDR), twice: the second run finds in the
   page cache what the first left there (the whole set when the machine's memory holds it);
3. per track of the subset (the tracks closest to the mean length), in this process with one
   thread: museval 0.4.1 (``museval.evaluate``, the MUSDB18 call) and ours on the same decoded
   samples, alternately; time of each, the ratio, and the largest difference of any frame
   value (after museval's storage rounding).

The load average (``uptime``) is recorded with every measurement: on a shared machine absolute
times vary; the side-by-side ratios are the figures to compare.

    python tools/bench_leaderboard.py /tmp/lb --museval-tracks 2
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the side-by-side part is single-threaded on both sides

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_separate import write_report  # noqa: E402

STEMS = ("drums", "bass", "other", "vocals")
RUNS = {
    "full": "full BSSEval v4 + global SDR",
    "sdr": "SDR-only + global",
    "sdr_again": "SDR-only + global, again (page cache as the run before left it)",
}
METRICS = ("SDR", "ISR", "SIR", "SAR")


def uptime() -> str:
    """``uptime`` output (load averages over 1, 5, 15 minutes)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed_command(cmd: list[str]) -> dict:
    """Run ``cmd``: wall and CPU seconds (children), load before and after."""
    before, usage = uptime(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        "command": " ".join(cmd),
        "wall_s": wall,
        "cpu_s": cpu,
        "uptime_before": before,
        "uptime_after": uptime(),
    }


def results_timing(out: Path) -> dict:
    """Sums over the track JSONs: audio seconds, decode seconds, per-track wall seconds."""
    audio = decode = wall = 0.0
    count = 0
    for path in (out / "test").glob("*.json"):
        extra = json.loads(path.read_text())["demucs_rr"]
        audio += extra["seconds_audio"]
        decode += extra.get("seconds_decode", 0.0)
        wall += extra["seconds_wall"]
        count += 1
    return {"tracks": count, "audio_s": audio, "decode_s": decode, "track_wall_s": wall}


def evaluate_all(root: Path, estimates: Path, out: Path, sdr_only: bool) -> dict:
    cmd = [sys.executable, "-m", "demucs_rr", "evaluate", "--musdb", str(root / "musdb")]
    cmd += ["--is-wav", "--estimates", str(estimates), "-o", str(out), "--overwrite"]
    cmd += ["--no-plot", "-q"] + (["--sdr-only"] if sdr_only else [])
    run = timed_command(cmd)
    return {**run, **results_timing(out)}


def _read(path: Path) -> np.ndarray:
    import soundfile

    return soundfile.read(path, dtype="float32", always_2d=True)[0].T


def side_by_side(root: Path, estimates: Path, name: str, repeats: int) -> dict:
    """museval and ours, one thread each, on one track's decoded samples."""
    import museval

    from demucs_rr.evaluate.metrics import score_track

    folder = root / "musdb" / "test" / name
    # planar (S, C, T), the layout `evaluate` reads tracks into (data.tracks.read_stems); a stack
    # of the decoder's (C, T) views would be channel-interleaved and cost a transposition
    refs = torch.from_numpy(np.stack([_read(folder / f"{s}.wav") for s in STEMS])).contiguous()
    ests = torch.from_numpy(np.stack([_read(estimates / name / f"{s}.wav") for s in STEMS]))
    ests = ests.contiguous()
    torch.set_num_threads(1)
    row: dict = {"track": name, "seconds": refs.shape[-1] / 44100, "ours_s": [], "ours_cpu_s": []}
    row["uptime_before"] = uptime()

    def ours_once() -> object:
        start, cpu = time.perf_counter(), time.process_time()
        out = score_track(name, list(STEMS), refs, ests, 44100)
        row["ours_cpu_s"].append(time.process_time() - cpu)
        row["ours_s"].append(time.perf_counter() - start)
        return out

    for _ in range(repeats - 1):
        ours_once()
    r64 = np.ascontiguousarray(refs.double().permute(0, 2, 1).numpy())  # (S, T, C) as museval's
    e64 = np.ascontiguousarray(ests.double().permute(0, 2, 1).numpy())
    start, cpu = time.perf_counter(), time.process_time()
    theirs = museval.evaluate(r64, e64, win=44100, hop=44100)
    row["museval_cpu_s"] = time.process_time() - cpu
    row["museval_s"] = time.perf_counter() - start
    ours = ours_once()  # once more after museval: both sides see the same load
    row["uptime_after"] = uptime()
    row["ratio"] = row["museval_s"] / min(row["ours_s"])
    row["cpu_ratio"] = row["museval_cpu_s"] / min(row["ours_cpu_s"])
    row["max_abs_diff_db"] = _max_diff(ours.frames, dict(zip(METRICS, theirs, strict=True)))
    return row


def _max_diff(ours: dict, theirs: dict) -> dict:
    """Largest |ours - museval| per metric after museval's storage rule (5 decimals, inf->NaN);
    NaN frames must match."""
    out = {}
    for m in METRICS:
        want = np.where(np.isinf(theirs[m]), np.nan, np.round(theirs[m], 5))
        if not np.array_equal(np.isnan(want), np.isnan(ours[m])):
            out[m] = float("inf")
            continue
        diff = np.abs(ours[m] - want)
        out[m] = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
    return out


def report(result: dict) -> list[str]:
    env, lines = result["env"], []
    lines += [
        "# Leaderboard benchmark: the whole test set from estimate files",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, numpy "
        f"{env['numpy']}. Dataset: {result['tracks']} tracks, {result['hours']:.2f} h of 4-stem "
        f"44.1 kHz stereo 16-bit wav ({result['gigabytes']:.1f} GB of references and "
        "estimates read per run). Shared machine: every measurement carries its load.",
        "",
        "| run | wall | CPU (all processes) | per-track decode (sum) | tracks "
        "| load before -> after |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in RUNS.items():
        run = result.get(key)
        if run:
            lines.append(
                f"| {label} | {run['wall_s']:.1f} s | {run['cpu_s']:.1f} s | "
                f"{run['decode_s']:.1f} s | {run['tracks']} | {_load(run['uptime_before'])} -> "
                f"{_load(run['uptime_after'])} |"
            )
    lines += ["", "Commands:", ""] + [f"    {result[k]['command']}" for k in RUNS if result.get(k)]
    lines += [
        "",
        "## Side by side with museval, one thread, same decoded samples",
        "",
        f"Ours runs {result['repeats']} times, before and after museval; best kept. Wall time "
        "and CPU time (of this one-thread process: less sensitive to other jobs on the machine).",
        "",
        "| track | length | museval 0.4.1 wall / CPU | ours wall / CPU | ratio wall / CPU "
        "| max abs diff SDR / ISR / SIR / SAR (dB) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["side_by_side"]:
        diff = " / ".join(f"{row['max_abs_diff_db'][m]:.1e}" for m in METRICS)
        cpu = row.get("museval_cpu_s", float("nan")), min(row.get("ours_cpu_s") or [float("nan")])
        lines.append(
            f"| {row['track']} | {row['seconds']:.0f} s | {row['museval_s']:.1f} / {cpu[0]:.1f} s "
            f"| {min(row['ours_s']):.2f} / {cpu[1]:.2f} s | {row['ratio']:.1f}x / "
            f"{row.get('cpu_ratio', float('nan')):.1f}x | {diff} | "
            f"{_load(row['uptime_before'])} -> {_load(row['uptime_after'])} |"
        )
    return lines


def _load(text: str) -> str:
    return text.split("load average:")[-1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="output of tools/make_leaderboard_set.py")
    parser.add_argument("--estimates", default="leak", help="estimates/<name> (default leak)")
    parser.add_argument("--museval-tracks", type=int, default=2, help="side-by-side tracks")
    parser.add_argument("--repeats", type=int, default=2, help="runs of ours per track")
    parser.add_argument(
        "--skip-full",
        action="store_true",
        help="only the side-by-side part (the whole-set runs of an earlier report are kept)",
    )
    parser.add_argument("--out", default="tools/results/bench_leaderboard.md")
    parser.add_argument("--work", type=Path, help="results folders (default ROOT/bench)")
    args = parser.parse_args()
    root, estimates = args.root.resolve(), (args.root / "estimates" / args.estimates).resolve()
    work = args.work or root / "bench"
    names = sorted(p.name for p in (root / "musdb" / "test").iterdir() if p.is_dir())
    files = [p for n in names for p in (root / "musdb" / "test" / n).glob("[!m]*.wav")]
    files += [p for n in names for p in (estimates / n).glob("*.wav")]
    seconds = sum(_frames(root / "musdb" / "test" / n / "drums.wav") for n in names) / 44100
    result: dict = {
        "env": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "tracks": len(names),
        "hours": seconds / 3600,
        "gigabytes": sum(p.stat().st_size for p in files) / 1e9,
        "repeats": args.repeats,
    }
    if not args.skip_full:
        result["full"] = evaluate_all(root, estimates, work / "full", sdr_only=False)
        print(json.dumps(result["full"]), flush=True)
        for key in ("sdr", "sdr_again"):  # again: with the files the first run left cached
            result[key] = evaluate_all(root, estimates, work / key, sdr_only=True)
            print(json.dumps(result[key]), flush=True)
    elif Path(args.out).with_suffix(".json").is_file():  # keep the whole-set runs measured before
        before = json.loads(Path(args.out).with_suffix(".json").read_text())
        result.update({k: before[k] for k in RUNS if k in before})
    result["side_by_side"] = []
    lengths = {n: _frames(root / "musdb" / "test" / n / "drums.wav") for n in names}
    middle = sorted(names, key=lambda n: abs(lengths[n] - seconds * 44100 / len(names)))
    for name in sorted(middle[: args.museval_tracks]):  # the tracks of about the mean length
        row = side_by_side(root, estimates, name, args.repeats)
        print(json.dumps(row), flush=True)
        result["side_by_side"].append(row)
    write_report(Path(args.out), report(result), result)


def _frames(path: Path) -> int:
    import soundfile

    return soundfile.info(path).frames


if __name__ == "__main__":
    main()
