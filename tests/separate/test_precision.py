"""``--precision``: where each precision is offered, and what bf16 does to the numbers.

bf16 keeps 8 significant bits: each rounding has relative error at most u = 2**-8 (rms
u / sqrt(12) for uniformly distributed rounding errors). A forward pass rounds the input of each
of its L conv/linear layers once, so the output's rms relative error grows like
sqrt(L) * u / sqrt(12) ~ 0.4 % for L ~ 16 (SNR ~ 48 dB) before any amplification by the
network. The bound asserted below, 25 dB, leaves a factor of ~14 for that amplification
(random, untrained weights are badly conditioned); the assertion that bf16 differs from fp32 at
all proves that the forward really ran in bf16.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from demucs_rr.cli import main
from demucs_rr.errors import ConfigError
from demucs_rr.hub.package import save_package
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.separate import precision
from demucs_rr.separate.api import Separator
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]


def _tiny_htdemucs() -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(
        sources=SOURCES,
        channels=8,
        depth=4,
        bottom_channels=16,
        t_layers=2,
        t_heads=2,
        dconv_mode=3,
        segment=Fraction(1, 2),
    ).eval()


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    ref64, err = ref.double(), (est.double() - ref.double())
    return 10 * math.log10(float(ref64.pow(2).sum()) / max(float(err.pow(2).sum()), 1e-300))


def test_precisions_offered_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    precision.check_precision("fp32", cpu)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA or MPS device"):
        precision.check_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown precision"):
        precision.check_precision("int8", cpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(ConfigError, match="emulated"):
        precision.check_precision("bf16", cpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    precision.check_precision("bf16", cpu)


def test_bf16_forward_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch computes bf16 on any CPU (emulated where slow), so the numbers are checked everywhere
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    model = _tiny_htdemucs()
    mix = make_tone_mix(1.3)
    fp32 = Separator(model, device="cpu").separate_tensor(mix, 44100)
    bf16 = Separator(model, device="cpu", precision="bf16").separate_tensor(mix, 44100)
    # the CPU bf16 path runs a bf16 copy: the caller's model keeps its float32 weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name in SOURCES:
        assert bf16[name].dtype == torch.float32
        snr = _snr_db(fp32[name], bf16[name])
        assert math.isfinite(snr), f"{name}: bf16 output identical to fp32 (autocast not applied)"
        assert snr > 25, f"{name}: bf16 SNR {snr:.1f} dB vs fp32"


def test_cli_refuses_fp16_on_cpu(tmp_path, capsys) -> None:
    import soundfile

    package = save_package(_tiny_htdemucs(), tmp_path / "tiny.safetensors")
    song = tmp_path / "song.wav"
    soundfile.write(song, make_tone_mix(0.5).T.numpy(), 44100)
    code = main(
        [
            "separate",
            str(song),
            "-n",
            str(package),
            "-d",
            "cpu",
            "--precision",
            "fp16",
            "-o",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp16 needs a CUDA or MPS device" in err[0]
    assert not (tmp_path / "out" / "tiny").exists()


def test_serve_refuses_fp16_on_cpu_before_starting(tmp_path, capsys) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    package = save_package(_tiny_htdemucs(), tmp_path / "tiny.safetensors")
    jobs = tmp_path / "jobs"
    argv = ["serve", "-n", str(package), "-d", "cpu", "--precision", "fp16"]
    code = main([*argv, "--jobs-dir", str(jobs), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp16 needs a CUDA or MPS device" in err[0]
