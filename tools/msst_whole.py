"""Whole-process runs of ``python -m demucs_rr separate`` and MSST's ``inference.py``.

Shared by ``tools/bench_msst_whole.py`` (time, precision) and ``tools/bench_msst_memory.py``
(peak RSS). Each side is a separate process started on the same WAV file with the same
checkpoint and config, so everything a user waits for is counted: start-up, imports, model
loading, decoding, separation, writing the stems. A run is measured with ``os.wait4``: wall
seconds, CPU seconds (user + system, all threads; steadier than wall on a shared machine) and
the peak resident set size of the process.

The checkpoint is MSST's own model class built right after ``torch.manual_seed(seed)`` in
MSST's Python (seeded random weights of the full-size structure, or of a reduced one), saved
as a plain state dict ``.ckpt``: both tools load that file with that config.

MSST's side needs a checkout of MSST (``--msst``, at commit ccc011abf7f8) and a Python with
its requirements (``--msst-python``: torch, einops, rotary-embedding-torch, beartype,
librosa, soundfile, ml_collections, omegaconf, tqdm), kept outside this repository.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import yaml

REPO = Path(__file__).resolve().parents[1]
HUB = REPO / "demucs_rr" / "hub" / "msst"
SONG = REPO.parent / "shared/eval-data/full-songs/librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg"
MODEL_TYPES = {
    "viperx_bs_roformer_ep_317": "bs_roformer",
    "viperx_bs_roformer_ep_937": "bs_roformer",
    "viperx_mel_band_roformer_ep_3005": "mel_band_roformer",
    "kj_mel_band_roformer_vocals": "mel_band_roformer",
    "msst_scnet_musdb18": "scnet",
    "msst_scnet_large_musdb18": "scnet",
    "msst_mdx23c_musdb18": "mdx23c",
    "msst_mdx23c_vocals": "mdx23c",
}
"""Bundled MSST configs (``demucs_rr/hub/msst/NAME.yaml``) and their MSST ``model_type``."""


class _Loader(yaml.SafeLoader):
    """Safe loader; ``!!python/tuple`` kept a tuple (MSST's beartype checks want tuples)."""


_Loader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes tuples back as ``!!python/tuple``."""


_Dumper.add_representer(
    tuple, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:python/tuple", data)
)


def parse_value(text: str) -> Any:
    """``KEY=VALUE`` value: YAML scalar or list (a list becomes a tuple if the key held one)."""
    return yaml.safe_load(text)


def write_config(
    name: str, changes: dict[str, Any], out: Path, inference: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The bundled config ``name`` with ``model:`` keys and ``inference:`` keys changed and
    ``training.model_type`` set, written to ``out``; returns (model type, config)."""
    model_type = MODEL_TYPES[name]
    config = yaml.load((HUB / f"{name}.yaml").read_text(), Loader=_Loader)
    for key, value in changes.items():  # a new key is passed to MSST's constructor as is
        old = config["model"].get(key)
        config["model"][key] = tuple(value) if isinstance(old, tuple) else value
    config.setdefault("inference", {}).update(inference or {})
    config["training"]["model_type"] = model_type
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.dump(config, Dumper=_Dumper, sort_keys=False))
    return model_type, config


_CHECKPOINT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from utils.settings import get_model_from_config
torch.manual_seed(int(sys.argv[4]))
model, _ = get_model_from_config(sys.argv[2], sys.argv[3])
torch.save(model.state_dict(), sys.argv[5])
print(sum(p.numel() for p in model.parameters()))
"""


def make_checkpoint(
    msst_python: str, msst: Path, model_type: str, config: Path, seed: int, out: Path
) -> int:
    """MSST's model with seeded random weights saved to ``out``; returns its parameter count."""
    if not out.exists():
        cmd = [msst_python, "-c", _CHECKPOINT, str(msst), model_type, str(config), str(seed)]
        done = subprocess.run([*cmd, str(out)], check=True, capture_output=True, text=True)
        out.with_suffix(".params").write_text(done.stdout.strip().splitlines()[-1])
    return int(out.with_suffix(".params").read_text())


def write_song(song: Path, offset: float, seconds: float, out: Path) -> Path:
    """``seconds`` of ``song`` from ``offset`` as a float WAV (the song looped when shorter).

    Written one pass of the song at a time: this process must stay smaller than the runs it
    measures, since a child's ``ru_maxrss`` starts from its parent's peak RSS (Linux records the
    parent's high-water mark at the child's ``exec``; a 30-minute song held here read as 673 MiB
    for a separation that peaks at 516 MiB)."""
    if out.exists():
        return out
    audio, rate = soundfile.read(str(song), dtype="float32", always_2d=True)
    start = round(offset * rate) % len(audio)
    left = round(seconds * rate)
    out.parent.mkdir(parents=True, exist_ok=True)
    with soundfile.SoundFile(str(out), "w", rate, audio.shape[1], subtype="FLOAT") as sink:
        while left > 0:
            block = audio[start : start + left]
            sink.write(block)
            left -= len(block)
            start = 0
    return out


@dataclass
class Run:
    """One measured process."""

    side: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    parent_peak_rss_mib: float
    load_before: str
    load_after: str
    returncode: int


def uptime() -> str:
    """The ``uptime`` line (load averages of the shared machine)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def measure(side: str, cmd: list[str], threads: int, log: Path, cwd: Path | None = None) -> Run:
    """Run ``cmd`` with ``threads`` OpenMP/MKL threads; wall, CPU and peak RSS of it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = ""
    before = uptime()
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(
        side=side,
        wall_s=round(wall, 2),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        parent_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        load_before=before,
        load_after=uptime(),
        returncode=proc.returncode,
    )
    print(json.dumps(asdict(run)), flush=True)
    if proc.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
    return run


def msst_command(
    msst_python: str, msst: Path, model_type: str, config: Path, ckpt: Path, inputs: Path, out: Path
) -> list[str]:
    """MSST's ``inference.py`` on the folder ``inputs`` (CPU, float WAV stems)."""
    return [
        msst_python, str(msst / "inference.py"), "--model_type", model_type,
        "--config_path", str(config), "--start_check_point", str(ckpt),
        "--input_folder", str(inputs), "--store_dir", str(out), "--force_cpu",
        "--disable_detailed_pbar", "--pcm_type", "FLOAT",
    ]  # fmt: skip


def ours_command(
    config: Path, ckpt: Path, song: Path, out: Path, threads: int, precision: str
) -> list[str]:
    """``python -m demucs_rr separate`` of ``song`` (float WAV stems, no clip handling)."""
    return [
        sys.executable, "-m", "demucs_rr", "separate", "-n", str(ckpt),
        "--model-config", str(config), "-o", str(out), "--float32", "--clip-mode", "none",
        "--threads", str(threads), "--precision", precision, "-q", "--overwrite", str(song),
    ]  # fmt: skip


def read_stems(folder: Path) -> dict[str, np.ndarray]:
    """``{stem: (T, C) array}`` of every WAV below ``folder``."""
    return {p.stem: soundfile.read(str(p), dtype="float32")[0] for p in folder.rglob("*.wav")}


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """``max|ours - ref| / max|ref|`` of each stem both wrote."""
    out = {}
    for stem in sorted(set(ours) & set(ref)):
        a, b = ours[stem], ref[stem]
        n = min(len(a), len(b))
        out[stem] = float(np.abs(a[:n] - b[:n]).max() / max(float(np.abs(b[:n]).max()), 1e-12))
    return out


def snr_db(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """SNR of each stem of ``ours`` against ``ref`` (dB)."""
    out = {}
    for stem in sorted(set(ours) & set(ref)):
        a, b = ours[stem].astype(np.float64), ref[stem].astype(np.float64)
        n = min(len(a), len(b))
        noise = float(np.sum((a[:n] - b[:n]) ** 2))
        out[stem] = float(10 * np.log10(np.sum(b[:n] ** 2) / max(noise, 1e-30)))
    return out


def git_head() -> str:
    """Commit and subject of the checkout whose ``demucs_rr`` ran (the engine)."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    return done.stdout.strip()
