"""Training hyper-parameters and the update count they imply.

Torch-free: the API checks a job's schedule (``total_updates`` feeding
``AdaLoraConfig.schedule``) at submission time without loading the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adalora_core.errors import ConfigError


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser and data-loop settings; exactly one of ``epochs`` / ``max_steps`` is set."""

    epochs: float | None = 3
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    # Clip the global gradient norm (adapters and heads together) before each update, as the
    # AdaLoRA authors' recipe does; 0 or None turns clipping off.
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    # Batch rows of similar token length together: less padding, about twice as fast on short
    # texts, but a measured cost to AdaLoRA's quality (adalora_core/recipe.py), so off.
    group_by_length: bool = False
    seed: int = 0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    # Publish the adapter of the evaluation with the lowest validation loss, not the last
    # (needs validation rows; the recipe turns it on when a job has them).
    keep_best: bool = False
    # End the run once this many evaluations in a row have not lowered the validation loss;
    # None runs to the last update.
    early_stop_patience: int | None = None

    def validate(self) -> TrainingConfig:
        """Raise ``ConfigError("training.<field>", ...)`` for the first invalid setting."""
        if (self.epochs is None) == (self.max_steps is None):
            raise ConfigError("training.epochs", "set exactly one of epochs or max_steps")
        if self.epochs is not None and not (
            _is_number(self.epochs) and math.isfinite(self.epochs) and self.epochs > 0
        ):
            raise ConfigError("training.epochs", f"must be a positive number, got {self.epochs!r}")
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("max_length", self.max_length)
        if not (_is_number(self.learning_rate) and math.isfinite(self.learning_rate)):
            raise ConfigError("training.learning_rate", "must be a finite number")
        if self.learning_rate <= 0:
            raise ConfigError("training.learning_rate", f"must be > 0, got {self.learning_rate}")
        if not (_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise ConfigError("training.warmup_ratio", f"must be in [0, 1): {self.warmup_ratio}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("training.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not (
            _is_number(self.max_grad_norm)
            and math.isfinite(self.max_grad_norm)
            and self.max_grad_norm >= 0
        ):
            raise ConfigError(
                "training.max_grad_norm",
                f"must be a number >= 0 (0 turns clipping off), got {self.max_grad_norm!r}",
            )
        if not isinstance(self.group_by_length, bool):
            raise ConfigError(
                "training.group_by_length", f"must be true or false, got {self.group_by_length!r}"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("training.seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.eval_every is not None:
            _positive_int("eval_every", self.eval_every)
        if self.checkpoint_every is not None:
            _positive_int("checkpoint_every", self.checkpoint_every)
        if not isinstance(self.keep_best, bool):
            raise ConfigError(
                "training.keep_best", f"must be true or false, got {self.keep_best!r}"
            )
        if self.early_stop_patience is not None:
            _positive_int("early_stop_patience", self.early_stop_patience)
        return self


def micro_batches_per_epoch(num_rows: int, training: TrainingConfig) -> int:
    """Micro-batches in one pass over the data; the last one may be short."""
    return math.ceil(num_rows / training.batch_size)


def updates_per_epoch(num_rows: int, training: TrainingConfig) -> int:
    """Optimizer updates per epoch; a trailing partial accumulation still makes one update."""
    return math.ceil(micro_batches_per_epoch(num_rows, training) / training.grad_accum)


def total_updates(num_rows: int, training: TrainingConfig) -> int:
    """Optimizer updates the whole run makes (the T of AdaLoRA's budget schedule)."""
    training.validate()
    if num_rows < 1:
        raise ConfigError("dataset", "the training set has no rows")
    if training.max_steps is not None:
        return training.max_steps
    assert training.epochs is not None
    return max(1, math.ceil(training.epochs * updates_per_epoch(num_rows, training)))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"training.{name}", f"must be an integer >= 1, got {value!r}")
