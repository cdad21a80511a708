"""Property-based fuzzing of every model-file reader: byte flips, insertions and truncations of
small valid files give a model or one of demucs_rr's one-line errors, never another exception
and never a hang."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demucs_rr.errors import ModelNotFoundError, PackageFormatError
from demucs_rr.hub.loader import load_model
from demucs_rr.hub.official_safetensors import model_from_hub_file
from demucs_rr.hub.official_th import load_state_file, model_from_official_package
from tests.helpers.audio import mutate
from tests.helpers.checks import alarm
from tests.helpers.untrusted_files import write_hub, write_official, write_package, write_state

SECONDS_PER_EXAMPLE = 5

READERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any], str]] = {
    "package": (write_package, load_model, ".safetensors"),
    "hub": (write_hub, model_from_hub_file, ".safetensors"),
    "official": (write_official, model_from_official_package, ".th"),
    "state": (write_state, load_state_file, ".th"),
}

_SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")),
    deadline=None,  # the first load imports lazily; hangs are caught by the alarm instead
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("originals")
    return {
        name: write(folder / f"good{suffix}").read_bytes()
        for name, (write, _, suffix) in READERS.items()
    }


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.integers(0, 2**20), st.integers(1, 64)),
)


@pytest.mark.parametrize("reader", list(READERS))
@_SETTINGS
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_model_files_fail_cleanly(
    reader: str, steps: list[tuple[str, int, int]], originals: dict[str, bytes], tmp_path: Path
) -> None:
    _, load, suffix = READERS[reader]
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(mutate(originals[reader], steps))
    with alarm(SECONDS_PER_EXAMPLE):
        try:
            result = load(path)
        except (PackageFormatError, ModelNotFoundError) as exc:
            assert "\n" not in str(exc), str(exc)
            return
    assert isinstance(result, (torch.nn.Module, dict))  # a harmless flip (e.g. in a weight)


@pytest.mark.parametrize("reader", list(READERS))
@_SETTINGS
@given(keep=st.floats(0.0, 1.0))
def test_truncated_model_files_fail_cleanly(
    reader: str, keep: float, originals: dict[str, bytes], tmp_path: Path
) -> None:
    _, load, suffix = READERS[reader]
    data = originals[reader]
    size = int(len(data) * keep)
    if size == len(data):
        size -= 1
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:size])
    with (
        alarm(SECONDS_PER_EXAMPLE),
        pytest.raises((PackageFormatError, ModelNotFoundError)) as info,
    ):
        load(path)
    assert "\n" not in str(info.value)
