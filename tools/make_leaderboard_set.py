#!/usr/bin/env python3
"""Write a stand-in for the MUSDB18 test set and one tool's estimates, for the leaderboard
benchmark (tools/bench_leaderboard.py) when the real set is absent.

Layout (MUSDB18-HQ and ``evaluate --estimates``)::

    ROOT/musdb/test/<track>/{mixture,drums,bass,other,vocals}.wav   (16-bit, 44.1 kHz stereo)
    ROOT/musdb/train/                                                (empty)
    ROOT/estimates/leak/<track>/{drums,bass,other,vocals}.wav       (16-bit)

Defaults: 50 tracks of 204 to 300 s, evenly spaced (mean 252 s: 3.5 hours, like the MUSDB18
test set). Sources: ``synthetic`` (tones, chords, a voice-like line and percussive noise per
stem, generated in a few seconds per track) or a folder of 4-stem track folders looped to the
length (e.g. the MUSDB18 excerpt of ``../shared/eval-data/musdb18-excerpts``), each track with
its own start offset and stem gains. The estimates are each reference plus 5-30 % of the next
stem and 1-10 % noise, per track and stem. A track is scaled so that no stem, mixture or
estimate sample exceeds 0.9; the mixture is the exact integer sum of the stems.

    python tools/make_leaderboard_set.py /tmp/lb                     # about 20 GB
    python tools/make_leaderboard_set.py /tmp/lb --source ../shared/eval-data/musdb18-excerpts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

RATE = 44100
STEMS = ("drums", "bass", "other", "vocals")
_INT16 = 32767
_PEAK = 0.9


def _tone_track(freqs: np.ndarray, step: int, length: int, harmonics: int) -> np.ndarray:
    """(T,) harmonic tone whose fundamental changes every ``step`` samples (continuous phase)."""
    f0 = np.repeat(freqs, step)[:length]
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    return sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))


def _synthetic(length: int, rng: np.random.Generator) -> np.ndarray:
    """(4, 2, T) float64 stems: percussion, bass line, chords, a voice-like line."""
    beat = int(RATE * 60 / rng.uniform(90, 150))
    n_beats = length // beat + 1
    t = np.arange(length) / RATE
    index = np.arange(length)
    hits = rng.uniform(0.5, 1.0, n_beats)[index // beat]  # one decaying hit per beat
    noise = rng.standard_normal(length) + np.sin(2 * np.pi * 60 * t)
    drums = hits * np.exp(-(index % beat) / (0.05 * RATE)) * noise
    bass = _tone_track(55 * 2 ** (rng.integers(0, 12, n_beats) / 12), beat, length, 3)
    chords = sum(
        _tone_track(220 * 2 ** (rng.integers(0, 12, n_beats // 4 + 1) / 12), 4 * beat, length, 3)
        for _ in range(3)
    )
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * 5.5 * t)
    voice = _tone_track(
        300 * 2 ** (rng.integers(0, 12, n_beats // 2 + 1) / 12), 2 * beat, length, 6
    )
    voice *= (np.sin(2 * np.pi * t / 8) > -0.3) * vibrato
    mono = np.stack([drums, bass, chords * (1 + 0.3 * np.sin(2 * np.pi * 0.2 * t)), voice])
    pan = rng.uniform(0.2, 0.8, (4, 1))
    stems = np.stack([mono * np.sqrt(pan), mono * np.sqrt(1 - pan)], axis=1)
    stems += 0.01 * rng.standard_normal(stems.shape)
    return stems / np.sqrt((stems**2).mean(axis=(1, 2), keepdims=True))


def _looped(folder: Path, length: int, rng: np.random.Generator) -> np.ndarray:
    """(4, 2, T) stems of ``folder`` repeated to ``length`` from a random offset."""
    stems = np.stack([soundfile.read(folder / f"{s}.wav", always_2d=True)[0].T for s in STEMS])
    offset = int(rng.integers(0, stems.shape[-1]))
    index = (offset + np.arange(length)) % stems.shape[-1]
    return stems[..., index] * 10 ** (rng.uniform(-3, 3, (4, 1, 1)) / 20)


def _estimates(stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each stem plus 5-30 % of the next and 1-10 % of its RMS as noise."""
    leak = rng.uniform(0.05, 0.3, (4, 1, 1))
    noise = rng.uniform(0.01, 0.1, (4, 1, 1)) * np.sqrt((stems**2).mean(axis=(1, 2), keepdims=True))
    return stems + leak * np.roll(stems, -1, axis=0) + noise * rng.standard_normal(stems.shape)


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data.T.astype(np.int16), RATE, subtype="PCM_16")


def write_track(root: Path, name: str, stems: np.ndarray, rng: np.random.Generator) -> None:
    """Quantise and write one track's references, mixture and estimates."""
    est = _estimates(stems, rng)
    peak = max(np.abs(stems).max(), np.abs(stems.sum(0)).max(), np.abs(est).max(), 1e-12)
    scale = _PEAK * _INT16 / peak
    ints = np.round(stems * scale).astype(np.int32)
    for stem, data in zip(STEMS, ints, strict=True):
        _write(root / "musdb" / "test" / name / f"{stem}.wav", data)
    _write(root / "musdb" / "test" / name / "mixture.wav", ints.sum(axis=0))
    for stem, data in zip(STEMS, np.round(est * scale).astype(np.int32), strict=True):
        _write(root / "estimates" / "leak" / name / f"{stem}.wav", data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument("--tracks", type=int, default=50, help="number of tracks (default 50)")
    parser.add_argument("--min-seconds", type=float, default=204.0, help="shortest (default 204)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="longest (default 300)")
    parser.add_argument(
        "--source", default="synthetic", help="synthetic (default) or a folder of track folders"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    sources = None
    if args.source != "synthetic":
        sources = sorted(p for p in Path(args.source).iterdir() if (p / "vocals.wav").is_file())
        if not sources:
            print(f"error: no track folders with 4 stems in {args.source}", file=sys.stderr)
            return 2
    lengths = np.linspace(args.min_seconds, args.max_seconds, args.tracks)
    (args.root / "musdb" / "train").mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    for k, seconds in enumerate(lengths):
        rng = np.random.default_rng([args.seed, k])
        length = int(seconds * RATE)
        if sources is None:
            stems = _synthetic(length, rng)
        else:
            stems = _looped(sources[k % len(sources)], length, rng)
        write_track(args.root, f"track{k:02d}", stems, rng)
        print(f"track{k:02d}: {seconds:.0f} s", flush=True)
    hours = lengths.sum() / 3600
    print(
        f"wrote {args.tracks} tracks ({hours:.2f} h) to {args.root} in "
        f"{time.perf_counter() - begin:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
