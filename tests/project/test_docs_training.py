"""The training commands of ``docs/training.md`` work as written, copied top to bottom by a
stranger.

The page marks its command blocks with an HTML comment before the fence:

* ``<!-- docs-test: run -->``: runs anywhere; executed here line by line with bash in an
  empty folder, with only :data:`SUBSTITUTIONS` applied (fewer epochs, so the test is quick);
* ``<!-- docs-test: needs-musdb -->``: needs MUSDB18-HQ; not trained here, but every run folder
  it resumes, exports or separates with must be made by an earlier line, and every training line
  must resolve its config (``--print-config``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers.docs_pages import reader_environment, run_lines

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "training.md"
MARKER = re.compile(r"<!-- docs-test: ([\w-]+) -->\s*```bash\n(.*?)```", re.DOTALL)

KNOWN_BLOCKS = ("needs-musdb", "run", "finetune", "finetune-per-stem", "finetune-download")
"""The marked blocks of the page; the fine-tuning ones are tested in test_docs_finetune.py."""

SUBSTITUTIONS = (
    ("epochs=40", "epochs=1"),
    ("epochs=60", "epochs=2"),
    ("--threads 2", "--threads 1"),
)
"""The only changes made to the runnable block: train 1 epoch, then resume to epoch 2, on one
thread like the rest of the suite (2 threads on a 2-core box that runs other jobs too can make
an epoch several times slower)."""


def training_blocks() -> dict[str, str]:
    """Marked ``bash`` blocks of ``docs/training.md``, by marker name (exactly one of each)."""
    found = MARKER.findall(PAGE.read_text(encoding="utf-8"))
    names = sorted(name for name, _ in found)
    assert names == sorted(KNOWN_BLOCKS), f"marked blocks in {PAGE.name}: {names}"
    return dict(found)


def command_lines(block: str) -> list[str]:
    """Non-empty lines of a block, backslash continuations joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def commands(line: str) -> list[list[str]]:
    """The argv of each ``&&``-chained command of ``line``, comments dropped."""
    argvs: list[list[str]] = [[]]
    for token in shlex.split(line, comments=True):
        if token == "&&":
            argvs.append([])
        else:
            argvs[-1].append(token)
    return [argv for argv in argvs if argv]


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _train_args(argv: list[str]) -> list[str] | None:
    """Arguments after ``train`` of a ``demucs-rr train`` or ``torchrun -m demucs_rr train``."""
    if argv[0] == "demucs-rr" or (argv[0] == "torchrun" and "demucs_rr" in argv):
        rest = argv[argv.index("train") :] if "train" in argv else []
        return rest[1:] if rest else None
    return None


def check_run_folders(block: str) -> None:
    """Every resumed, exported or loaded run folder was made by an earlier training line."""
    made: set[str] = set()
    for line in command_lines(block):
        for argv in commands(line):
            train = _train_args(argv)
            run_dir = _option(train, "--run-dir") if train is not None else None
            if train is not None and "--print-config" in train:
                continue
            if train is not None and "--resume" in train:
                assert run_dir in made, f"{line!r} resumes {run_dir}, which no earlier line made"
            elif train is not None:
                assert run_dir, f"{line!r} does not name its --run-dir"
                made.add(run_dir)
            elif argv[:2] == ["demucs-rr", "export"]:
                assert argv[2] in made, f"{line!r} exports {argv[2]}, which no earlier line made"
            model = _option(argv, "-n")
            if model and model.endswith(".safetensors"):
                assert str(Path(model).parent) in made, f"{line!r} loads a package of no run"


def test_blocks_are_marked_and_chain() -> None:
    blocks = training_blocks()
    for name in ("needs-musdb", "run"):
        check_run_folders(blocks[name])
    for old, _ in SUBSTITUTIONS:
        assert old in blocks["run"], f"{old!r} is no longer in the runnable block: update the test"


def test_chain_check_catches_a_broken_resume() -> None:
    with pytest.raises(AssertionError, match="no earlier line made"):
        check_run_folders(
            "demucs-rr train --run-dir runs/a x=1\ndemucs-rr train --run-dir runs/b --resume\n"
        )
    with pytest.raises(AssertionError, match="does not name its --run-dir"):
        check_run_folders("demucs-rr train model=tiny epochs=40\n")


def test_musdb_block_configs_resolve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from demucs_rr import cli

    checked = 0
    for line in command_lines(training_blocks()["needs-musdb"]):
        for argv in commands(line):
            train = _train_args(argv)
            if train is None or "--resume" in train:
                continue
            extra = [] if "--print-config" in train else ["--print-config"]
            assert cli.main(["train", *train, *extra]) == 0, line
            assert "epochs:" in capsys.readouterr().out, line
            checked += 1
    assert checked >= 3


@pytest.mark.integration
def test_runnable_block_runs(tmp_path: Path) -> None:
    """The block, line by line in an empty folder, as a user of this checkout would run it."""
    block = training_blocks()["run"]
    for old, new in SUBSTITUTIONS:
        block = block.replace(old, new)
    work = tmp_path / "work"
    work.mkdir()
    (work / "tools").symlink_to(REPO / "tools")
    lines = command_lines(block)
    outputs = run_lines(lines, work, reader_environment(tmp_path / "bin"))
    for line, out in zip(lines, outputs, strict=True):
        if "--resume" in line:  # continued the run rather than starting it over
            assert "epoch 2/2" in out and "epoch 1/2" not in out, out
    assert len(list((work / "separated").rglob("*.wav"))) == 4
