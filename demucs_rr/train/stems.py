"""Changing the stem set of a network: keep stems by name, reorder, add, drop.

A model declares its per-stem weights (:class:`~demucs_rr.models.base.StemLayout`): blocks of
``S * block`` rows along one dimension of its output layers, stem-major, and optionally module
lists with one entry per stem. A fine-tuning run with other stems than its initial model gets
the initial weights rearranged here, before a strict load into the run's network:

* a stem of both keeps its own rows (moved to its new position);
* a new stem starts from the rows of ``init_new_from`` (a stem of the initial model), or from
  zeros (module lists: from the run's own seeded initialisation, since an all-zero network
  would get no gradient in its inner layers);
* a stem of the initial model only is dropped.

Every other weight is shared by the stems and copied as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from demucs_rr.errors import ConfigError
from demucs_rr.models.base import StemLayout

__all__ = ["StemPlan", "plan_stems", "remap_state"]


@dataclass(frozen=True)
class StemPlan:
    """How the stems of an initial model become the stems of a run.

    Attributes:
        base: the initial model's stems, in its output order.
        target: the run's stems (``dset.sources``), in output order.
        new_from: the stem of ``base`` whose weights new stems start from; None: zeros.
    """

    base: tuple[str, ...]
    target: tuple[str, ...]
    new_from: str | None = None

    @property
    def kept(self) -> list[str]:
        """Stems of both, in the run's order."""
        return [s for s in self.target if s in self.base]

    @property
    def added(self) -> list[str]:
        """Stems of the run only."""
        return [s for s in self.target if s not in self.base]

    @property
    def dropped(self) -> list[str]:
        """Stems of the initial model only."""
        return [s for s in self.base if s not in self.target]

    @property
    def identity(self) -> bool:
        """Same stems in the same order: nothing to rearrange."""
        return self.base == self.target

    def origin(self, stem: str) -> int | None:
        """Index in :attr:`base` of the stem whose weights ``stem`` starts from, or None."""
        if stem in self.base:
            return self.base.index(stem)
        return None if self.new_from is None else self.base.index(self.new_from)

    def describe(self) -> str:
        """``stems kept: ...; added: piano (from other); dropped: -``."""
        added = ", ".join(f"{s} (from {self.new_from or 'zeros'})" for s in self.added)
        return (
            f"stems kept: {', '.join(self.kept) or '-'}; added: {added or '-'}; "
            f"dropped: {', '.join(self.dropped) or '-'}"
        )


def plan_stems(base: Sequence[str], target: Sequence[str], new_from: str | None) -> StemPlan:
    """Check and build a :class:`StemPlan`.

    Raises:
        ConfigError: ``new_from`` is not a stem of the initial model.
    """
    if new_from is not None and new_from not in base:
        raise ConfigError(
            f"init_new_from={new_from!r} is not a stem of the initial model ({', '.join(base)})"
        )
    return StemPlan(tuple(base), tuple(target), new_from)


def _blocks(value: torch.Tensor, dim: int, block: int, plan: StemPlan, name: str) -> torch.Tensor:
    """``value`` with its stem blocks along ``dim`` rearranged for ``plan.target``."""
    if value.shape[dim] != block * len(plan.base):
        raise ConfigError(
            f"{name}: {value.shape[dim]} rows along dim {dim} are not {len(plan.base)} stem "
            f"blocks of {block}"
        )
    parts = torch.split(value, block, dim=dim)
    rows = []
    for stem in plan.target:
        origin = plan.origin(stem)
        rows.append(torch.zeros_like(parts[0]) if origin is None else parts[origin])
    return torch.cat(rows, dim=dim)


def remap_state(
    state: Mapping[str, torch.Tensor],
    layout: StemLayout,
    plan: StemPlan,
    fresh: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The initial model's ``state`` rearranged for the run's stems.

    Args:
        state: state dict of the initial model (its stems are ``plan.base``).
        layout: the initial model's per-stem weights.
        plan: how its stems become the run's.
        fresh: state dict of the run's freshly initialised network, for the module-list
            entries of new stems without ``init_new_from``.

    Returns:
        A state dict for a network with ``plan.target`` stems (unchanged weights are the same
        tensors as in ``state``).

    Raises:
        ConfigError: a declared parameter is missing or does not have ``S * block`` rows.
    """
    missing = [name for name in layout.blocks if name not in state]
    if missing:
        raise ConfigError(f"declared per-stem weights missing from the model: {missing[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name in layout.blocks:
            dim, block = layout.blocks[name]
            out[name] = _blocks(value, dim, block, plan, name)
        elif layout.stem_of(name) is None:
            out[name] = value
    for prefix in layout.modules:
        for j, stem in enumerate(plan.target):
            origin = plan.origin(stem)
            head = f"{prefix}.{j}."
            for key in (k for k in fresh if k.startswith(head)):
                rest = key[len(head) :]
                out[key] = fresh[key] if origin is None else state[f"{prefix}.{origin}.{rest}"]
    return out
