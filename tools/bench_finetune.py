#!/usr/bin/env python3
"""Fine-tuning steps of a full-size HT Demucs on a stem folder: step time and peak memory.

A seeded full-size HT Demucs (the released structure, random weights) is written as the
official 4.1.0 hub file of ``htdemucs`` (``{signature}.safetensors``) in a repository folder,
standing in for the download, and a stem folder (``ROOT/train/<track>/<stem>.wav``, the four
MUSDB stems and a piano) is generated. Each precision then runs in its own process (its peak
memory is its own), exactly as ``demucs-rr train`` would start::

    demucs-rr train init=htdemucs init_repo=REPO dset=folder dset.root=ROOT \\
        dset.sources=[drums,bass,other,vocals,piano] init_new_from=other amp=fp32|bf16 ...

(config from the initial model, weights with the piano stem added, freeze / LoRA when asked,
the optimiser, the data pipeline of the run) and takes ``--warmup`` + ``--steps`` real training
steps on batches of the stem folder; the timed steps are averaged. Results go to
``tools/results/bench_finetune_{device}.md`` and ``.json``::

    python3 tools/bench_finetune.py                               # CPU: fp32, bf16 if native
    python3 tools/bench_finetune.py --lora 8 --freeze 'encoder.*'
    python3 tools/bench_gpu_finetune.py                           # the GPU run (same steps)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
RESULTS = TOOLS / "results"
STEMS = ["drums", "bass", "other", "vocals", "piano"]


def write_stand_in(repo: Path) -> str:
    """A seeded full-size HT Demucs as the official hub file of ``htdemucs`` in ``repo``;
    returns the file name."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(TOOLS))
    from bench_hybrid import RELEASE_KWARGS

    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from demucs_rr.models.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(**RELEASE_KWARGS)
    num, den = (int(x) for x in str(RELEASE_KWARGS["segment"]).split("/"))
    kwargs = {
        **RELEASE_KWARGS,
        "segment": {"_type": "fraction", "numerator": num, "denominator": den},
    }
    metadata = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(kwargs)}
    (signature,) = OFFICIAL_BAGS["htdemucs"].spec.models
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / f"{signature}.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path.name


def write_stem_folder(root: Path, tracks: int, seconds: float) -> Path:
    """``root/{train,valid}/<track>/<stem>.wav`` at 44.1 kHz, the stems of :data:`STEMS`."""
    from demucs_rr.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        root, {"train": tracks, "valid": 1}, seconds=seconds, samplerate=44100, sources=STEMS
    )


def overrides(args: argparse.Namespace, work: Path, precision: str) -> list[str]:
    """The ``demucs-rr train`` overrides of one run."""
    out = [
        "init=htdemucs",
        f"init_repo={work / 'repo'}",
        "dset=folder",
        f"dset.root={work / 'stems'}",
        f"dset.sources=[{','.join(STEMS)}]",
        "init_new_from=other",
        f"batch_size={args.batch}",
        f"augment.remix_group_size={min(4, args.batch)}",
        "data.workers=0",
        "data.repitch=0",
        f"device={args.device}",
        f"amp={precision}",
    ]
    if args.freeze:
        out.append(f"freeze=[{args.freeze}]")
    if args.lora:
        out.append(f"lora.rank={args.lora}")
    return out


def worker(args: argparse.Namespace, work: Path, precision: str) -> dict[str, Any]:
    """Start the run as ``demucs-rr train`` does and time its training steps."""
    import torch

    from demucs_rr.distributed import Group
    from demucs_rr.train.finetune import adapt_model, load_run_config
    from demucs_rr.train.loop import GlobalBatchSampler, make_loader, prepare_data, train_step
    from demucs_rr.train.state import build_state, make_model

    torch.set_num_threads(args.threads)
    lines: list[str] = []
    config, initial = load_run_config(overrides(args, work, precision))
    model = make_model(config)
    adapt_model(config, model, initial, lines.append)
    del initial
    dist = Group.from_env(config.device, env={}, allow_mps=False)
    data = prepare_data(config, model, dist)
    sampler = GlobalBatchSampler(len(data.train), config.batch_size, 0, 1, config.seed)
    state = build_state(config, model, dist, len(sampler))
    batches = iter(make_loader(data.train, sampler, 0, dist.device.type == "cuda"))
    cuda = dist.device.type == "cuda"
    times = []
    for index in range(args.warmup + args.steps):
        batch = next(batches)
        if cuda:
            torch.cuda.synchronize()
            if index == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = train_step(state, batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sum(times[args.warmup :]) / args.steps
    audio = config.batch_size * config.segment
    return {
        "precision": precision,
        "device": str(dist.device),
        "threads": args.threads,
        "batch": config.batch_size,
        "segment_s": config.segment,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "counts": lines[-1],
        "s_per_step": step,
        "audio_s_per_s": audio / step,
        "loss": metrics["loss"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "load_avg": os.getloadavg()[0],
    }


def _run(args: argparse.Namespace, work: Path, precision: str, argv: list[str]) -> dict[str, Any]:
    """One precision in its own process (same options)."""
    cmd = [sys.executable, argv[0], *argv[1:], "--worker", precision, "--work", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a negative code: killed by that signal (9: out of memory?)
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"precision": precision, "error": last[:200]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    """The Markdown table of ``rows``."""
    lines = [
        "# Fine-tuning step benchmark: full-size HT Demucs",
        "",
        f"`python3 tools/{Path(argv[0]).name} {' '.join(argv[1:])}`".replace(" `", "`"),
        "",
        "`init=htdemucs` (seeded full-size stand-in, official hub file) on a generated stem "
        f"folder with a new piano stem (from `other`), batch {args.batch} x the model's 7.8 s "
        f"training length; {args.warmup} warm-up step(s), then the mean of {args.steps}: "
        "augmentations, forward, L1, backward, Adam, as `demucs-rr train` runs them (data "
        "loading not timed). Peak RSS: the whole process (initial model, weights, gradients, "
        "Adam moments, activations). Load: 1-minute load average after the steps.",
        "",
        "| precision | device | threads | params (M) | trainable | s/step | audio s/s "
        "| peak RSS (MiB) | peak GPU (MiB) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | failed: {r['error']} |" + " |" * 8)
            continue
        gpu = "-" if r["gpu_peak_mib"] is None else f"{r['gpu_peak_mib']:.0f}"
        trainable = r["counts"].removeprefix("parameters: ").split(" trainable")[0]
        lines.append(
            f"| {r['precision']} | {r['device']} | {r['threads']} | {r['params_m']:.1f} | "
            f"{trainable} | {r['s_per_step']:.2f} | {r['audio_s_per_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {gpu} | {r['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parser(
    device: str = "cpu", batch: int = 1, steps: int = 3, warmup: int = 1
) -> argparse.ArgumentParser:
    """Options (the GPU script changes the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=device, help="cpu | cuda | cuda:N")
    p.add_argument("--precisions", help="comma list of fp32, bf16 (default: fp32, and bf16 "
                   "where it is native: CUDA, or a CPU with AVX512-BF16/AMX)")  # fmt: skip
    p.add_argument("--batch", type=int, default=batch, help="items per step")
    p.add_argument("--steps", type=int, default=steps, help="timed steps")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--tracks", type=int, default=2, help="training tracks of the stem folder")
    p.add_argument("--freeze", help="freeze globs, comma-separated (e.g. 'encoder.*')")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (0: none)")
    p.add_argument("--out", type=Path, help="report path (default tools/results/...)")
    p.add_argument("--dry-run", action="store_true",
                   help="1 timed step, no warm-up, report in a temporary folder")  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parser(**(defaults or {})).parse_args(argv[1:])
    if args.dry_run:
        args.steps, args.warmup = 1, 0
    if args.worker:
        print(json.dumps(worker(args, args.work, args.worker)))
        return 0
    from demucs_rr.separate.precision import cpu_has_bf16

    native = args.device.startswith("cuda") or cpu_has_bf16()
    precisions = (args.precisions or ("fp32,bf16" if native else "fp32")).split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        write_stand_in(work / "repo")
        write_stem_folder(work / "stems", args.tracks, 12.0)
        for precision in precisions:
            rows.append(_run(args, work, precision, argv))
            print(json.dumps(rows[-1]), flush=True)
        text = report(rows, args, argv)
        device = args.device.split(":")[0]
        out = args.out or (work if args.dry_run else RESULTS) / f"bench_finetune_{device}.md"
        out.write_text(text, encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
