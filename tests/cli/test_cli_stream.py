"""``separate --stream`` with a causal Conv-TasNet package."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from demucs_rr.cli import main
from demucs_rr.hub.package import save_package
from tests.helpers.audio import make_tone_mix

SOURCES = ["drums", "bass", "other", "vocals"]


def _tasnet(tmp_path, causal: bool):
    from demucs_rr.models import tasnet

    torch.manual_seed(0)
    model = tasnet.ConvTasNet(
        SOURCES,
        N=16,
        L=20,
        B=8,
        H=16,
        P=3,
        X=3,
        R=2,
        causal=causal,
        norm_type="cLN" if causal else "gLN",
        segment_length=44100,
    )
    return save_package(model, tmp_path / f"tas_{int(causal)}.safetensors")


def test_stream_matches_offline_one_pass(tmp_path, capsys):
    pkg = _tasnet(tmp_path, causal=True)
    song = tmp_path / "song.wav"
    sf.write(song, make_tone_mix(0.7).T.numpy(), 44100, subtype="FLOAT")
    common = [str(song), "-n", str(pkg), "--float32", "-q", "--clip-mode", "none"]
    assert (
        main(["separate", *common, "-o", str(tmp_path / "s"), "--stream", "--block-size", "333"])
        == 0
    )
    err = capsys.readouterr().err
    assert "latency 19 samples" in err and "real-time factor" in err
    assert main(["separate", *common, "-o", str(tmp_path / "o"), "--no-split"]) == 0
    for stem in SOURCES:
        a, _ = sf.read(tmp_path / "s" / "tas_1" / "song" / f"{stem}.wav")
        b, _ = sf.read(tmp_path / "o" / "tas_1" / "song" / f"{stem}.wav")
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max() + 1e-7


def test_stream_refuses_non_causal_model(tmp_path, capsys):
    pkg = _tasnet(tmp_path, causal=False)
    song = tmp_path / "song.wav"
    sf.write(song, make_tone_mix(0.1).T.numpy(), 44100)
    code = main(
        ["separate", "-q", str(song), "-n", str(pkg), "-o", str(tmp_path / "o"), "--stream"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "causal" in err and "Traceback" not in err
    assert not list((tmp_path / "o").rglob("*.wav"))
