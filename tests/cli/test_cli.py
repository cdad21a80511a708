"""The ``separate`` command end to end, on generated audio and a fixed-fraction model package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from demucs_rr.models.testing import FractionModel
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]
FRACTIONS = [0.1, 0.2, 0.3, 0.4]
QUANT = 1 / 32767


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    model = FractionModel(SOURCES, FRACTIONS, segment_length=20000, crop=13)
    return save_package(model, tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture
def song(tmp_path) -> Path:
    path = tmp_path / "in" / "my song.wav"
    path.parent.mkdir()
    sf.write(path, make_tone_mix(1.5).T.numpy(), 44100, subtype="PCM_16")
    return path


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(["separate", "-q", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def read(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return data.T, sr


def test_stems_sum_to_mixture(package, song, tmp_path, capsys):
    code, _ = run([str(song), "-n", str(package), "-o", str(tmp_path / "out")], capsys)
    assert code == 0
    folder = tmp_path / "out" / "frac" / "my song"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in SOURCES)
    mix, _ = read(song)
    stems = [read(folder / f"{s}.wav") for s in SOURCES]
    assert all(sr == 44100 and x.shape == mix.shape for x, sr in stems)
    total = sum(x for x, _ in stems)
    assert np.abs(total - mix).max() <= 4 * QUANT + 1e-6
    vocals = stems[3][0]
    assert np.abs(vocals - 0.4 * mix).max() <= 2 * QUANT


def test_two_stems_add_and_minus(package, song, tmp_path, capsys):
    mix, _ = read(song)
    for method in ("add", "minus"):
        out = tmp_path / method
        assert (
            run(
                [
                    str(song),
                    "-n",
                    str(package),
                    "-o",
                    str(out),
                    "--two-stems",
                    "vocals",
                    "--other-method",
                    method,
                    "--filename",
                    "{track}_{stem}.{ext}",
                ],
                capsys,
            )[0]
            == 0
        )
        names = sorted(p.name for p in out.iterdir())
        assert names == ["my song_no_vocals.wav", "my song_vocals.wav"]
        rest, _ = read(out / "my song_no_vocals.wav")
        assert np.abs(rest - 0.6 * mix).max() <= 3 * QUANT


def test_stem_subset_and_formats(package, song, tmp_path, capsys):
    out = tmp_path / "o"
    assert (
        run(
            [
                str(song),
                "-n",
                str(package),
                "-o",
                str(out),
                "--stems",
                "bass,drums",
                "--flac",
                "--int24",
                "--filename",
                "{stem}.{ext}",
            ],
            capsys,
        )[0]
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["bass.flac", "drums.flac"]
    assert sf.info(out / "bass.flac").subtype == "PCM_24"
    assert (
        run(
            [
                str(song),
                "-n",
                str(package),
                "-o",
                str(out),
                "--stems",
                "bass",
                "--mp3",
                "--mp3-bitrate",
                "128",
                "--filename",
                "{stem}.{ext}",
            ],
            capsys,
        )[0]
        == 0
    )
    data, sr = read(out / "bass.mp3")
    assert sr == 44100 and data.shape[0] == 2
    assert (
        run(
            [
                str(song),
                "-n",
                str(package),
                "-o",
                str(out),
                "--stems",
                "other",
                "--float32",
                "--filename",
                "{stem}.{ext}",
            ],
            capsys,
        )[0]
        == 0
    )
    assert sf.info(out / "other.wav").subtype == "FLOAT"


@pytest.mark.parametrize("rate", [8000, 48000, 192000])
def test_sample_rates(package, tmp_path, capsys, rate):
    path = tmp_path / f"r{rate}.flac"
    t = np.arange(int(0.5 * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    out = tmp_path / "o"
    assert run([str(path), "-n", str(package), "-o", str(out), "--stems", "vocals"], capsys)[0] == 0
    data, sr = read(out / "frac" / f"r{rate}" / "vocals.wav")
    assert sr == 44100 and abs(data.shape[1] - 22050) <= 1 and data.shape[0] == 2
    keep = tmp_path / "keep"
    assert (
        run(
            [
                str(path),
                "-n",
                str(package),
                "-o",
                str(keep),
                "--stems",
                "vocals",
                "--keep-sample-rate",
            ],
            capsys,
        )[0]
        == 0
    )
    data, sr = read(keep / "frac" / f"r{rate}" / "vocals.wav")
    assert sr == rate and abs(data.shape[1] - len(t)) <= 1


def test_six_channels_silence_and_tiny_inputs(package, tmp_path, capsys):
    six = tmp_path / "six.wav"
    sf.write(six, np.full((4410, 6), 0.1, dtype=np.float32), 44100, subtype="FLOAT")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((44100, 2)), 44100)
    short = tmp_path / "short.wav"
    sf.write(short, np.full((5, 2), 0.2), 44100, subtype="FLOAT")
    out = tmp_path / "o"
    argv = [str(six), str(silent), str(short), "-n", str(package), "-o", str(out), "--float32"]
    assert run(argv, capsys)[0] == 0
    for name, length in (("six", 4410), ("silent", 44100), ("short", 5)):
        data, _ = read(out / "frac" / name / "drums.wav")
        assert data.shape == (2, length) and np.isfinite(data).all()
    assert np.abs(read(out / "frac" / "silent" / "vocals.wav")[0]).max() == 0


def test_bad_inputs_one_line_exit_2(package, song, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    bad_mp3 = tmp_path / "bad.mp3"
    bad_mp3.write_bytes(b"\xff\xfb\x90\x00" + bytes(range(256)) * 8)
    nodir = tmp_path / "noaudio"
    nodir.mkdir()
    (nodir / "readme.txt").write_text("hi")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        [str(tmp_path / "missing.wav")],
        [str(nodir)],
        [str(empty)],
        [str(text)],
        [str(bad_mp3)],
        [str(song), "--stems", "guitar"],
        [str(song), "--two-stems", "piano"],
        [str(song), "--filename", "{track}/{nope}.{ext}"],
        [str(song), "--filename", "{track}.{ext}"],
        [str(song), "--filename", "../../{stem}.{ext}"],
        [
            str(song),
            "--filename",
            "{stem}.{ext",
        ],
        [str(song), "-o", str(blocker / "sub")],
        [str(song), "-n", "no_such_model"],
    ]
    out = tmp_path / "out"
    for argv in cases:
        code, err = run(
            [*argv, "-n", str(package), "-o", str(out)]
            if "-n" not in argv and "-o" not in argv
            else [*argv, "-n", str(package)]
            if "-n" not in argv
            else [*argv, "-o", str(out)],
            capsys,
        )
        lines = [line for line in err.splitlines() if line.startswith("error")]
        assert code == 2, (argv, err)
        assert len(lines) >= 1 and len(err.splitlines()) <= 2, err
    leftovers = list(out.rglob("*")) if out.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


def test_batch_reports_and_continues(package, song, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    out = tmp_path / "o"
    code, err = run([str(bad), str(song), "-n", str(package), "-o", str(out)], capsys)
    assert code == 1
    assert "bad.wav" in err and "1 of 2 inputs failed" in err
    assert (out / "frac" / "my song" / "vocals.wav").exists()
    assert not (out / "frac" / "bad").exists()


def test_same_output_names_refused_before_separating(package, song, tmp_path, capsys):
    """a/song.wav and b/song.wav would share stems: refused with nothing written."""
    other = tmp_path / "b" / song.name
    other.parent.mkdir()
    other.write_bytes(song.read_bytes())
    out = tmp_path / "o"
    code, err = run([str(song), str(other), "-n", str(package), "-o", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "would both write" in err and str(other) in err
    assert not any(p.is_file() for p in out.rglob("*"))
    # the same file named twice (or through a symlink-free second route) is separated once
    twice = [str(song), str(song.parent / ".." / "in" / song.name)]
    assert run([*twice, "-n", str(package), "-o", str(out)], capsys)[0] == 0
    assert (out / "frac" / "my song" / "vocals.wav").is_file()


def test_nul_byte_in_template_is_one_line(package, song, tmp_path, capsys):
    code, err = run([str(song), "-n", str(package), "--filename", "a\0{stem}.{ext}"], capsys)
    assert code == 2 and "NUL" in err and len(err.strip().splitlines()) == 1


def test_recursive_directory(package, tmp_path, capsys):
    for sub in ("a", "b/c"):
        (tmp_path / "music" / sub).mkdir(parents=True)
        sf.write(tmp_path / "music" / sub / "x.wav", np.zeros((441, 2)), 44100)
    out = tmp_path / "o"
    code, err = run([str(tmp_path / "music"), "-n", str(package), "-o", str(out)], capsys)
    assert code == 2 and "--recursive" in err
    assert run([str(tmp_path / "music"), "-r", "-n", str(package), "-o", str(out)], capsys)[0] == 0
    assert (out / "frac" / "a" / "x" / "drums.wav").exists()
    assert (out / "frac" / "b" / "c" / "x" / "drums.wav").exists()


def test_failed_write_leaves_no_partial_track(package, song, tmp_path, capsys, monkeypatch):
    import errno

    from demucs_rr.audio.blocks import BlockWriter

    real = BlockWriter.write
    paths: list[object] = []

    def flaky(self, wav):
        if self.path not in paths:
            paths.append(self.path)
        if len(paths) == 3:
            raise OSError(errno.ENOSPC, "disk full")
        return real(self, wav)

    monkeypatch.setattr(BlockWriter, "write", flaky)
    out = tmp_path / "o"
    code, err = run([str(song), "-n", str(package), "-o", str(out)], capsys)
    assert code == 2 and f"no space left on device while writing stems to {out}" in err
    assert list(out.rglob("*")) == []  # no staged file, no empty model/track folder


@pytest.mark.integration
def test_console_script_and_models_list(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demucs_rr", "separate", str(tmp_path / "x.mp3")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "x.mp3" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "demucs_rr", "models", "list"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "demucs" in proc.stdout and "tasnet" in proc.stdout


def test_api_does_not_modify_input(package):
    from demucs_rr import Separator

    sep = Separator(str(package))
    mix = make_tone_mix(0.3)
    before = mix.clone()
    stems = sep.separate_tensor(mix, 44100)
    assert torch.equal(mix, before)
    mean = float(mix.mean())  # the mean is shared equally between stems
    torch.testing.assert_close(stems["bass"], 0.2 * (mix - mean) + mean / 4, atol=1e-6, rtol=1e-5)
    assert sum(stems.values()).sub(mix).abs().max() < 1e-5


def test_truncated_mp3_separates_what_is_there(package, tmp_path, capsys):
    """A cut mp3 is indistinguishable from a shorter file: the decodable part is separated."""
    import lameenc

    rate = 44100
    pcm = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate) * 32767).astype(np.int16)
    enc = lameenc.Encoder()
    enc.set_bit_rate(128)
    enc.set_in_sample_rate(rate)
    enc.set_channels(1)
    data = enc.encode(pcm.tobytes()) + enc.flush()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2 + 17])  # cut in the middle of a frame
    out = tmp_path / "o"
    code, _ = run([str(cut), "-n", str(package), "-o", str(out), "--stems", "vocals"], capsys)
    assert code == 0
    got, _ = read(out / "frac" / "cut" / "vocals.wav")
    assert 0.4 * rate < got.shape[1] < 1.2 * rate


def test_progress_counts_samples_without_warnings(package, tmp_path, capsys):
    """Progress is counted in samples and shown in seconds: no clamping warning, no 0.57000001."""
    import warnings

    from demucs_rr import Separator

    path = tmp_path / "odd.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal((25137, 2)), 44100)
    sep = Separator(str(package), progress=True, shifts=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sep.separate_file(path)
        sep.separate_file_to(path, {"vocals": tmp_path / "v.wav"})
    err = capsys.readouterr().err
    assert "/1.1 s" in err and "0000" not in err
