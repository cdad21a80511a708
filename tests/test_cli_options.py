"""Command-line options shared by every command: ``--threads``, one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.cli import main, separate_main


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record torch's thread setters instead of changing the test process."""
    calls: dict[str, list[int]] = {"intra": [], "interop": []}
    monkeypatch.setattr(torch, "set_num_threads", calls["intra"].append)
    monkeypatch.setattr(torch, "set_num_interop_threads", calls["interop"].append)
    return calls


def test_threads_before_or_after_the_command(
    thread_calls: dict[str, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--threads", "3", "models", "list"]) == 0
    assert main(["models", "list", "--threads", "4"]) == 0
    assert main(["models", "--threads", "5"]) == 0
    assert thread_calls == {"intra": [3, 4, 5], "interop": [3, 4, 5]}
    assert main(["models", "list"]) == 0
    assert thread_calls["intra"] == [3, 4, 5]  # no --threads: torch's default is left alone


def test_threads_on_train_and_separate(
    thread_calls: dict[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--threads", "2", "model=tiny", "dset=synthetic", "--print-config"]) == 0
    assert "epochs: 40" in capsys.readouterr().out
    # set before any work: the missing input fails afterwards, with the threads already set
    assert separate_main(["--threads", "6", str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    for command in (["export"], ["evaluate"], ["leaderboard"]):
        with pytest.raises(SystemExit):  # their required arguments are missing
            main([*command, "--threads", "7"])
    assert thread_calls["intra"] == [2, 6]


def test_interop_threads_already_fixed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []

    def too_late(threads: int) -> None:
        raise RuntimeError("Error: cannot set number of interop threads after parallel work")

    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "set_num_interop_threads", too_late)
    assert main(["--threads", "2", "models", "list"]) == 0
    assert calls == [2]


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
