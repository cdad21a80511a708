"""``demucs-rr doctor``: what users paste into a bug report.

Versions of demucs_rr and the libraries it relies on, the devices torch sees (with bf16 / AMX
support of the CPU), whether ffmpeg and soundstretch are available, and the model files found in
the cache folder with the state of their checksum. Nothing is downloaded and nothing fails: a
probe that cannot answer says so on its line.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from demucs_rr import __version__
from demucs_rr.runtime import cache_dir
from demucs_rr.separate.precision import cpu_flags

__all__ = ["cache_lines", "device_lines", "doctor_report", "run_doctor", "tool_lines"]

PACKAGES = ("torch", "numpy", "soundfile", "julius", "lameenc", "safetensors", "tqdm")
TOOLS = {"ffmpeg": ["-version"], "soundstretch": []}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_lines() -> list[str]:
    """demucs_rr, Python, OS and library versions (libsndfile included)."""
    lines = [
        f"demucs_rr: {__version__}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()}",
    ]
    lines += [f"{name}: {_version(name)}" for name in PACKAGES]
    try:
        import soundfile

        lines.append(f"libsndfile: {soundfile.__libsndfile_version__}")
    except (ImportError, OSError, AttributeError) as exc:
        lines.append(f"libsndfile: unavailable ({type(exc).__name__})")
    return lines


def device_lines() -> list[str]:
    """CPU capability, threads, bf16 / AMX support, CUDA and MPS devices."""
    flags = cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    amx = "amx_tile" in flags
    lines = [
        f"cpu: {platform.machine()}, torch capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads",
        f"cpu bf16: {'yes' if bf16 else 'no'} (avx512_bf16/amx_bf16), "
        f"amx: {'yes' if amx else 'no'}",
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            memory = props.total_memory / 1024**3
            bf = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
            lines.append(f"cuda:{index}: {props.name}, {memory:.0f} GiB, {bf}")
        lines.append(f"cuda runtime: {torch.version.cuda}")
    else:
        lines.append(f"cuda: not available (torch built with {torch.version.cuda or 'no CUDA'})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        lines.append("mps: available")
    return lines


def _tool_version(exe: str, args: list[str]) -> str:
    try:
        done = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=10, errors="replace"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"found but does not run ({type(exc).__name__})"
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if line.strip():
            return line.strip()[:120]
    return "found"


def tool_lines(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """ffmpeg (mp3/m4a/... input) and soundstretch (tempo augmentation) availability."""
    lines = []
    for tool, args in TOOLS.items():
        exe = which(tool)
        lines.append(f"{tool}: " + (f"{exe}: {_tool_version(exe, args)}" if exe else "not found"))
    return lines


def _known_files() -> dict[str, str]:
    """Cache file name -> expected sha256 prefix, for every downloadable model file."""
    from demucs_rr.hub.catalogue import PRETRAINED, cached_path
    from demucs_rr.hub.releases import OFFICIAL_BAGS

    known = {cached_path(info).name: info.sha256_prefix for info in PRETRAINED.values()}
    for bag in OFFICIAL_BAGS.values():
        known.update({file.filename: file.sha256_prefix for file in bag.files})
    return known


def cache_lines(folder: Path | None = None) -> list[str]:
    """The cache folder and each model file in it: size and checksum state."""
    from demucs_rr.hub.fetch import checksum_state

    folder = cache_dir() if folder is None else folder
    if not folder.is_dir():
        return [f"cache: {folder} (does not exist yet: nothing downloaded)"]
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".th", ".safetensors") and p.is_file()
    )
    lines = [f"cache: {folder} ({len(files)} model files)"]
    known = _known_files()
    for path in files:
        size = f"{path.stat().st_size / 1024**2:.1f} MiB"
        if path.name in known:
            state = checksum_state(path, known[path.name])
        else:
            state = "not a known download (checksum unknown)"
        lines.append(f"  {path.name}: {size}, {state}")
    return lines


def doctor_report() -> str:
    """The whole report, one ``key: value`` per line."""
    sections = [version_lines(), device_lines(), tool_lines(), cache_lines()]
    return "\n".join(line for section in sections for line in section)


def run_doctor(args: argparse.Namespace) -> int:
    """``demucs-rr doctor``: print the report; always exit 0."""
    print(doctor_report())
    return 0
