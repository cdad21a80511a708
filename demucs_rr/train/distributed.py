"""Process-group context for ``torchrun``: rank, world size and device, passed explicitly.

Launch ``N`` processes with ``torchrun --nproc_per_node N -m demucs_rr train ...`` (or across
nodes with ``--nnodes/--node_rank/--rdzv_endpoint``); ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, read here. Without them the run is a single
process. There are no module globals: the :class:`DistContext` is handed to whoever needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from demucs_rr.distributed import backend_for, join_group, leave_group
from demucs_rr.runtime import resolve_device, torchrun_ranks

__all__ = ["DistContext"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: this process's training device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "auto", env: Mapping[str, str] | None = None) -> DistContext:
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (as set by torchrun); defaults: 1 process.

        ``auto`` and ``cuda`` give ``cuda:LOCAL_RANK`` when CUDA is available (``auto`` falls
        back to the CPU; MPS is not used for training); an explicit ``cuda:N`` is kept.

        Raises:
            ConfigError: inconsistent variables, or an unknown or unavailable device.
        """
        ranks = torchrun_ranks(env)
        device_ = resolve_device(device, ranks.local_rank, allow_mps=False)
        return cls(ranks.rank, ranks.world_size, ranks.local_rank, device_)

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """``nccl`` on CUDA, ``gloo`` on CPU."""
        return backend_for(self.device)

    def init(self) -> None:
        """Join the process group (``env://`` rendezvous of torchrun); no-op for 1 process."""
        join_group(self.rank, self.world_size, self.device)

    def close(self) -> None:
        """Leave the process group if this context joined one."""
        if self.distributed:
            leave_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        """Wait for every process (no-op for 1 process)."""
        if self.distributed:
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (a new tensor; the input is left unchanged)."""
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
