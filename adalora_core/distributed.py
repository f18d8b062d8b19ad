"""The in-loop side of a job trained across several processes (PyTorch DistributedDataParallel).

``adalora_core.launcher`` starts the processes; this module holds what the training loop uses
inside each of them: the process's place in the group (:class:`Replica`), its share of a
micro-batch (:func:`shard`) and the collectives besides DDP's gradient all-reduce
(:class:`ReplicaSync`: stop flags, the reported loss, the mask check).

Why every rank holds the same allocation: DDP all-reduces the gradients before the optimizer
step, the allocator scores importance from those (identical) gradients and (identical)
weights, so every rank computes the same mask. The loop checks it at every masking step
(:meth:`ReplicaSync.assert_same_mask`), and the launcher compares every rank's rank history at
the end. Rank 0 alone evaluates, checkpoints, reports progress and writes the adapter; a stop
request on rank 0 stops every rank at the next update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


class ReplicaMismatch(RuntimeError):
    """Two ranks disagree on the allocation: a bug, never a user error."""


@dataclass(frozen=True)
class Replica:
    """This process's place in the job: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_replica() -> Replica:
    if dist.is_available() and dist.is_initialized():
        return Replica(dist.get_rank(), dist.get_world_size())
    return Replica()


def shard(rows: Tensor, replica: Replica) -> tuple[Tensor, float]:
    """This rank's rows of one micro-batch, and the weight on its mean loss that makes DDP's
    average over ranks the mean over the whole micro-batch, even when the rows do not divide
    evenly. A rank left without rows reuses one row at weight 0, so it still joins the
    gradient all-reduce."""
    mine = rows[replica.rank :: replica.world_size]
    if len(mine) == 0:
        return rows[:1], 0.0
    return mine, len(mine) * replica.world_size / len(rows)


class ReplicaSync:
    """The collectives the loop needs besides DDP's gradient all-reduce. Control messages (stop
    flags, mask checks) go over a gloo group in host memory, so on GPUs they add no device
    sync; only the reported loss is reduced on the training device (asynchronously)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        # Every rank creates the group at the same point in the loop's construction.
        self.control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def any_stop(self, local: bool) -> bool:
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return bool(flag.item())

    def mean(self, value: Tensor) -> Tensor:
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.replica.world_size

    def assert_same_mask(self, keep: Tensor, step: int) -> None:
        """Raise on every rank if any two ranks keep different triplets after ``step``."""
        local = keep.detach().to("cpu", torch.int32)
        low, high = local.clone(), local.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.control)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.control)
        if not torch.equal(low, high):
            differ = int((low != high).sum())
            raise ReplicaMismatch(
                f"after update {step} the ranks keep different triplets ({differ} differ)"
            )
