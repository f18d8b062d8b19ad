"""The run's epochs and updates: which micro-batches make each update, and after it the
progress report, then an evaluation and a checkpoint when they are due.

Data order comes from a generator seeded per epoch (``adalora_core.ordering``), so a resumed
run replays it; only rank 0 evaluates and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from adalora_core.checkpoint import ADAPTER_DIR
from adalora_core.distributed import Replica
from adalora_core.ordering import epoch_order, length_grouped_order
from adalora_core.run_plan import RunPlan
from adalora_core.training.best import BestAdapter
from adalora_core.training.evaluation import Evaluator
from adalora_core.training.events import ProgressEvent, TrainCallbacks
from adalora_core.training.state import RunState
from adalora_core.training.update import UpdateStep
from adalora_core.training_config import micro_batches_per_epoch


class UpdateLoop:
    def __init__(
        self,
        plan: RunPlan,
        state: RunState,
        update: UpdateStep,
        evaluator: Evaluator | None,
        lengths: list[int],
        replica: Replica,
        callbacks: TrainCallbacks,
        checkpoint_dir: Path | None,
        snapshot: Callable[[Path], Path] | None = None,
        evaluate_first: bool = False,
        best: BestAdapter | None = None,
    ) -> None:
        self.plan = plan
        self.state = state
        self.update = update
        self.evaluator = evaluator
        self.lengths = lengths  # each training row's tokens, for length-grouped batches
        self.replica = replica
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.snapshot = snapshot  # writes the adapter bundle of this moment into a directory
        self.evaluate_first = evaluate_first  # score the starting point (a continued run)
        self.best = best  # on rank 0 of a run that keeps its best evaluation's adapter
        self.stopped_early = False
        self.batches_per_epoch = micro_batches_per_epoch(len(lengths), plan.training)

    def run(self) -> bool:
        """Train to the plan's last update (resuming from a checkpoint if one is there); False
        when cancelled."""
        self.state.resume(self.checkpoint_dir)
        position, seed, total = self.state.position, self.plan.training.seed, self.plan.total_steps
        accum = self.plan.training.grad_accum
        if self.replica.rank > 0:
            # Rank 0 keeps the stream a checkpoint captures; the others draw their own dropout.
            torch.manual_seed(hash((seed, self.replica.rank, position.step)) % 2**63)
        if self.evaluate_first and position.step == 0:
            self._evaluate()
        self.state.adapted.train()
        while position.step < total:
            order = self._epoch_order(position.epoch)
            for first in range(position.batch, self.batches_per_epoch, accum):
                group = range(first, min(first + accum, self.batches_per_epoch))
                loss = self.update.accumulate(order, group)
                if loss is None:
                    return False
                position.batch = group[-1] + 1
                learning_rate = self.update.apply()
                event = _progress(
                    self.state, self.plan, self.batches_per_epoch, loss, learning_rate
                )
                event = replace(event, grad_norm_value=self.update.last_grad_norm)
                if self.update.last_token_accuracy is not None:
                    event = replace(event, token_accuracy_value=self.update.last_token_accuracy)
                self.callbacks.on_progress(event)
                if self._after_update():
                    self.stopped_early = position.step < total
                    return True
                if position.step == total:
                    break
        return True

    def trained_tokens(self) -> int:
        """Tokens of the rows the updates so far trained on (OpenAI's ``trained_tokens``):
        every row of each whole pass, and the rows the current pass's micro-batches took.
        Derived from the update count and the seeded order, so a resumed run counts the same."""
        training = self.plan.training
        per_pass = math.ceil(self.batches_per_epoch / training.grad_accum)
        passes, updates = divmod(self.state.position.step, per_pass)
        tokens = passes * sum(self.lengths)
        if updates:
            batches = min(updates * training.grad_accum, self.batches_per_epoch)
            taken = self._epoch_order(passes)[: batches * training.batch_size].tolist()
            tokens += sum(self.lengths[i] for i in taken)
        return tokens

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        training = self.plan.training
        if training.group_by_length:
            return length_grouped_order(self.lengths, training.seed, epoch, training.batch_size)
        return epoch_order(len(self.lengths), training.seed, epoch)

    def _after_update(self) -> bool:
        """Evaluate every ``eval_every`` updates, at each epoch's end and at the last update;
        checkpoint every ``checkpoint_every`` updates but not after the last. True when the
        early stop's patience is spent (every replica learns it from rank 0)."""
        position, total = self.state.position, self.plan.total_steps
        epoch_done = position.batch == self.batches_per_epoch
        if self._due(self.plan.eval_every) or epoch_done or position.step == total:
            self._evaluate()
            if self.plan.training.early_stop_patience is not None and position.step < total:
                spent = self.best is not None and self.best.patience_spent
                sync = self.update.sync
                if sync.any_stop(spent) if sync is not None else spent:
                    return True
        if epoch_done:
            position.epoch, position.batch = position.epoch + 1, 0
        if self._due(self.plan.checkpoint_every) and position.step < total:
            self._checkpoint()
        return False

    def _due(self, every: int | None) -> bool:
        return every is not None and self.state.position.step % every == 0

    def _evaluate(self) -> None:
        if self.evaluator is None or not self.replica.is_main:
            return
        self.state.last_eval = self.evaluator.evaluate(self.state.adapted)
        if self.best is not None:
            self.best.offer(self.state.position.step, self.state.last_eval)
        self.callbacks.on_eval(self.state.position.step, dict(self.state.last_eval))

    def _checkpoint(self) -> None:
        if self.checkpoint_dir is None or not self.replica.is_main:
            return
        path = self.state.save(self.checkpoint_dir)
        if self.snapshot is not None:
            self.snapshot(path / ADAPTER_DIR)
        self.callbacks.on_checkpoint(self.state.position.step, path)


def _progress(
    state: RunState,
    plan: RunPlan,
    batches_per_epoch: int,
    loss: torch.Tensor,
    learning_rate: float,
) -> ProgressEvent:
    adapted, position = state.adapted, state.position
    budget_now = getattr(adapted, "budget_now", None)
    history = getattr(adapted, "history", None)
    masked_now = bool(history) and history[-1]["step"] == position.step
    return ProgressEvent(
        step=position.step,
        total_steps=plan.total_steps,
        epoch=position.epoch + position.batch / batches_per_epoch,
        loss_value=loss,
        budget=int(budget_now()) if budget_now else None,
        learning_rate=learning_rate,
        initial_budget=getattr(adapted, "initial_budget", None),
        target_budget=getattr(adapted, "target_budget", None),
        ranks=dict(history[-1]["ranks"]) if masked_now else None,
    )
