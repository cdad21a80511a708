"""Shared conventions: cache folder, torchrun ranks and the device vocabulary of every command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demucs_rr.distributed import torchrun_ranks
from demucs_rr.errors import ConfigError
from demucs_rr.runtime import cache_dir, check_device, resolve_device


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DEMUCS_RR_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "demucs_rr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "demucs_rr"


def test_torchrun_ranks() -> None:
    assert torchrun_ranks({}) == (0, 1, 0)
    assert torchrun_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert torchrun_ranks({"RANK": "2", "WORLD_SIZE": "4"})[2] == 2
    with pytest.raises(ConfigError, match="bad torchrun environment variable"):
        torchrun_ranks({"RANK": "x"})
    with pytest.raises(ConfigError, match="inconsistent torchrun environment: RANK=4"):
        torchrun_ranks({"RANK": "4", "WORLD_SIZE": "4"})


def test_device_names() -> None:
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert check_device(name) == name
    for name in ("gpu", "cuda:", "cuda:x", "CPU", ""):
        with pytest.raises(
            ConfigError,
            match=r"device '.*': not one of auto, cpu, cuda, "
            r"cuda:N, mps$",
        ):
            check_device(name)
    with pytest.raises(ConfigError, match="device 'mps': not supported here; use auto, cpu"):
        check_device("mps", allow_mps=False)
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolve_device_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")
    for name, why in (("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("mps", "Apple MPS")):
        with pytest.raises(ConfigError, match=rf"device '{name}': {why}.*; use cpu \(or auto\)"):
            resolve_device(name)


def test_resolve_device_picks_the_local_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 0)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(ConfigError, match=r"device 'cuda:2': only 2 CUDA GPU\(s\) are visible"):
        resolve_device("cuda:2")
