"""One optimizer update: forward and backward over its micro-batches with the task loss plus
the adapter's regularisation, clipping, the AdamW and learning-rate steps, then the rank
allocator (which reads the gradients, so it runs before they are zeroed).

Across processes (``adalora_core.launcher``) the model is wrapped in DistributedDataParallel:
each rank trains on its share of every micro-batch (``distributed.shard``), the stop request
is agreed once per update, and DDP all-reduces only on the update's last micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from adalora_core.distributed import Replica, ReplicaSync, shard
from adalora_core.encoding import Collate, to_device
from adalora_core.training.adaptation import Adaptation, rank_history
from adalora_core.training.events import TrainCallbacks
from adalora_core.training.state import RunState
from adalora_core.training.token_accuracy import token_hits
from adalora_core.training_config import TrainingConfig

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TokenAccuracy:
    """Measure each update's mean token accuracy; ``causal``: labels are the next tokens."""

    causal: bool


class UpdateStep:
    def __init__(
        self,
        state: RunState,
        training: TrainingConfig,
        train_data: list[dict[str, Any]],
        collate: Collate,
        replica: Replica,
        callbacks: TrainCallbacks,
        device: torch.device,
        loss_fn: LossFn | None,
        token_accuracy: TokenAccuracy | None = None,
    ) -> None:
        self.state = state
        # Language-model tasks: which tokens the loss reads, for the update's token accuracy.
        self.token_accuracy = token_accuracy
        # The last update's mean token accuracy (a 0-d tensor on the device), or None.
        self.last_token_accuracy: torch.Tensor | None = None
        # The last update's gradient norm before clipping (a 0-d tensor on the device).
        self.last_grad_norm: torch.Tensor | None = None
        self.training = training
        self.train_data = train_data
        self.collate = collate
        self.replica = replica
        self.callbacks = callbacks
        self.device = device
        self.loss_fn = loss_fn
        self.forward_module, self.sync = _across_replicas(state.adapted, replica, device)

    def accumulate(self, order: torch.Tensor, group: range) -> torch.Tensor | None:
        """Forward/backward over the micro-batches ``group`` of the epoch's ``order``; the mean
        loss, or None when cancelled. The loss stays on the device: no host sync."""
        if self.sync is not None and self.sync.any_stop(self.callbacks.should_stop()):
            return None
        adapted, mixed, size = self.state.adapted, self.state.mixed, self.training.batch_size
        total_loss = torch.zeros((), device=self.device)
        right = counted = torch.zeros((), device=self.device)
        for index in group:
            if self.sync is None and self.callbacks.should_stop():
                return None
            rows = order[index * size : (index + 1) * size]
            weight = 1.0
            if self.sync is not None:
                rows, weight = shard(rows, self.replica)
            batch = to_device(
                self.collate([self.train_data[i] for i in rows.tolist()]), self.device
            )
            with self._gradient_sync(last=index == group[-1]), mixed.autocast():
                outputs = self.forward_module(**batch)
                task_loss = self.loss_fn(outputs, batch) if self.loss_fn else outputs.loss
                loss = task_loss * weight + adapted.regularization_loss()
            mixed.backward(loss / len(group))
            total_loss += loss.detach() / len(group)
            if self.token_accuracy is not None:
                hits, tokens = token_hits(
                    outputs.logits.detach(), batch["labels"], self.token_accuracy.causal
                )
                right, counted = right + hits, counted + tokens
        if self.token_accuracy is not None:
            accuracy = right / counted.clamp(min=1)
            self.last_token_accuracy = accuracy if self.sync is None else self.sync.mean(accuracy)
        return total_loss if self.sync is None else self.sync.mean(total_loss)

    def apply(self) -> float:
        """Step the optimizer on the accumulated gradients, then the allocator; the learning
        rate the update used."""
        state = self.state
        learning_rate = float(state.scheduler.get_last_lr()[0])
        # Clipping, the optimizer and the allocator's importance scores all read true gradients.
        state.mixed.unscale(state.optimizer)
        params = [p for _, p in state.trainable]
        if self.training.max_grad_norm:
            # foreach clipping scales in place on the device: no host sync. The allocator then
            # scores importance on the clipped gradients, as the authors' HF Trainer loop does.
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(
                params, self.training.max_grad_norm, foreach=True
            )
        else:  # the norm is still reported (it stays on the device until someone reads it)
            grads = [p.grad for p in params if p.grad is not None]
            self.last_grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        state.mixed.step(state.optimizer)
        state.scheduler.step()
        state.position.step += 1
        self._allocate(state.position.step)
        _zero_grad(state)
        return learning_rate

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        if self.sync is None or last:
            return contextlib.nullcontext()
        return self.forward_module.no_sync()

    def _allocate(self, step: int) -> None:
        """Across processes, check that every rank kept the same triplets whenever this update
        was a masking step (it added to the rank history)."""
        adapted = self.state.adapted
        if self.sync is None:
            adapted.update_and_allocate(step)
            return
        masks_before = len(rank_history(adapted))
        adapted.update_and_allocate(step)
        if len(rank_history(adapted)) != masks_before:
            self.sync.assert_same_mask(adapted.rank_mask(), step)


def _across_replicas(
    adapted: Adaptation, replica: Replica, device: torch.device
) -> tuple[Any, ReplicaSync | None]:
    """The module the training forward goes through: DDP around the adapted model when the run
    spans processes (its backward all-reduces the gradients), the model itself otherwise; and
    the replicas' other collectives."""
    if not replica.distributed:
        return adapted, None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(adapted, device_ids=ids), ReplicaSync(replica)


def _zero_grad(state: RunState) -> None:
    zero_adapters = getattr(state.adapted, "zero_grad_adapters", None)
    if zero_adapters is not None:
        zero_adapters()  # keeps AdaLoraModel's flat gradient buffer attached
    else:
        state.optimizer.zero_grad(set_to_none=True)
