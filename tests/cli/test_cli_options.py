"""Command-line options shared by every command: ``--threads``, one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.cli import main


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record torch's thread setters instead of changing the test process."""
    calls: dict[str, list[int]] = {"intra": [], "interop": []}
    monkeypatch.setattr(torch, "set_num_threads", calls["intra"].append)
    monkeypatch.setattr(torch, "set_num_interop_threads", calls["interop"].append)
    return calls


def test_threads_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``--threads`` is accepted before or after any command; its required arguments are then
    what is missing. (The entry points apply it: tests/test_process.py.)"""
    assert main(["train", "--threads", "2", "model=tiny", "dset=synthetic", "--print-config"]) == 0
    assert "epochs: 40" in capsys.readouterr().out
    for command in (["export"], ["evaluate"], ["leaderboard"]):
        with pytest.raises(SystemExit):  # their required arguments are missing
            main([*command, "--threads", "7"])
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", ""])
@pytest.mark.parametrize("where", ["top", "train", "separate"])
def test_bad_threads_exit_2_with_one_line(
    value: str, where: str, thread_calls: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "top": ["--threads", value, "models", "list"],
        "train": ["train", "model=tiny", "--threads", value, "--print-config"],
        "separate": ["separate", "song.wav", "--threads", value],
    }[where]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: argument --threads" in err, err
    assert thread_calls["intra"] == []


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["nope"],
        ["separate"],
        ["separate", "a.wav", "--overlap", "2"],
        ["train", "--resume", "--restart"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "--help" in err, (argv, err)


def test_resume_needs_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "config.yaml").write_text("epochs: 1\n")
    assert main(["train", "--resume", "epochs=60"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--run-dir" in err and "runs/tiny" in err, err
    assert main(["train", "--resume", "--run-dir", "runs/other"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "runs/tiny" in err, err
