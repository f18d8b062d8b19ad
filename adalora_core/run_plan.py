"""A run's facts, worked out once: the one place that turns settings and a data size into what
the trainer does.

:func:`plan_run` checks the settings together and derives everything that follows from them:
the number of optimizer updates, AdaLoRA's budget schedule (its unset fields filled in), the
adapter's ranks, and that the sequence length fits the base model. The service plans a job at
submission (``adalora_core.recipe.resolve`` fills what the job left out, then calls
``plan_run``) and stores the settings; the worker plans again from the stored settings, which
gives the same plan; the trainer only reads it. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from adalora_core.config import AdaLoraConfig, BudgetSchedule
from adalora_core.errors import ConfigError
from adalora_core.training_config import TrainingConfig, total_updates

ADALORA = "adalora"
LORA = "lora"
METHODS = (ADALORA, LORA)


@dataclass(frozen=True)
class RunPlan:
    """A checked training run. Made by :func:`plan_run`, never by hand."""

    training: TrainingConfig
    # With t_init, t_final and delta_t filled from the schedule when the method is AdaLoRA.
    adalora: AdaLoraConfig
    method: str
    num_rows: int
    total_steps: int
    schedule: BudgetSchedule | None  # AdaLoRA's; None for LoRA, which never reallocates
    lora_r: int | None  # LoRA's rank; None for AdaLoRA
    max_positions: int | None  # the base's context limit the plan was checked against

    @property
    def eval_every(self) -> int | None:
        """Updates between evaluations; None evaluates at each epoch's end only."""
        return self.training.eval_every

    @property
    def checkpoint_every(self) -> int | None:
        """Updates between checkpoints; None writes none."""
        return self.training.checkpoint_every

    @property
    def init_r(self) -> int:
        """The rank every adapted module starts with."""
        return self.adalora.init_r if self.lora_r is None else self.lora_r

    @property
    def target_r(self) -> int:
        """The mean rank per module the run ends with."""
        return self.adalora.target_r if self.lora_r is None else self.lora_r

    def with_training(self, **changes: Any) -> RunPlan:
        """The same run with other training settings, planned (and checked) again."""
        return plan_run(
            self.num_rows,
            replace(self.training, **changes),
            self.adalora,
            method=self.method,
            lora_r=self.lora_r,
            max_positions=self.max_positions,
        )


def plan_run(
    num_rows: int,
    training: TrainingConfig,
    adalora: AdaLoraConfig,
    *,
    method: str = ADALORA,
    lora_r: int | None = None,
    max_positions: int | None = None,
) -> RunPlan:
    """Check the settings and derive the run's facts; a ConfigError names the field at fault.

    ``num_rows`` is the training set's size; ``lora_r`` is LoRA's rank (default
    ``adalora.target_r``) and only the LoRA method takes one; ``max_positions`` is the base's
    context limit (``adalora_core.context_limit``), None when it has none or it is unknown.
    """
    if method not in METHODS:
        raise ConfigError("method", f"must be one of {list(METHODS)}, got {method!r}")
    adalora.validate()
    total = total_updates(num_rows, training)  # validates the training settings
    if max_positions is not None and training.max_length > max_positions:
        raise ConfigError(
            "training.max_length",
            f"{training.max_length} exceeds the model's {max_positions} positions",
        )
    schedule = None
    if method == ADALORA:
        if lora_r is not None:
            raise ConfigError("lora_r", "only the lora method takes a rank")
        schedule = adalora.schedule(total)
        adalora = replace(
            adalora, t_init=schedule.t_init, t_final=schedule.t_final, delta_t=schedule.delta_t
        )
    else:
        lora_r = adalora.target_r if lora_r is None else lora_r
        if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
            raise ConfigError("lora_r", f"must be >= 1, got {lora_r}")
    return RunPlan(
        training=training,
        adalora=adalora,
        method=method,
        num_rows=num_rows,
        total_steps=total,
        schedule=schedule,
        lora_r=lora_r,
        max_positions=max_positions,
    )
