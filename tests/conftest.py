"""Shared pytest fixtures: paths to ../shared data (skipped in a user's clone), one thread,
the small synthetic training set. Helpers are in ``tests/helpers``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from demucs_rr.data.synthetic import make_synthetic_dataset
from tests.helpers.training import RATE

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "official"
EVAL_DATA = SHARED / "eval-data"


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    """Folder of the official parity fixtures; skips when ../shared is absent (user's clone)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official parity fixtures not found at {FIXTURES} (present in CI only)")
    return FIXTURES


@pytest.fixture(scope="session")
def eval_data() -> Path:
    """Folder of third-party evaluation audio; skips when ../shared is absent."""
    if not EVAL_DATA.is_dir():
        pytest.skip(f"evaluation data not found at {EVAL_DATA} (present in CI only)")
    return EVAL_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run with one intra-op thread (the fixtures were produced that way), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train + 2 valid synthetic tracks of 6 s at 16 kHz."""
    root = tmp_path_factory.mktemp("synth_small")
    return make_synthetic_dataset(root, {"train": 4, "valid": 2}, seconds=6.0, samplerate=RATE)


@pytest.fixture(autouse=True)
def _torch_state_restored() -> Iterator[None]:
    """Fail a test that leaves autograd off or a torch function mode pushed (it would make
    later tests in the same process fail far from the cause)."""
    yield
    from torch.overrides import _get_current_function_mode_stack

    assert torch.is_grad_enabled(), "the test left autograd disabled"
    assert not torch.is_inference_mode_enabled(), "the test left inference mode on"
    assert not _get_current_function_mode_stack(), "the test left a torch function mode pushed"
