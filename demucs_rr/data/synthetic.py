"""A procedurally generated stem dataset in the MUSDB18-HQ layout, for tests and smoke training.

Each track gets its own tempo, key, scale, stereo placement and timbres from
``numpy.random.default_rng([seed, crc32(split), index])``, so a seed always writes the same
files. The stems are easy to tell apart, so a tiny model can learn to separate them:

* ``drums``: a pitched, decaying sine kick (150 -> 50 Hz sweep), a noise + tone snare and
  high-passed noise hi-hats on an eighth-note grid;
* ``bass``: notes of 40-120 Hz (fundamental-heavy, a few harmonics) with attack/decay envelopes;
* ``other``: chords of 2-4 harmonic tones between 196 and 990 Hz with slow swells, one per bar;
* ``vocals``: a voice-like harmonic tone (150-600 Hz) with vibrato, portamento and vowel
  formants, sung in phrases separated by rests;
* ``piano`` (a fifth instrument, only when asked for): struck-string notes of 520-2100 Hz
  (C5 to C7) with slightly stretched partials that decay faster the higher they are, in
  arpeggios on an eighth-note grid: a new instrument to fine-tune a 4-stem model on.

The four MUSDB stems of a track are drawn first, so asking for ``piano`` as well leaves them as
they were (up to the track's overall scale).

Files are 16-bit PCM wav. The stems are quantised first and ``mixture.wav`` is their exact
integer sum, so ``mixture == drums + bass + other + vocals`` (``+ piano``) holds bit for bit
after reading;
the whole track is scaled so that no stem and no mixture sample exceeds 0.9.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile

from demucs_rr.errors import ConfigError
from demucs_rr.sources import MUSDB_SOURCES
from demucs_rr.staging import atomic_write

__all__ = ["SYNTHETIC_SOURCES", "make_synthetic_dataset", "synth_track"]

SYNTHETIC_SOURCES = (*MUSDB_SOURCES, "piano")
"""Every stem the generator can write: the four MUSDB stems and the extra ``piano``."""

_PEAK = 0.9
_INT16 = 32767
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
#: Formant centre frequencies (Hz) of a few vowels: a, e, i, o, u.
_VOWELS = (
    (800, 1200, 2500),
    (500, 1750, 2500),
    (320, 2200, 2900),
    (500, 900, 2400),
    (350, 800, 2300),
)


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _place(out: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add ``sound`` (T,) into ``out`` (T,) at ``start``, cropped at the end."""
    end = min(out.shape[-1], start + sound.shape[-1])
    if start < end:
        out[start:end] += gain * sound[: end - start]


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, ``position`` in [-1, 1]; returns (2, T)."""
    angle = (position + 1.0) * np.pi / 4.0
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono]) * np.sqrt(2.0)


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack and release ramps (seconds) over ``n`` samples."""
    env = np.ones(n)
    a = min(n, max(1, int(attack * sr)))
    r = min(n - a, max(1, int(release * sr))) if n > a else 0
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r > 0:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


def _drums(rng: np.random.Generator, n: int, sr: int, beat: float) -> np.ndarray:
    t = np.arange(int(0.45 * sr)) / sr
    sweep = 50.0 + rng.uniform(80, 120) * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t / rng.uniform(0.1, 0.2))
    ts = t[: int(0.25 * sr)]
    snare_noise = np.diff(rng.standard_normal(ts.size + 1)) * 0.5
    snare = snare_noise + 0.6 * np.sin(2 * np.pi * rng.uniform(170, 230) * ts)
    snare *= np.exp(-ts / rng.uniform(0.05, 0.1))
    th = t[: int(0.08 * sr)]
    hat = np.diff(np.diff(rng.standard_normal(th.size + 2))) * 0.25 * np.exp(-th / 0.015)
    kick_steps = {0, 4} if rng.random() < 0.5 else {0, 3, 4}
    out = np.zeros((2, n))
    mono = np.zeros(n)
    hats = np.zeros(n)
    step = beat / 2
    for k in range(int(n / (step * sr)) + 1):
        start = int(round(k * step * sr))
        if k % 8 in kick_steps:
            _place(mono, kick, start, rng.uniform(0.8, 1.0))
        if k % 4 == 2:
            _place(mono, snare, start, rng.uniform(0.5, 0.7))
        _place(hats, hat, start, rng.uniform(0.3, 0.6))
    out += _pan(mono, 0.0)
    out += _pan(hats, rng.uniform(-0.5, 0.5))
    return out


def _bass(
    rng: np.random.Generator, n: int, sr: int, beat: float, root: int, scale: tuple[int, ...]
) -> np.ndarray:
    base = 28 + root % 12  # E1..D#2: 41-78 Hz, degrees up to a sixth stay below 120 Hz
    timbre = rng.uniform(0.2, 0.45)
    harmonics = timbre ** np.arange(4) / np.arange(1, 5)
    mono = np.zeros(n)
    pos = 0.0
    while pos * sr < n:
        length = beat * rng.choice([0.5, 1.0, 1.0, 2.0])
        if rng.random() < 0.85:
            midi = base + scale[int(rng.choice([0, 0, 4, 3, 5]))] % 12
            m = int(length * sr)
            t = np.arange(m) / sr
            tone = sum(
                h * np.sin(2 * np.pi * (k + 1) * _hz(midi) * t) for k, h in enumerate(harmonics)
            )
            env = _envelope(m, sr, 0.005, 0.03) * (0.6 + 0.4 * np.exp(-t / 0.15))
            _place(mono, tone * env, int(pos * sr))
        pos += length
    return _pan(mono, rng.uniform(-0.2, 0.2))


def _other(
    rng: np.random.Generator, n: int, sr: int, beat: float, root: int, scale: tuple[int, ...]
) -> np.ndarray:
    out = np.zeros((2, n))
    bar = 4 * beat
    bright = rng.uniform(0.2, 0.5)
    for k in range(int(n / (bar * sr)) + 1):
        degree = int(rng.integers(0, 7))
        count = int(rng.integers(2, 5))
        m = int((bar + 0.3) * sr)
        t = (np.arange(m) / sr).astype(np.float32)
        env = _envelope(m, sr, rng.uniform(0.15, 0.5), 0.4)
        start = int(k * bar * sr)
        m = min(m, n - start)
        if m <= 0:
            break
        for voice in range(count):
            step = degree + 2 * voice  # stacked thirds within the scale
            midi = 55 + (root % 12) + 12 * (step // 7) + scale[step % 7]
            while midi > 83:
                midi -= 12
            freq = float(_hz(midi)) * (1 + rng.uniform(-0.002, 0.002))
            phase = np.float32(2 * np.pi * freq) * t[:m]
            tone = sum(np.float32(bright**h) * np.sin((h + 1) * phase) for h in range(3))
            out[:, start : start + m] += _pan(tone * env[:m] / count, rng.uniform(-0.7, 0.7))
    return out


def _vocals(
    rng: np.random.Generator, n: int, sr: int, root: int, scale: tuple[int, ...]
) -> np.ndarray:
    f0 = np.full(n, np.nan)
    gate = np.zeros(n)
    vowel = np.zeros(n, dtype=np.int64)
    pos = int(rng.uniform(0.0, 0.5) * sr)
    while pos < n:
        phrase_end = min(n, pos + int(rng.uniform(1.0, 3.0) * sr))
        start = pos
        while pos < phrase_end:
            length = int(rng.uniform(0.2, 0.6) * sr)
            degree = int(rng.integers(0, 10))
            midi = 55 + (root % 12) + 12 * (degree // 7) + scale[degree % 7]
            f0[pos : pos + length] = min(float(_hz(midi)), 580.0)
            vowel[pos : pos + length] = rng.integers(0, len(_VOWELS))
            pos += length
        pos = min(pos, n)
        gate[start:pos] = _envelope(pos - start, sr, 0.05, 0.1)
        pos += int(rng.uniform(0.3, 1.0) * sr)
    valid = ~np.isnan(f0)
    f0 = np.interp(np.arange(n), np.flatnonzero(valid), f0[valid]) if valid.any() else f0
    glide = max(1, int(0.03 * sr))  # portamento: moving average of the pitch contour
    sums = np.concatenate([[0.0], np.cumsum(np.pad(f0, (glide, glide), mode="edge"))])
    f0 = ((sums[glide:] - sums[:-glide]) / glide)[glide // 2 + 1 : glide // 2 + 1 + n]
    t = np.arange(n) / sr
    vibrato = rng.uniform(0.3, 0.6) * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * t)
    f0 = np.clip(f0 * 2 ** (vibrato / 12), 150.0, 600.0)
    # wrapped phase, so that float32 keeps h * phase accurate for every harmonic h
    phase = np.mod(2 * np.pi * np.cumsum(f0) / sr, 2 * np.pi).astype(np.float32)
    # harmonic amplitudes (formant weights) at a control rate of one value per 64 samples
    ctrl = np.arange(0, n, 64)
    formants = np.asarray(_VOWELS, dtype=np.float64)[vowel[ctrl]]  # (n_ctrl, 3)
    mono = np.zeros(n, dtype=np.float32)
    for h in range(1, int(4000 // 150) + 1):
        freq = h * f0[ctrl]
        amp = np.exp(-(((freq[:, None] - formants) / 150.0) ** 2)).sum(axis=1) + 0.05
        amp = np.where(freq < 4000, amp / h, 0.0)
        if amp.any():
            mono += np.repeat(amp.astype(np.float32), 64)[:n] * np.sin(h * phase)
    return _pan(mono * gate, rng.uniform(-0.15, 0.15))


def _piano(
    rng: np.random.Generator, n: int, sr: int, beat: float, root: int, scale: tuple[int, ...]
) -> np.ndarray:
    """Struck-string arpeggios in C5-C7 on an eighth-note grid; (2, T)."""
    mono = np.zeros(n)
    step = beat / 2
    decay = rng.uniform(0.25, 0.5)  # seconds, of the fundamental
    stretch = rng.uniform(2e-4, 6e-4)  # inharmonicity: partial k at k * f0 * sqrt(1 + B k^2)
    pattern = rng.integers(0, 10, size=4)  # scale degrees of the arpeggio, repeated
    top = min(0.45 * sr, 9000.0)
    t = np.arange(int(min(1.5, 5 * decay) * sr)) / sr
    attack = np.minimum(1.0, t / 0.002)
    for k in range(int(n / (step * sr)) + 1):
        if rng.random() < 0.25:  # a rest
            continue
        degree = int(pattern[k % 4]) + (7 if k % 16 >= 8 else 0)
        midi = 72 + (root % 12) + 12 * (degree // 7) + scale[degree % 7]
        f0 = float(_hz(min(midi, 96)))
        note = np.zeros_like(t)
        for h in range(1, 7):
            freq = h * f0 * np.sqrt(1 + stretch * h * h)
            if freq < top:
                note += np.sin(2 * np.pi * freq * t) * np.exp(-t * h / decay) / h**1.2
        _place(mono, note * attack, int(round(k * step * sr)), rng.uniform(0.6, 1.0))
    return _pan(mono, rng.uniform(-0.6, 0.6))


def synth_track(
    seconds: float, samplerate: int, rng: np.random.Generator, piano: bool = False
) -> np.ndarray:
    """One track's stems as float64 (S, 2, T), unscaled: the four ``MUSDB_SOURCES`` in order,
    then ``piano`` when asked for (drawn after the others, which it leaves unchanged)."""
    n = int(round(seconds * samplerate))
    beat = 60.0 / rng.uniform(90, 150)
    root = int(rng.integers(0, 12))
    scale = _MAJOR if rng.random() < 0.5 else _MINOR
    stems = np.stack(
        [
            _drums(rng, n, samplerate, beat),
            _bass(rng, n, samplerate, beat, root, scale),
            _other(rng, n, samplerate, beat, root, scale),
            _vocals(rng, n, samplerate, root, scale),
        ]
    )
    rms = np.sqrt((stems**2).mean(axis=(1, 2), keepdims=True)) + 1e-12
    gains = (
        10 ** (rng.uniform(-3, 3, size=(4, 1, 1)) / 20)
        * np.array([1.0, 0.8, 0.6, 0.8])[:, None, None]
    )
    stems = stems / rms * gains
    if not piano:
        return stems
    extra = _piano(rng, n, samplerate, beat, root, scale)
    extra *= 10 ** (rng.uniform(-3, 3) / 20) * 0.7 / (np.sqrt((extra**2).mean()) + 1e-12)
    return np.concatenate([stems, extra[None]])


def _quantise(stems: np.ndarray) -> np.ndarray:
    """Scale the whole track so no stem or mixture sample exceeds the peak; int32 (S, C, T)."""
    peak = max(np.abs(stems).max(), np.abs(stems.sum(axis=0)).max(), 1e-12)
    return np.round(stems * (_PEAK * _INT16 / peak)).astype(np.int32)


def _write_int16(path: Path, data: np.ndarray, samplerate: int) -> None:
    """Write (C, T) integer samples as 16-bit wav, atomically (temp file + rename)."""
    with atomic_write(path) as tmp:
        soundfile.write(tmp, data.T.astype(np.int16), samplerate, subtype="PCM_16", format="WAV")


def make_synthetic_dataset(
    root: str | Path,
    tracks_per_split: Mapping[str, int] | None = None,
    seconds: float = 8.0,
    samplerate: int = 44100,
    seed: int = 0,
    sources: Sequence[str] = MUSDB_SOURCES,
) -> Path:
    """Write ``root/<split>/<split>-NNN/{mixture,<source>...}.wav``.

    Args:
        root: output folder (created; existing track folders of the same names are
            overwritten).
        tracks_per_split: number of tracks per split folder (default ``{"train": 8,
            "valid": 2, "test": 2}``).
        seconds: length of every track.
        samplerate: sample rate of the files.
        seed: base seed; the same seed always writes the same files.
        sources: the stems to write, any of :data:`SYNTHETIC_SOURCES` in any order (default the
            four MUSDB stems); ``mixture.wav`` is the sum of these.

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: a non-positive length or sample rate, a negative track count, or an
            unknown or repeated source name.
    """
    splits = dict(tracks_per_split or {"train": 8, "valid": 2, "test": 2})
    if seconds <= 0 or samplerate <= 0:
        raise ConfigError(f"seconds and samplerate must be positive, got {seconds}, {samplerate}")
    if any(count < 0 for count in splits.values()):
        raise ConfigError(f"track counts must be >= 0, got {splits}")
    unknown = [name for name in sources if name not in SYNTHETIC_SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        raise ConfigError(
            f"synthetic sources must be distinct names among {', '.join(SYNTHETIC_SOURCES)}, "
            f"got {list(sources)}"
        )
    rows = [SYNTHETIC_SOURCES.index(name) for name in sources]
    out = Path(root).expanduser()
    for split, count in splits.items():
        for index in range(count):
            rng = np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])
            track = synth_track(seconds, samplerate, rng, piano="piano" in sources)
            stems = _quantise(track[rows])
            folder = out / split / f"{split}-{index:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for name, stem in zip(sources, stems, strict=True):
                _write_int16(folder / f"{name}.wav", stem, samplerate)
            _write_int16(folder / "mixture.wav", stems.sum(axis=0), samplerate)
    return out
