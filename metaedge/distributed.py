"""Data-parallel meta-training under torchrun: which rank this is, and the all-reduce of meta-gradients."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """rank / world size / local rank of this process; a plain run is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def world_size() -> int:
    """How many ranks torchrun launched (its WORLD_SIZE), 1 in a plain run; joins nothing."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> tuple[Ranks, str]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPUs).

    Returns the ranks and the device this rank trains on (cuda:LOCAL_RANK under NCCL).
    """
    world = world_size()
    if world <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(ranks.local_rank)
        device = f"cuda:{ranks.local_rank}"
    return ranks, device


def all_reduce_gradients(module: torch.nn.Module, ranks: Ranks) -> None:
    """Sum every trainable parameter's gradient over the ranks, as one flat buffer (one collective per step).

    Each rank's loss is already divided by the total meta-batch, so the sum is the full meta-batch mean.
    """
    if not ranks.distributed:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def average_buffers(module: torch.nn.Module, ranks: Ranks) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks before a checkpoint."""
    if not ranks.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ranks.world)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def cleanup(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
