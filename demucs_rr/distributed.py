"""torch.distributed for the batch commands (``separate``, ``evaluate``) and training.

``torchrun --nnodes N --nproc-per-node G -m demucs_rr separate|evaluate ...`` starts ``N * G``
processes. Each reads its place from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
(:meth:`Group.from_env`), joins the process group (gloo on the CPU, nccl on CUDA) with
:func:`process_group`, takes its share of a list that every rank builds identically
(:meth:`Group.shard`), and meets the others at the end (:meth:`Group.gather`) so that rank 0
can report for all. Training wraps its model with :meth:`Group.wrap` and averages metrics with
:meth:`Group.all_reduce_mean`. A single process (no ``torchrun``) never touches
torch.distributed. There are no module globals: the :class:`Group` is handed to whoever needs
it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as torch_dist
from torch import nn

from demucs_rr.errors import ConfigError, one_line
from demucs_rr.runtime import resolve_device

__all__ = [
    "BATCH_TIMEOUT",
    "Group",
    "backend_for",
    "join_group",
    "leave_group",
    "process_group",
    "torchrun_ranks",
]

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
        raise ConfigError(
            f"cannot join the torchrun process group ({backend}, rank {rank} of {world_size}): "
            f"{one_line(exc)}; start the command with torchrun"
        ) from None


def leave_group() -> None:
    """Leave the process group if this process joined one."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def torchrun_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (default: a single process, ``(0, 1, 0)``).

    Args:
        env: the variables (default ``os.environ``).

    Raises:
        ConfigError: a variable is not an integer, or the three are inconsistent.
    """
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"bad torchrun environment variable: {exc}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"inconsistent torchrun environment: RANK={rank}, "
            f"WORLD_SIZE={world}, LOCAL_RANK={local}"
        )
    return rank, world, local


@dataclass(frozen=True)
class Group:
    """Where this process stands in a ``torchrun`` job, and the collectives the commands need.

    One process (no ``torchrun``) is rank 0 of 1 and never touches torch.distributed.

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

    @classmethod
    def from_env(
        cls, device: str = "auto", env: Mapping[str, str] | None = None, *, allow_mps: bool = True
    ) -> Group:
        """This process's place from the torchrun variables, its device resolved from
        ``device`` (``auto`` and ``cuda`` pick GPU ``local_rank``; see
        :func:`~demucs_rr.runtime.resolve_device`).

        Raises:
            ConfigError: inconsistent variables, or an unknown or unavailable device.
        """
        rank, world, local = torchrun_ranks(env)
        return cls(rank, world, local, resolve_device(device, local, allow_mps=allow_mps))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports for all, writes shared files, shows progress."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """``nccl`` on CUDA, ``gloo`` otherwise."""
        return backend_for(self.device)

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

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (a new CPU tensor; the input is left unchanged)."""
        out = tensor.detach().clone().to(self.device)
        if self.distributed:
            torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out.cpu()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over processes of each value of ``values`` (same keys on every process)."""
        if not self.distributed or not values:
            return dict(values)
        keys = list(values)  # same insertion order on every rank
        total = self.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
        return {k: float(v) / self.world_size for k, v in zip(keys, total.tolist(), strict=True)}

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@contextmanager
def process_group(group: Group, timeout: timedelta | None = BATCH_TIMEOUT) -> Iterator[Group]:
    """``group`` joined to torchrun's process group for the duration of the block and left
    after it (also on errors); nothing happens for one process.

    Args:
        group: this process's place (:meth:`Group.from_env`).
        timeout: how long a collective waits for the other ranks (None: torch's default).

    Raises:
        ConfigError: the group cannot be joined.
    """
    join_group(group.rank, group.world_size, group.device, timeout)
    try:
        yield group
    finally:
        if group.distributed:
            leave_group()
