#!/usr/bin/env bash
# Release smoke test: build the wheel, install it into a fresh venv outside the checkout and run
# the installed commands as a user would (help, separate with a tiny saved package, train
# --print-config). Usage: bash tools/smoke_installed.sh [WORKDIR]   (default: a new temp dir)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$work"
echo "smoke: building the wheel of $repo in $work"
python3 -m pip wheel -q --disable-pip-version-check --no-deps \
  -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/demucs_rr-*.whl)"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0
"$py" -m pip install -q --disable-pip-version-check "${wheel}"  # no extra: train works too
export PATH="$work/venv/bin:$PATH"

[[ "$(command -v demucs-rr)" == "$work/venv/bin/demucs-rr" ]]
demucs-rr --help >/dev/null
demucs-rr --version
separate --help >/dev/null
# the installed package must not be the checkout
"$py" -c "import demucs_rr, sys; assert '$repo' not in demucs_rr.__file__, demucs_rr.__file__"

"$py" - <<'PY'
import numpy as np
import soundfile as sf
import torch

from demucs_rr.hub import save_package
from demucs_rr.models.demucs_v2 import Demucs

torch.manual_seed(0)
model = Demucs(sources=["drums", "bass", "other", "vocals"], channels=4, depth=4,
               segment_length=44100)
save_package(model, "tiny.safetensors", name="tiny")
t = np.arange(3 * 44100) / 44100
sf.write("song.wav", 0.3 * np.stack([np.sin(440 * 2 * np.pi * t), np.sin(220 * 2 * np.pi * t)], 1), 44100)
PY
separate song.wav -n tiny.safetensors -o out --threads 1 -q
for stem in drums bass other vocals; do
  test -s "out/tiny/song/$stem.wav" || { echo "smoke: missing out/tiny/song/$stem.wav"; ls -R out; exit 1; }
done
demucs-rr train model=tiny dset=synthetic dset.root=data_synth --print-config | grep "segment" >/dev/null
# package data: the released bag files (models list) and the web page (serve extra not needed)
demucs-rr models list | grep "htdemucs_ft" >/dev/null
"$py" -c "import demucs_rr.serve, pathlib; assert (pathlib.Path(demucs_rr.serve.__file__).parent / 'static' / 'index.html').is_file()"
demucs-rr doctor >/dev/null
echo "smoke: installed wheel OK ($(basename "$wheel"))"
