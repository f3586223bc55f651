"""Data-parallel training under ``torchrun``: process group set-up and rank helpers.

``torchrun --nproc_per_node P -m cli train ...`` starts ``P`` processes; each simulates
``B / P`` of the ``B`` worlds and :class:`torch.nn.parallel.DistributedDataParallel` averages the
gradients (Li et al. 2020, "PyTorch Distributed", arXiv 2006.15704). Backend: ``nccl`` on CUDA,
``gloo`` on CPU. Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the process group torchrun set up, if any.

    Args:
        device: the configured device (``cpu``, ``cuda``, ``cuda:i``).

    Returns:
        ``(context, device)``; on CUDA each process takes ``cuda:<LOCAL_RANK>``.
    """
    if not launched_by_torchrun():
        return DistContext(), device
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.startswith("cuda"):
        device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ctx, device


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself when not distributed)."""
    if not is_distributed():
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()
