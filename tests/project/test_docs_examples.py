"""Every command the README and docs/ show works as written.

``separate`` examples run for real against the default architecture: an HT Demucs with the
release's structure (segment, sources, depth, the cross-domain transformer) at reduced width
(seeded weights) stands in for every released HT Demucs member, served from ``--repo`` so
nothing is downloaded; their inputs are short generated songs. The engine runs exactly as for
the full width, which costs 5x more per chunk and gains the test nothing. Every other
``demucs-rr`` command (evaluate, serve, models, train, export, leaderboard, also under
``torchrun``) must at least parse. The training walkthrough runs in test_docs_training.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs_rr.cli import build_parser
from demucs_rr.hub.releases import OFFICIAL_BAGS
from demucs_rr.separate.precision import cpu_has_bf16
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.DOTALL)
COMMAND = re.compile(r"^(?:\w+=\S+ )*(separate|demucs-rr|torchrun)\b")
HT_RELEASES = ("htdemucs", "htdemucs_ft")
"""Released names whose members are HT Demucs: the stand-in serves them."""


def example_lines() -> list[tuple[str, str]]:
    """``(page, command line)`` of every demucs_rr command in a code block (comments dropped;
    a line shown on several pages once)."""
    found: dict[str, str] = {}
    for page in PAGES:
        for block in BLOCK.findall(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(line.split(" #")[0].split())
                if COMMAND.match(line):
                    found.setdefault(line, page.name)
    return [(page, line) for line, page in found.items()]


def option_examples() -> list[str]:
    """The example column of the ``separate`` options table (docs/separate.md)."""
    text = (REPO / "docs" / "separate.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    examples = []
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[-1]
        examples += [e for e in re.findall(r"`([^`]+)`", cell) if e.startswith(("-", "separate"))]
    return examples


def demucs_argv(line: str) -> list[list[str]]:
    """The ``demucs-rr`` arguments of each command of ``line`` (``separate X`` becomes
    ``separate X``; ``torchrun ... -m demucs_rr ARGS`` gives ``ARGS``)."""
    commands: list[list[str]] = [[]]
    for token in shlex.split(line):
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for argv in commands:
        while argv and re.fullmatch(r"\w+=.*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv[:1] == ["separate"]:
            result.append(argv)
        elif argv[:1] == ["demucs-rr"]:
            result.append(argv[1:])
        elif argv[:1] == ["torchrun"]:
            result.append(argv[argv.index("demucs_rr") + 1 :])
    return result


EXAMPLES = example_lines()


def test_the_docs_show_separate_examples() -> None:
    """The collection above finds the examples (guards against a format change)."""
    separate = [line for _, line in EXAMPLES if line.startswith("separate ")]
    assert len(separate) >= 8 and len(EXAMPLES) >= 30


@pytest.mark.parametrize(("page", "line"), EXAMPLES, ids=[f"{p}: {x[:50]}" for p, x in EXAMPLES])
def test_every_command_parses(page: str, line: str) -> None:
    for argv in demucs_argv(line):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse's usage error
            pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code})")


OPTIONS = option_examples()


def test_the_options_table_has_examples() -> None:
    assert len(OPTIONS) >= 25 and "--two-stems vocals" in OPTIONS


@pytest.fixture(scope="module")
def default_model() -> object:
    """The default architecture (full-size HT Demucs, seeded), built once for the table."""
    import torch

    from demucs_rr.models.htdemucs import HTDemucs

    sys.path.insert(0, str(REPO / "tools"))
    from bench_hybrid import RELEASE_KWARGS

    torch.manual_seed(0)
    return HTDemucs(**RELEASE_KWARGS).eval()


@pytest.mark.parametrize("example", OPTIONS)
def test_option_examples_hold_for_the_default_model(example: str, default_model: object) -> None:
    """Each option example of the table, added to ``separate song.wav``, is accepted with the
    default architecture: parsed, no contradiction, and the engine options fit the model."""
    from demucs_rr.separate.api import Separator
    from demucs_rr.separate.options import check_separate_options, engine_options
    from demucs_rr.separate.outputs import select_stems

    snippet = shlex.split(example)
    argv = snippet if snippet[0] == "separate" else ["separate", "song.wav", *snippet]
    args = build_parser().parse_args(argv)
    check_separate_options(args)
    if args.stream or args.name != "htdemucs":  # the causal model; other models: code blocks
        return
    sep = Separator(default_model, device=args.device, options=engine_options(args))  # type: ignore[arg-type]
    select_stems(sep.sources, args.stems, args.two_stems, args.other_method)


def _song(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, 0.1 * rng.standard_normal((int(seconds * 44100), 2)), 44100)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every HT Demucs member of the releases, as one seeded model of the
    release structure at reduced width (module docstring)."""
    import torch

    from demucs_rr.hub import save_package
    from demucs_rr.models.htdemucs import HTDemucs

    sys.path.insert(0, str(REPO / "tools"))
    from bench_hybrid import RELEASE_KWARGS

    repo = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    narrow = {**RELEASE_KWARGS, "channels": 8, "bottom_channels": 0, "t_layers": 1}
    package = save_package(HTDemucs(**narrow), repo / "ht.safetensors")
    for name in HT_RELEASES:
        for sig in OFFICIAL_BAGS[name].spec.models:
            link = repo / f"{sig}.safetensors"
            if not link.exists():
                link.symlink_to(package.name)
    return repo


SEPARATE = [
    (page, line)
    for page, line in EXAMPLES
    if line.startswith("separate ") and "runs/" not in line  # runs: test_docs_training.py
]


@pytest.mark.integration
@pytest.mark.parametrize(("page", "line"), SEPARATE, ids=[f"{p}: {x[:50]}" for p, x in SEPARATE])
def test_separate_examples_run(page: str, line: str, stand_in: Path, tmp_path: Path) -> None:
    argv = demucs_argv(line)[0]
    if "bf16" in argv and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions (the example says so)")
    name = argv[argv.index("-n") + 1] if "-n" in argv else "htdemucs"
    if name.endswith(".safetensors"):
        _causal_tasnet(tmp_path / name)
    elif name.endswith(".ckpt"):  # an MSST checkpoint and its config: the parity fixture's
        case = SHARED / "fixtures" / "msst" / "bs_roformer_vocals"
        if not case.is_dir():
            pytest.skip(f"MSST parity fixtures not found at {case} (present in CI only)")
        shutil.copy(case / "model.ckpt", tmp_path / name)
        shutil.copy(case / "config.yaml", tmp_path / "config.yaml")
    elif name not in HT_RELEASES:
        pytest.fail(f"{page}: `{line}` names {name}, which has no stand-in here")
    for token in argv[1:]:
        if re.fullmatch(r"[\w.-]+\.(mp3|wav|flac)", token) and token != name:
            _song(tmp_path / token)
        elif token.endswith("/"):  # a folder of songs, one of them in a sub-folder
            _song(tmp_path / token / "one.wav")
            _song(tmp_path / token / "cd2" / "two.flac")
    env = {**os.environ, "DEMUCS_RR_CACHE": str(tmp_path / "cache"), "DEMUCS_RR_REMOTE": "x:/"}
    run = subprocess.run(
        [sys.executable, "-m", "demucs_rr", "--threads", "2", *argv, "--repo", str(stand_in)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{page}: `{line}`\n{run.stderr[-2000:]}"
    outputs = [p for p in tmp_path.rglob("*") if p.suffix in (".wav", ".flac", ".mp3")]
    assert len(outputs) > sum(1 for t in argv if t.endswith((".mp3", ".wav", ".flac"))), line


def _causal_tasnet(path: Path) -> None:
    """The causal Conv-TasNet the streaming example names (small, seeded)."""
    import torch

    from demucs_rr.hub import save_package
    from demucs_rr.models.tasnet import ConvTasNet

    torch.manual_seed(0)
    model = ConvTasNet(["drums", "bass", "other", "vocals"], N=16, B=8, H=16, X=2, R=1,
                       norm_type="cLN", causal=True)  # fmt: skip
    save_package(model, path)
