"""Every command of ``docs/leaderboard.md`` runs as written, top to bottom, in one empty folder.

Made before the first line, standing in for what a reader has: ``musdb18hq/`` (the page's
``/data/musdb18hq``), a MUSDB18-HQ test set of two short tracks; ``separated/mdx23c/``, another
tool's stems of them; and ``htdemucs`` served from ``--repo`` as a tiny seeded HT Demucs (the
page is about scoring, not about the model). Only :data:`SUBSTITUTIONS` change the lines: the
dataset's place, and sizes small enough for a test. Then the files, tables and numbers the page
promises are checked.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.docs_pages import reader_environment, run_lines

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "leaderboard.md"
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
TRACKS = ("Al James - Schoolboy Facination", "Zeno - Signs")
STEMS = ("drums", "bass", "other", "vocals")

SUBSTITUTIONS = (
    ("/data/musdb18hq", "musdb18hq"),
    ("make_leaderboard_set.py /tmp/lb", "make_leaderboard_set.py lb --tracks 2 --min-seconds 3"
     " --max-seconds 4"),
    ("bench_leaderboard.py /tmp/lb --museval-tracks 2", "bench_leaderboard.py lb"
     " --museval-tracks 1 --repeats 1 --out bench/bench_leaderboard.md"),
)  # fmt: skip
"""The changes made to the page's lines (besides ``--repo`` after ``-n htdemucs``): the
dataset's place, 2 generated tracks of 3-4 s instead of 50 of 3.5-5 minutes, one museval
track, and the benchmark's report out of the checkout's ``tools/results``."""


def page_lines() -> list[str]:
    """The command lines of every ``bash`` block, in page order (continuations joined,
    comments and blank lines dropped)."""
    lines = []
    for block in BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split(" #")[0].split())
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_the_page_shows_the_commands_the_test_expects() -> None:
    lines = page_lines()
    text = "\n".join(lines)
    for old, _ in SUBSTITUTIONS:
        assert old in text, f"{old!r} is no longer on the page: update the test"
    assert sum(line.startswith("demucs-rr evaluate") for line in lines) == 2
    assert sum(line.startswith("demucs-rr leaderboard") for line in lines) >= 3


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.T, 44100, subtype="PCM_16")


def _dataset(work: Path) -> None:
    """``musdb18hq/test/<track>/*.wav`` (2 s of noise per stem, the mixture their sum) and
    ``separated/mdx23c/<track>/<stem>.wav`` (each stem plus a fifth of the next one)."""
    rng = np.random.default_rng(0)
    (work / "musdb18hq" / "train").mkdir(parents=True)
    for track in TRACKS:
        stems = 0.05 * rng.standard_normal((4, 2, 88200))
        for k, stem in enumerate(STEMS):
            _write(work / "musdb18hq" / "test" / track / f"{stem}.wav", stems[k])
            estimate = stems[k] + 0.2 * stems[(k + 1) % 4]
            _write(work / "separated" / "mdx23c" / track / f"{stem}.wav", estimate)
        _write(work / "musdb18hq" / "test" / track / "mixture.wav", stems.sum(0))


def _stand_in(repo: Path) -> None:
    """A tiny HT Demucs under every file name of the ``htdemucs`` release."""
    from demucs_rr.hub import save_package
    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from tests.helpers.models import tiny_htdemucs

    repo.mkdir()
    package = save_package(tiny_htdemucs(), repo / "tiny.safetensors")
    for sig in OFFICIAL_BAGS["htdemucs"].spec.models:
        (repo / f"{sig}.safetensors").symlink_to(package.name)


def _run_page(work: Path, env: dict[str, str], repo: Path) -> dict[str, str]:
    """Run every line of the page in ``work``; stdout by line."""
    lines = page_lines()
    commands = []
    for line in lines:
        for old, new in SUBSTITUTIONS:
            line = line.replace(old, new)
        commands.append(line.replace("-n htdemucs", f"-n htdemucs --repo {shlex.quote(str(repo))}"))
    return dict(zip(lines, run_lines(commands, work, env), strict=True))


@pytest.mark.integration
def test_every_command_of_the_page_runs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _dataset(work)
    (work / "tools").symlink_to(REPO / "tools")
    _stand_in(tmp_path / "repo")
    results = REPO / "tools" / "results" / "bench_leaderboard.json"
    before = results.stat().st_mtime_ns
    env = reader_environment(tmp_path / "bin", offline=True)
    outputs = _run_page(work, env, tmp_path / "repo")

    for model in ("htdemucs", "mdx23c"):  # the result files the page names
        out = work / "evaluation" / model / "musdb-hq-test"
        assert sorted(p.stem for p in (out / "test").glob("*.json")) == list(TRACKS)
        for name in ("summary.md", "summary.csv", "summary.json", "sdr_boxplot.png"):
            assert (out / name).is_file(), out / name
    board = outputs["demucs-rr leaderboard evaluation/"]
    assert "SDR museval (median)" in board and "SDR global eps=1e-07 (mean)" in board
    for name in ("board.md", "board.json", "stems.png"):
        assert (work / name).is_file(), name
    with open(work / "board.csv", newline="", encoding="utf-8") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert rows["mdx23c"]["tracks"] == rows["htdemucs"]["tracks"] == "2"
    compared = [text for line, text in outputs.items() if "--compare" in line]
    assert len(compared) == 2 and all("Wilcoxon" in text for text in compared)

    made = sorted(p.name for p in (work / "lb" / "musdb" / "test").iterdir() if p.is_dir())
    assert made == ["track00", "track01"] and (work / "lb" / "estimates" / "leak").is_dir()
    bench = json.loads((work / "bench" / "bench_leaderboard.json").read_text())
    assert bench["full"]["tracks"] == bench["sdr"]["tracks"] == 2
    (row,) = bench["side_by_side"]
    assert max(row["max_abs_diff_db"].values()) <= 1e-3  # the page's parity claim, vs museval
    assert results.stat().st_mtime_ns == before  # the checkout's results are left alone
