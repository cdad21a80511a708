#!/usr/bin/env python3
"""Full-size HTDemucs: demucs_rr's ``Separator`` against the official ``demucs==4.1.0``.

Used by ``tools/bench_separate.py --hybrid PYTHON``. Steps, each side in its own process so that
its peak memory is its own:

1. prepare (this interpreter): read the song, keep ``--seconds`` of it, build HTDemucs with the
   release structure (bottom_channels 512, dconv_mode 3, 5 transformer layers, segment 39/5)
   and seeded random weights; save mixture and float32 state in a temporary folder;
2. official (``PYTHON``, a venv with ``demucs==4.1.0``): build the official HTDemucs with the same
   kwargs, load the state, export it as an official package (``serialize_model``, float32), load
   that package back with ``load_model`` and separate as the official ``demucs.api.Separator`` does
   (whole-track normalisation, ``apply_model(shifts=0, split=True, overlap=0.25)``);
3. ours (this interpreter): ``Separator(model, shifts=0).separate_tensor(mix)``;
4. compare the stems and write a Markdown table and a JSON file.

The official convention adds the whole-track mean to every stem, demucs_rr adds ``mean / S``;
the "aligned" difference removes that (documented) convention gap, the raw one keeps it.
Nothing here is imported by demucs_rr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOURCES = ["drums", "bass", "other", "vocals"]
RELEASE_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "dconv_mode": 3,
    "bottom_channels": 512,
    "t_layers": 5,
    "t_dropout": 0.02,
    "segment": "39/5",
}
DEFAULT_SONG = (
    Path(__file__).resolve().parents[2]
    / "shared/eval-data/full-songs/librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg"
)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(workdir: Path, song: Path, seconds: float) -> dict[str, Any]:
    """Save ``mix.npy`` (C, T) and ``state.th`` (seeded release-size HTDemucs)."""
    import numpy as np
    import torch

    from demucs_rr.audio import load_for_model
    from demucs_rr.models.htdemucs import HTDemucs

    mix, _ = load_for_model(song, 44100, 2)
    mix = mix[:, : int(seconds * 44100)]
    np.save(workdir / "mix.npy", mix.numpy())
    torch.manual_seed(0)
    model = HTDemucs(**RELEASE_KWARGS)
    torch.save(model.state_dict(), workdir / "state.th")
    params = sum(p.numel() for p in model.parameters())
    return {"samples": mix.shape[-1], "params": params}


def worker_ours(workdir: Path, threads: int) -> dict[str, Any]:
    """Separate with demucs_rr (Separator, the CLI path); saves ``ours.npy`` (S, C, T)."""
    import numpy as np
    import torch

    from demucs_rr.models.htdemucs import HTDemucs
    from demucs_rr.separate.api import Separator

    torch.set_num_threads(threads)
    model = HTDemucs(**RELEASE_KWARGS)
    model.load_state_dict(torch.load(workdir / "state.th", weights_only=True))
    sep = Separator(model.eval(), device="cpu", shifts=0, overlap=0.25)
    mix = torch.from_numpy(np.load(workdir / "mix.npy"))
    start = time.perf_counter()
    stems = sep.separate_tensor(mix, 44100)
    elapsed = time.perf_counter() - start
    np.save(workdir / "ours.npy", torch.stack([stems[name] for name in SOURCES]).numpy())
    return {"seconds": elapsed, "peak_rss_mib": _peak_rss_mib()}


def worker_official(workdir: Path, threads: int) -> dict[str, Any]:
    """Separate with the official package; saves ``official.npy`` (S, C, T)."""
    from fractions import Fraction

    import numpy as np
    import torch
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs
    from demucs.states import load_model, serialize_model
    from omegaconf import OmegaConf

    torch.set_num_threads(threads)
    model = HTDemucs(**{**RELEASE_KWARGS, "segment": Fraction(39, 5)})
    model.load_state_dict(torch.load(workdir / "state.th", weights_only=True))
    package = serialize_model(model, OmegaConf.create({}), half=False)
    torch.save(package, workdir / "official.th")
    model = load_model(workdir / "official.th").eval()
    wav = torch.from_numpy(np.load(workdir / "mix.npy"))
    start = time.perf_counter()
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8  # demucs.api.Separator.separate_tensor
    with torch.no_grad():
        out = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25)
    out = out[0] * std + mean
    elapsed = time.perf_counter() - start
    np.save(workdir / "official.npy", out.numpy())
    return {"seconds": elapsed, "peak_rss_mib": _peak_rss_mib()}


def _spawn(python: str, side: str, workdir: Path, threads: int) -> dict[str, Any]:
    cmd = [python, __file__, "--side", side, "--workdir", str(workdir), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{side}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB",
        file=sys.stderr,
    )
    return result


def compare(workdir: Path) -> dict[str, float]:
    """Raw and mean-convention-aligned max differences of the stems."""
    import numpy as np

    ours, official = np.load(workdir / "ours.npy"), np.load(workdir / "official.npy")
    mix = np.load(workdir / "mix.npy")
    mean = float(mix.mean(0).mean())
    aligned = (ours - mean / len(SOURCES)) - (official - mean)
    ref = float(np.abs(official).max())
    return {
        "max_abs_raw": float(np.abs(ours - official).max()),
        "max_abs_aligned": float(np.abs(aligned).max()),
        "max_ref": ref,
        "rel_aligned": float(np.abs(aligned).max()) / ref,
        "track_mean": mean,
    }


def _report(
    info: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    diff: dict[str, float],
    args: argparse.Namespace,
) -> list[str]:
    best = {side: min(r["seconds"] for r in rows) for side, rows in runs.items()}
    rss = {side: max(r["peak_rss_mib"] for r in rows) for side, rows in runs.items()}
    audio = info["samples"] / 44100
    lines = [
        f"# Full-size HTDemucs: demucs_rr vs official demucs 4.1.0 ({audio:.0f} s real song, "
        f"CPU, {args.threads} threads)",
        "",
        f"Model: HTDemucs, release structure ({info['params']:,} parameters), seeded random "
        "weights, float32; official side loads them from an exported official package.",
        "Both: shifts 0, split, overlap 0.25, default segment (7.8 s chunks padded with real "
        "context to the training length), whole-track normalisation.",
        "",
        "| side | time (s), best of runs | real-time factor | peak RSS (MiB) |",
        "|---|---|---|---|",
    ]
    for side in ("official", "ours"):
        times = ", ".join(f"{r['seconds']:.1f}" for r in runs[side])
        lines.append(
            f"| {side} | {best[side]:.1f} ({times}) | {best[side] / audio:.2f} | {rss[side]:.0f} |"
        )
    lines += [
        "",
        f"- wall-time ratio ours / official: **{best['ours'] / best['official']:.2f}x**",
        f"- max |ours - official| over all stems: {diff['max_abs_aligned']:.2e} "
        f"({diff['rel_aligned']:.1e} of max |official| = {diff['max_ref']:.3f}) after removing "
        f"the mean convention; raw {diff['max_abs_raw']:.2e} (track mean {diff['track_mean']:.1e}"
        ", added whole to each stem officially, / S here)",
        "- peak RSS = ru_maxrss of each separating process (Python, torch, model, audio).",
        "",
        f"Song: {Path(args.song or DEFAULT_SONG).name}. Shared 2-core machine: times are noisy.",
    ]
    return lines


def run_comparison(args: argparse.Namespace) -> None:
    """Entry point of ``bench_separate.py --hybrid PYTHON``."""
    song = Path(args.song) if args.song else DEFAULT_SONG
    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp:
        workdir = Path(tmp)
        info = prepare(workdir, song, args.seconds)
        runs: dict[str, list[dict[str, Any]]] = {"official": [], "ours": []}
        for _ in range(max(1, args.repeat)):
            runs["official"].append(_spawn(args.hybrid, "official", workdir, args.threads))
            runs["ours"].append(_spawn(sys.executable, "ours", workdir, args.threads))
        diff = compare(workdir)
    lines = _report(info, runs, diff, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"info": info, "runs": runs, "difference": diff}, indent=2) + "\n"
    )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description="one side of the HTDemucs comparison")
    parser.add_argument("--side", choices=["ours", "official"], required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = worker_ours if args.side == "ours" else worker_official
    print(json.dumps(work(Path(args.workdir), args.threads)))


if __name__ == "__main__":
    main()
