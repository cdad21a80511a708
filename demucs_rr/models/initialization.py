"""Building a model only to load stored weights into it: random initialisation is skipped.

:func:`skip_random_init` turns ``torch.nn.init``'s initialisers into no-ops, and the models'
own initial rescaling (:func:`~demucs_rr.models.dconv.rescale_convs`,
:func:`~demucs_rr.models.demucs.rescale_module`) asks :func:`random_init_skipped` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["random_init_skipped", "skip_random_init"]

_SKIPPING = False


def random_init_skipped() -> bool:
    """Whether a :func:`skip_random_init` block is active (initial rescaling is pointless)."""
    return _SKIPPING


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextmanager
def skip_random_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops while a model is built only to receive
    stored weights: every parameter is overwritten by the strict state load that follows, so
    drawing ~40 M random numbers (and, on the ``meta`` device, importing torch's Python
    reference kernels to do so) is wasted time. Process-wide while active: loaders run it
    while no other thread builds a model to train."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}

    def keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    global _SKIPPING
    previous = _SKIPPING
    try:
        for name in saved:
            setattr(torch.nn.init, name, keep)
        _SKIPPING = True
        yield
    finally:
        _SKIPPING = previous
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
