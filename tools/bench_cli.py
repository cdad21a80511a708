#!/usr/bin/env python3
"""Whole-process ``separate`` against the official ``demucs==4.1.0`` CLI, same weights and song.

Used by ``tools/bench_separate.py --official PYTHON``; ``PYTHON`` is the interpreter of a
benchmark-only virtual environment outside the repository with the official package, e.g.::

    python3 -m venv --system-site-packages /tmp/bench-official
    /tmp/bench-official/bin/pip install --no-deps demucs==4.1.0 einops openunmix dora-search
    /tmp/bench-official/bin/pip install sphn huggingface-hub

Steps:

1. prepare: the first ``--seconds`` of a real song as a 16-bit wav; full-size HTDemucs (release
   structure, seeded random weights: speed does not depend on the values); the official
   interpreter exports them as an official package ``REPO/htbench.th`` (``serialize_model``);
2. run, each in its own process, timed from start to exit (Python start-up, imports, model
   load, decoding, separation, writing): the official CLI
   (``python -m demucs.separate --repo REPO -n htbench``) and ``demucs-rr separate -n
   REPO/htbench.th`` in fp32 and bf16; same segment (the model's), overlap 0.25, shifts 0,
   float32 wav output without clipping, so that the stems can be compared; interleaved, best of
   ``--repeat``; peak RSS per process from ``wait4``;
3. compare: ours fp32 vs official after the documented mean convention (official adds the whole
   mean to each stem, demucs_rr ``mean / S``), against the parity tolerance
   ``1e-5 * max|ref| + 1e-6``; bf16 vs our fp32 as SNR per stem, on every ``--snr-songs`` song.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_hybrid import DEFAULT_SONG, RELEASE_KWARGS, SOURCES  # noqa: E402

SONGS = DEFAULT_SONG.parent
SNR_SONGS = [
    DEFAULT_SONG,
    SONGS / "Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg",
    SONGS / "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).hq.ogg",
]


def prepare(work: Path, song: Path, seconds: float, name: str) -> dict[str, Any]:
    """Write ``name.wav`` (first ``seconds`` of ``song``) and ``state.th`` (seeded HTDemucs)."""
    import soundfile
    import torch

    from demucs_rr.audio import load_for_model
    from demucs_rr.models.htdemucs import HTDemucs

    mix, _ = load_for_model(song, 44100, 2)
    mix = mix[:, : int(seconds * 44100)]
    soundfile.write(work / f"{name}.wav", mix.T.numpy(), 44100, subtype="PCM_16")
    if not (work / "state.th").exists():
        torch.manual_seed(0)
        torch.save(HTDemucs(**RELEASE_KWARGS).state_dict(), work / "state.th")
    return {"samples": int(mix.shape[-1])}


def export_official(work: Path) -> None:
    """(Official interpreter) ``state.th`` -> official package ``repo/htbench.th``."""
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import serialize_model
    from omegaconf import OmegaConf

    model = HTDemucs(**{**RELEASE_KWARGS, "segment": Fraction(39, 5)})
    model.load_state_dict(torch.load(work / "state.th", weights_only=True))
    (work / "repo").mkdir(exist_ok=True)
    package = serialize_model(model, OmegaConf.create({}), half=False)
    torch.save(package, work / "repo" / "htbench.th")


def _command(side: str, python: str, work: Path, threads: int) -> list[str]:
    """Program and model arguments of ``side`` (the options shared by both are added later)."""
    if side == "official":
        return [python, "-m", "demucs.separate", "--repo", str(work / "repo"), "-n", "htbench"]
    precision = side.split()[-1]
    return [sys.executable, "-m", "demucs_rr", "--threads", str(threads), "separate", "-q"] + [
        "--overwrite",
        "-n",
        str(work / "repo" / "htbench.th"),
        "--precision",
        precision,
    ]


def run_side(side: str, python: str, work: Path, song: str, threads: int) -> dict[str, float]:
    """Run one CLI as its own process; wall seconds and peak RSS (MiB) of that process."""
    out = work / "out" / side.replace(" ", "-")
    cmd = _command(side, python, work, threads)
    cmd += ["-d", "cpu", "--shifts", "0", "--overlap", "0.25", "--float32"]
    cmd += ["--clip-mode", "none", "-o", str(out), str(work / f"{song}.wav")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{side} failed:\n{stderr[-3000:]}")
    result = {"seconds": elapsed, "peak_rss_mib": usage.ru_maxrss / 1024}
    print(f"{song} {side}: {elapsed:.1f} s, {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    return result


def _stems(work: Path, side: str, song: str) -> Any:
    import numpy as np
    import soundfile

    folder = work / "out" / side.replace(" ", "-") / "htbench" / song
    return np.stack([soundfile.read(folder / f"{s}.wav", dtype="float64")[0] for s in SOURCES])


def compare(work: Path, song: str, official: bool) -> dict[str, Any]:
    """Parity of ours fp32 with the official CLI, and SNR of bf16 vs fp32 per stem."""
    import numpy as np
    import soundfile

    ours = _stems(work, "ours fp32", song)
    bf16 = _stems(work, "ours bf16", song)
    err = ((bf16 - ours) ** 2).sum(axis=(1, 2))
    snr = 10 * np.log10((ours**2).sum(axis=(1, 2)) / np.maximum(err, 1e-300))
    result: dict[str, Any] = {"snr_bf16_db": dict(zip(SOURCES, snr.round(2).tolist(), strict=True))}
    if official:
        ref = _stems(work, "official", song)
        mix = soundfile.read(work / f"{song}.wav", dtype="float64")[0]
        mean = float(mix.mean(1).mean())
        diff = np.abs((ours - mean / len(SOURCES)) - (ref - mean)).max()
        peak = float(np.abs(ref).max())
        result |= {"max_abs": float(diff), "max_ref": peak, "tol": 1e-5 * peak + 1e-6}
    return result


def _export(python: str, work: Path) -> None:
    cmd = [python, __file__, "--export", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"official export failed:\n{done.stderr[-3000:]}")


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    """Entry point of ``bench_separate.py --official PYTHON``: returns the results."""
    sides = ["official", "ours fp32", "ours bf16"]
    songs = [Path(s) for s in args.snr_songs] if args.snr_songs else SNR_SONGS
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        main_song = Path(args.song) if args.song else songs[0]
        info = prepare(work, main_song, args.seconds, "song")
        _export(args.official, work)
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(max(1, args.repeat)):
            for side in sides:
                runs[side].append(run_side(side, args.official, work, "song", args.threads))
        quality = {"song": compare(work, "song", official=True)}
        for index, extra in enumerate(songs[1:], 1):
            prepare(work, extra, args.seconds, f"extra{index}")
            for side in sides[1:]:
                run_side(side, args.official, work, f"extra{index}", args.threads)
            quality[extra.name] = compare(work, f"extra{index}", official=False)
        quality[main_song.name] = quality.pop("song")
    return {"info": info, "runs": runs, "quality": quality}


def main() -> None:
    parser = argparse.ArgumentParser(description="official-side helper of bench_cli")
    parser.add_argument("--export", required=True, help="work folder")
    export_official(Path(parser.parse_args().export))


if __name__ == "__main__":
    main()


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown lines: times, ratios against the official fp32 CLI, parity and bf16 SNR."""
    runs, audio = result["runs"], result["info"]["samples"] / 44100
    best = {side: min(r["seconds"] for r in rows) for side, rows in runs.items()}
    rss = {side: max(r["peak_rss_mib"] for r in rows) for side, rows in runs.items()}
    lines = [
        f"# `separate` vs the official demucs 4.1.0 CLI, whole process ({audio:.0f} s real "
        f"song, CPU, {args.threads} threads)",
        "",
        "Same full-size HTDemucs weights (release structure, seeded random values) as an "
        "official package, default segment, overlap 0.25, shifts 0, float32 wav, no clipping. "
        "Wall time of each process from start to exit; interleaved rounds (official, fp32, "
        "bf16), best shown; per round: time / the official time of the same round.",
        "",
        "| command | time (s), best (all runs) | vs official, best | per round (median) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for side in runs:
        times = ", ".join(f"{r['seconds']:.1f}" for r in runs[side])
        ratio = best[side] / best["official"]
        rounds = [
            r["seconds"] / o["seconds"] for r, o in zip(runs[side], runs["official"], strict=True)
        ]
        per_round = ", ".join(f"{x:.2f}" for x in rounds)
        lines.append(
            f"| {side} | {best[side]:.1f} ({times}) | {ratio:.2f}x | {per_round} "
            f"({statistics.median(rounds):.2f}x) | {rss[side]:.0f} |"
        )
    lines += ["", "| song | parity ours fp32 vs official | bf16 SNR vs fp32 per stem (dB) |"]
    lines.append("|---|---|---|")
    for song, q in result["quality"].items():
        parity = f"max abs {q['max_abs']:.1e} (tolerance {q['tol']:.1e})" if "max_abs" in q else "-"
        snr = ", ".join(f"{k} {v:.1f}" for k, v in q["snr_bf16_db"].items())
        lines.append(f"| {Path(song).name[:40]} | {parity} | {snr} |")
    lines += [
        "",
        f"Command: `python3 tools/bench_separate.py --official {args.official} --seconds "
        f"{args.seconds:g} --repeat {args.repeat} --threads {args.threads}` ({os.cpu_count()} "
        "CPUs, Python and torch as installed). Shared machine: "
        "times are noisy; the ratio is what each run compares side by side.",
    ]
    return lines
