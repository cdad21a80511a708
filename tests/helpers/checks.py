"""Assertions and guards shared by the tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def assert_matches(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Fixture tolerance: max|out - ref| <= 1e-5 * max|ref| + 1e-6, shapes equal."""
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    err = float(np.abs(out - ref).max())
    bound = 1e-5 * float(np.abs(ref).max()) + 1e-6
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a reader ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
