"""The fine-tuning commands of ``docs/training.md#fine-tuning`` work as written.

* ``<!-- docs-test: finetune -->`` then ``<!-- docs-test: finetune-per-stem -->``: run anywhere;
  executed line by line with bash in one empty folder, every ``epochs=N`` made ``epochs=1`` and
  ``--threads 2`` made ``--threads 1``;
* ``<!-- docs-test: finetune-download -->``: released models; every line's config is resolved
  (``--print-config``) with ``init_repo`` pointing at a tiny seeded HT Demucs standing in for
  every HT Demucs of ``htdemucs`` and ``htdemucs_ft``, so nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from demucs_rr.hub.package import save_package
from demucs_rr.hub.releases import OFFICIAL_BAGS
from tests.helpers.docs_pages import reader_environment, run_lines
from tests.helpers.models import tiny_htdemucs
from tests.project.test_docs_training import (
    REPO,
    _train_args,
    check_run_folders,
    command_lines,
    commands,
    training_blocks,
)


def _quick(block: str) -> str:
    return re.sub(r"\bepochs=\d+", "epochs=1", block).replace("--threads 2", "--threads 1")


def test_finetune_blocks_chain() -> None:
    blocks = training_blocks()
    check_run_folders(blocks["finetune"])
    assert "epochs=" in blocks["finetune"] and "--threads 2" in blocks["finetune"]
    made = {argv[argv.index("--run-dir") + 1] for argv in _all_argv(blocks["finetune-per-stem"])
            if "--run-dir" in argv}  # fmt: skip
    exported = {argv[2] for argv in _all_argv(blocks["finetune-per-stem"]) if argv[1] == "export"}
    assert made == exported and len(made) == 4


def _all_argv(block: str) -> list[list[str]]:
    return [argv for line in command_lines(block) for argv in commands(line)]


@pytest.mark.integration
def test_finetune_blocks_run(tmp_path: Path) -> None:
    """Both runnable blocks, in order, in one empty folder, as a user of this checkout would."""
    blocks = training_blocks()
    work = tmp_path / "work"
    work.mkdir()
    (work / "tools").symlink_to(REPO / "tools")
    lines = command_lines(_quick(blocks["finetune"] + blocks["finetune-per-stem"]))
    outputs = run_lines(lines, work, reader_environment(tmp_path / "bin"))
    text = "\n".join(outputs)
    assert "stems kept: drums, bass, other, vocals; added: piano (from other); dropped: -" in text
    assert "LoRA rank 4 on " in text and "freeze matched" in text
    assert "fine-tuned from tiny.safetensors (sha256 " in text and "+piano, LoRA rank 4" in text
    assert "before: eval/base, after: eval/piano" in text
    assert re.search(r"\| piano \| — \| [-\d.]+ \|", text), text[-3000:]
    stems = sorted(p.stem for p in (work / "separated").rglob("*.wav"))
    assert stems == ["bass", "drums", "other", "vocals"]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every HT Demucs member of htdemucs and htdemucs_ft as one tiny seeded model."""
    repo = tmp_path_factory.mktemp("repo")
    package = save_package(tiny_htdemucs(seed=1), repo / "ht.safetensors")
    for name in ("htdemucs", "htdemucs_ft"):
        for sig in OFFICIAL_BAGS[name].spec.models:
            (repo / f"{sig}.safetensors").symlink_to(package.name)
    return repo


def test_download_block_configs_resolve(stand_in: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from demucs_rr import cli

    lines = command_lines(training_blocks()["finetune-download"])
    for line in lines:
        (argv,) = commands(line)
        train = _train_args(argv)
        assert train is not None, line
        assert cli.main(["train", *train, f"init_repo={stand_in}", "--print-config"]) == 0, line
        out = capsys.readouterr().out
        assert "arch: HTDemucs" in out and re.search(r"sha256: [0-9a-f]{64}", out), line
    assert len(lines) >= 3
