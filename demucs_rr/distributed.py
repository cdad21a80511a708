"""torch.distributed for the batch commands (``separate``, ``evaluate``) and training.

``torchrun --nnodes N --nproc-per-node G -m demucs_rr separate|evaluate ...`` starts ``N * G``
processes. Each reads its place from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
(:func:`~demucs_rr.runtime.torchrun_ranks`), joins the process group (gloo on the CPU, nccl on
CUDA) with :func:`process_group`, takes its share of a list that every rank builds identically
(:meth:`Group.shard`), and meets the others at the end (:meth:`Group.gather`) so that rank 0
can report for all. A single process (no ``torchrun``) never touches torch.distributed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as torch_dist

from demucs_rr.errors import ConfigError
from demucs_rr.runtime import Ranks, torchrun_ranks

__all__ = ["BATCH_TIMEOUT", "Group", "backend_for", "join_group", "leave_group", "process_group"]

T = TypeVar("T")

BATCH_TIMEOUT = timedelta(days=7)
"""How long a rank of ``separate`` / ``evaluate`` waits in a collective for the others. Ranks
finish their shares of a library hours apart, so the default (30 minutes for gloo, 10 for nccl)
would fail a healthy job; a rank that dies does not leave the others waiting, because
``torchrun`` stops every process of the job when one fails."""


def backend_for(device: torch.device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def join_group(
    rank: int, world_size: int, device: torch.device, timeout: timedelta | None = None
) -> None:
    """Join torchrun's process group (``env://`` rendezvous); a no-op for one process or when
    the group already exists.

    Args:
        rank: this process's global rank.
        world_size: number of processes.
        device: this process's device (selects the backend; a CUDA device becomes current).
        timeout: collective timeout (default: torch's).

    Raises:
        ConfigError: the rendezvous variables are missing or the group cannot be joined.
    """
    if world_size <= 1 or torch_dist.is_initialized():
        return
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}  # 2.1: no None
    try:
        torch_dist.init_process_group(backend, rank=rank, world_size=world_size, **extra)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot join the torchrun process group ({backend}, rank {rank} of {world_size}): "
            f"{first}; start the command with torchrun"
        ) from None


def leave_group() -> None:
    """Leave the process group if this process joined one."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@dataclass(frozen=True)
class Group:
    """This process's place in the job and the few collectives the batch commands need.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: this process's device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports for all."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th, from index ``rank``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        """Wait for every process (a no-op for one process)."""
        if self.distributed:
            torch_dist.barrier()

    def gather(self, value: T) -> list[T]:
        """``value`` of every rank, in rank order, on every rank (picklable values; waits for
        every process like a barrier)."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.world_size
        torch_dist.all_gather_object(values, value)
        return cast(list[T], values)


@contextmanager
def process_group(
    device: torch.device, ranks: Ranks | None = None, timeout: timedelta = BATCH_TIMEOUT
) -> Iterator[Group]:
    """The :class:`Group` of this process, joined for the duration of the block and left after
    it (also on errors).

    Args:
        device: this process's device (see :func:`~demucs_rr.runtime.resolve_device`).
        ranks: where this process stands (default: read from the torchrun variables).
        timeout: how long a collective waits for the other ranks.

    Raises:
        ConfigError: bad torchrun variables, or the group cannot be joined.
    """
    ranks = torchrun_ranks() if ranks is None else ranks
    group = Group(ranks.rank, ranks.world_size, ranks.local_rank, device)
    join_group(group.rank, group.world_size, device, timeout)
    try:
        yield group
    finally:
        if group.distributed:
            leave_group()
