"""What a caller of the trainer hears about a run, and how it stops one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total_steps: int
    epoch: float
    # The update's mean loss, left where it was computed (a 0-d tensor on the training device):
    # reading ``loss`` is the host sync, so it happens only for callers that look.
    loss_value: torch.Tensor | float
    budget: int | None
    learning_rate: float
    # The budget's start and end (triplets), so a watcher can draw the schedule it follows.
    initial_budget: int | None = None
    target_budget: int | None = None
    # Language-model tasks: the update's mean token accuracy on the learned tokens, left on
    # the device like the loss.
    token_accuracy_value: torch.Tensor | float | None = None
    # The update's gradient norm before clipping, left on the device like the loss.
    grad_norm_value: torch.Tensor | float | None = None
    # At a masking step (the allocator reallocated after this update): each module's rank.
    ranks: dict[str, int] | None = None

    @property
    def loss(self) -> float:
        return float(self.loss_value)

    @property
    def token_accuracy(self) -> float | None:
        value = self.token_accuracy_value
        return None if value is None else float(value)

    @property
    def grad_norm(self) -> float | None:
        value = self.grad_norm_value
        return None if value is None else float(value)


class TrainCallbacks:
    """Hooks the caller overrides; every default does nothing."""

    def on_progress(self, event: ProgressEvent) -> None:
        """After every optimizer update."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """After each evaluation on the validation rows."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint directory is complete."""

    def should_stop(self) -> bool:
        """Polled before every micro-batch; True cancels the run without writing an adapter."""
        return False
