#!/usr/bin/env python3
"""Reading wav files into (C, T) float32: the direct reader against the soundfile path.

For each encoding (16-bit and 24-bit PCM, 32-bit float), one ``--seconds`` long stereo wav of
seeded noise is read, interleaved round by round in this one-thread process:

* ``soundfile``: the checked soundfile reader as every command used it before (libsndfile's
  float32 conversion in blocks, then the (T, C) -> (C, T) copy), what files that do not qualify
  for the direct reader still get;
* ``direct``: :func:`demucs_rr.audio.read_audio`, which reads such a file with
  :mod:`demucs_rr.audio.pcm`.

Both give the same samples (checked here on every file). CPU seconds of this process, best of
``--rounds``; twice: on the machine as it is, and with one competing 2-thread process (as in
``tools/bench_threads.py``). Usage::

    python3 tools/bench_decode.py --seconds 240 --rounds 5
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_separate import write_report  # noqa: E402
from bench_threads import LOAD  # noqa: E402

from demucs_rr.audio import read_audio  # noqa: E402
from demucs_rr.audio.io import _read_soundfile  # noqa: E402

SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


def soundfile_path(path: Path) -> torch.Tensor:
    """The checked soundfile reader and the transpose: the path before the direct reader."""
    data, _, _ = _read_soundfile(path)
    return torch.from_numpy(np.ascontiguousarray(data.T))


def direct_path(path: Path) -> torch.Tensor:
    return read_audio(path)[0]


READERS: dict[str, Callable[[Path], torch.Tensor]] = {
    "soundfile": soundfile_path,
    "direct": direct_path,
}


def make_files(work: Path, seconds: float) -> dict[str, Path]:
    """One stereo 44.1 kHz wav per subtype, seeded noise at -12 dBFS."""
    rng = np.random.default_rng(0)
    data = (0.25 * rng.standard_normal((round(seconds * 44100), 2))).clip(-1, 1)
    files = {}
    for subtype in SUBTYPES:
        files[subtype] = work / f"{subtype}.wav"
        soundfile.write(str(files[subtype]), data.astype(np.float32), 44100, subtype)
    return files


def measure(files: dict[str, Path], rounds: int, loaded: bool) -> dict[str, Any]:
    """Best CPU seconds of each reader on each file, interleaved; same samples checked."""
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if loaded else None
    try:
        time.sleep(2.0 if loaded else 0.0)
        best = {s: {r: float("inf") for r in READERS} for s in files}
        for _ in range(rounds):
            for subtype, path in files.items():
                out = {}
                for name, read in READERS.items():
                    start = time.process_time()
                    out[name] = read(path)
                    best[subtype][name] = min(best[subtype][name], time.process_time() - start)
                assert torch.equal(out["soundfile"], out["direct"]), subtype
        return {"best_cpu_s": best, "load": os.getloadavg()}
    finally:
        if load is not None:
            load.kill()
            load.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=TOOLS / "results/bench_decode.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.seconds)
        results = {
            cond: measure(files, args.rounds, cond == "loaded") for cond in ("quiet", "loaded")
        }
    lines = [
        "# Reading a wav into (C, T) float32: direct reader vs soundfile path",
        "",
        f"Stereo 44.1 kHz, {args.seconds:g} s per file, one thread, CPU seconds of this process "
        f"(best of {args.rounds}, the readers interleaved); same samples on every read.",
        "",
        "| condition | encoding | soundfile path (s) | direct (s) | speed-up | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for cond, res in results.items():
        for subtype, best in res["best_cpu_s"].items():
            lines.append(
                f"| {cond} | {subtype} | {best['soundfile']:.3f} | {best['direct']:.3f} "
                f"| {best['soundfile'] / best['direct']:.1f}x | {res['load'][0]:.2f} |"
            )
    lines += ["", f"Command: `python3 tools/bench_decode.py --seconds {args.seconds:g} "
              f"--rounds {args.rounds}`"]  # fmt: skip
    write_report(args.out, lines, {"seconds": args.seconds, "rounds": args.rounds, **results})


if __name__ == "__main__":
    main()
