"""Pitch and tempo augmentation through the ``soundstretch`` command (SoundTouch).

Follows the official v2 recipe (``demucs/repitch.py``): with probability ``proba`` an item gets a
pitch shift drawn uniformly from the integers in [-2, 2] semitones and a tempo change drawn from
N(0, 5) percent clamped to +-``max_tempo``, the same for every stem; each stem is processed by
its own ``soundstretch`` call, with ``-speech`` for the vocals. ``-tempo=+x`` makes the output
``1 + x/100`` times shorter, so an input of ``L`` samples yields at least
``L / (1 + max_tempo/100)`` samples, more than the ``int((1 - max_tempo/100) * L)`` every item is
cut to (see :class:`demucs_rr.data.datasets.StemSegments`).

One deliberate difference: the official code writes the *normalised* stems to 16-bit PCM with
clamping at +-1, so repitched items are hard-clipped wherever a stem exceeds one standard
deviation of the mixture. Here each stem is divided by its peak (when above 1) and written as
32-bit PCM, then multiplied back, so nothing is clipped. ``clamp=True`` restores the official
behaviour.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import soundfile
import torch

from demucs_rr.errors import ConfigError, DemucsRRError

__all__ = ["MAX_PITCH", "TEMPO_STD", "draw_repitch", "repitch", "soundstretch_available"]

#: Largest pitch shift in semitones (official ``max_pitch``).
MAX_PITCH = 2
#: Standard deviation of the tempo change in percent (official ``tempo_std``).
TEMPO_STD = 5.0


def soundstretch_available() -> bool:
    """Whether the ``soundstretch`` command is on PATH."""
    return shutil.which("soundstretch") is not None


def draw_repitch(rng: np.random.Generator, max_tempo: float = 12.0) -> tuple[int, float]:
    """Draw ``(semitones, tempo_percent)`` as the official recipe does."""
    semitones = int(rng.integers(-MAX_PITCH, MAX_PITCH + 1))
    tempo = float(np.clip(rng.normal(0.0, TEMPO_STD), -max_tempo, max_tempo))
    return semitones, tempo


def _stretch(
    wav: torch.Tensor,
    folder: Path,
    semitones: int,
    tempo_percent: float,
    samplerate: int,
    speech: bool,
    clamp: bool,
) -> torch.Tensor:
    """Run soundstretch on one (C, T) stem."""
    src, dst = folder / "in.wav", folder / "out.wav"
    if clamp:  # official: normalised units straight to 16-bit, clipping at +-1
        scale = 1.0
        soundfile.write(src, wav.clamp(-1, 1).T.numpy(), samplerate, subtype="PCM_16")
    else:
        scale = max(float(wav.abs().max()), 1.0)
        soundfile.write(src, (wav / scale).T.numpy(), samplerate, subtype="PCM_32")
    command = [
        "soundstretch",
        str(src),
        str(dst),
        f"-pitch={semitones}",
        f"-tempo={tempo_percent:.6f}",
    ]
    if speech:
        command.append("-speech")
    try:
        proc = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    except OSError as err:
        raise ConfigError(
            f"cannot run soundstretch ({err}); install it "
            "(apt-get install soundstretch) or turn repitch off"
        ) from None
    if proc.returncode != 0:
        message = " ".join(proc.stderr.decode("utf-8", "replace").split())[-300:]
        raise DemucsRRError(f"soundstretch failed with status {proc.returncode}: {message}")
    data, rate = soundfile.read(dst, dtype="float32", always_2d=True)
    if rate != samplerate:
        raise DemucsRRError(f"soundstretch changed the sample rate to {rate}")
    return torch.from_numpy(np.ascontiguousarray(data.T)) * scale


def repitch(
    stems: torch.Tensor,
    semitones: int,
    tempo_percent: float,
    samplerate: int,
    *,
    speech: Collection[int] = (),
    clamp: bool = False,
) -> torch.Tensor:
    """Change pitch and tempo of every stem with ``soundstretch``.

    Args:
        stems: normalised stems, shape (S, C, T).
        semitones: pitch shift in semitones (``-pitch=``).
        tempo_percent: tempo change in percent (``-tempo=``); positive is faster (shorter).
        samplerate: sample rate of ``stems``.
        speech: stem indices processed with ``-speech`` (the official recipe: the vocals).
        clamp: reproduce the official 16-bit round trip with clipping at +-1 (see module doc).

    Returns:
        float32 tensor (S, C, T') with T' about ``T / (1 + tempo_percent / 100)`` (every stem
        cut to the shortest output).

    Raises:
        ConfigError: soundstretch is not installed.
        DemucsRRError: soundstretch failed.
    """
    if stems.dim() != 3:
        raise ValueError(f"expected stems of shape (S, C, T), got {tuple(stems.shape)}")
    if not soundstretch_available():
        raise ConfigError(
            "repitch needs the soundstretch command: install it "
            "(apt-get install soundstretch) or set the repitch probability to 0"
        )
    outs = []
    with tempfile.TemporaryDirectory(prefix="demucs_rr_repitch_") as tmp:
        for index, wav in enumerate(stems.detach().float().cpu()):
            outs.append(
                _stretch(
                    wav, Path(tmp), semitones, tempo_percent, samplerate, index in speech, clamp
                )
            )
    length = min(out.shape[-1] for out in outs)
    return torch.stack([out[:, :length] for out in outs])
