"""AdaLoRA hyper-parameters and the cubic budget schedule.

Torch-free on purpose: the API validates a job's schedule at submission without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from adalora_core.errors import ConfigError

# Default schedule (used when the user gives none), in the proportions of the AdaLoRA authors'
# GLUE scripts: warm up for ~12% of the updates, reduce the budget over the next ~43%, then
# fine-tune the final pattern for the last ~45% (the authors advise a final phase about as long
# as the steps before it, and a reduction phase long enough not to change ranks too fast).
DEFAULT_T_INIT_FRACTION = 0.12
DEFAULT_T_FINAL_FRACTION = 0.45
# Aim for about this many masking steps in the budget-reducing phase (the authors' scripts
# mask hundreds of times; one masking step costs about as much as 0.1% of a training step).
DEFAULT_MASKING_STEPS = 100


@dataclass(frozen=True)
class BudgetSchedule:
    """When and how far the global rank budget shrinks; `t` counts optimizer updates from 1."""

    total_steps: int
    t_init: int
    t_final: int
    delta_t: int

    @property
    def final_mask_step(self) -> int:
        """The update at which the budget reaches its target and the pattern is frozen."""
        return self.total_steps - self.t_final

    def budget(self, step: int, initial: int, target: int) -> int:
        """Number of triplets kept after update `step` (cubic decay from `initial` to `target`)."""
        if step <= self.t_init:
            return initial
        if step > self.final_mask_step:
            return target
        # Same arithmetic as PEFT so both pick identical budgets at every step.
        remaining = 1 - (step - self.t_init) / (self.final_mask_step - self.t_init)
        return int((initial - target) * (remaining**3) + target)

    def is_masking_step(self, step: int) -> bool:
        """True where the allocator recomputes the mask: every delta_t in the reduction phase,
        and once at `final_mask_step`. Later updates only re-apply the frozen pattern."""
        if step == self.final_mask_step:
            return True
        return self.t_init < step < self.final_mask_step and step % self.delta_t == 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


PQ_INITS = ("normal", "orthonormal")


@dataclass(frozen=True)
class AdaLoraConfig:
    """User-facing AdaLoRA settings. `target_modules`: suffixes of dotted module paths, or one
    regex string matched against the whole path; None means the family's default targets."""

    init_r: int = 12
    target_r: int = 8
    t_init: int | None = None
    t_final: int | None = None
    delta_t: int | None = None
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str | None = None
    # How P and Q start: "normal" is the paper's N(0, 0.02); "orthonormal" starts them where
    # the orthogonality regulariser pulls them (PᵀP = QQᵀ = I), so a triplet's scale is set by
    # λ alone from the first update instead of drifting while the penalty acts.
    pq_init: str = "normal"

    def __post_init__(self) -> None:
        # JSON gives lists; keep the frozen object hashable and comparable.
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaLoraConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"adalora.{unknown[0]}", f"unknown AdaLoRA setting; known: {sorted(known)}"
            )
        config = cls(**data)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return data

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field ("adalora.<name>")."""
        _require_int(self.init_r, "init_r", minimum=1)
        _require_int(self.target_r, "target_r", minimum=1)
        if self.target_r > self.init_r:
            raise ConfigError(
                "adalora.target_r",
                f"target_r ({self.target_r}) must not exceed init_r ({self.init_r}): "
                "AdaLoRA only removes ranks",
            )
        for name in ("t_init", "t_final"):
            value = getattr(self, name)
            if value is not None:
                _require_int(value, name, minimum=0)
        if self.delta_t is not None:
            _require_int(self.delta_t, "delta_t", minimum=1)
        for name in ("beta1", "beta2"):
            value = _require_number(getattr(self, name), name)
            if not 0.0 < value < 1.0:
                raise ConfigError(
                    f"adalora.{name}", f"must be strictly between 0 and 1, got {value}"
                )
        if _require_number(self.orth_reg_weight, "orth_reg_weight") < 0:
            raise ConfigError("adalora.orth_reg_weight", "must be >= 0")
        if _require_number(self.lora_alpha, "lora_alpha") <= 0:
            raise ConfigError("adalora.lora_alpha", "must be > 0")
        dropout = _require_number(self.lora_dropout, "lora_dropout")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("adalora.lora_dropout", f"must be in [0, 1), got {dropout}")
        _validate_targets(self.target_modules)
        if self.pq_init not in PQ_INITS:
            raise ConfigError(
                "adalora.pq_init", f"must be one of {list(PQ_INITS)}, got {self.pq_init!r}"
            )

    def schedule(self, total_steps: int) -> BudgetSchedule:
        """The budget schedule for a run of `total_steps` optimizer updates; unset fields are
        derived from it (see DEFAULT_* above)."""
        self.validate()
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(
                "training.max_steps",
                f"AdaLoRA needs at least 1 optimizer update, got {total_steps!r}",
            )
        t_init = (
            self.t_init if self.t_init is not None else int(DEFAULT_T_INIT_FRACTION * total_steps)
        )
        t_final = (
            self.t_final
            if self.t_final is not None
            else int(DEFAULT_T_FINAL_FRACTION * total_steps)
        )
        if t_final >= total_steps:
            raise ConfigError(
                "adalora.t_final",
                f"t_final ({t_final}) must be smaller than the number of updates ({total_steps})",
            )
        if t_init >= total_steps - t_final:
            raise ConfigError(
                "adalora.t_init",
                f"t_init ({t_init}) must be smaller than total_steps - t_final "
                f"({total_steps} - {t_final} = {total_steps - t_final}), otherwise there is no "
                "budget-reducing phase",
            )
        reducing = total_steps - t_final - t_init
        delta_t = (
            self.delta_t if self.delta_t is not None else max(1, reducing // DEFAULT_MASKING_STEPS)
        )
        return BudgetSchedule(
            total_steps=total_steps, t_init=t_init, t_final=t_final, delta_t=delta_t
        )


def _require_int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"adalora.{name}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"adalora.{name}", f"must be >= {minimum}, got {value}")
    return value


def _require_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"adalora.{name}", f"must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"adalora.{name}", f"must be finite, got {value}")
    return float(value)


def _validate_targets(targets: object) -> None:
    if targets is None:
        return
    if isinstance(targets, str):
        if not targets:
            raise ConfigError("adalora.target_modules", "regex must not be empty")
        try:
            re.compile(targets)
        except re.error as exc:
            raise ConfigError("adalora.target_modules", f"invalid regex: {exc}") from exc
        return
    if not isinstance(targets, tuple) or not targets:
        raise ConfigError(
            "adalora.target_modules", "must be a non-empty list of module names or a regex string"
        )
    for item in targets:
        if not isinstance(item, str) or not item.strip(". "):
            raise ConfigError("adalora.target_modules", f"invalid module name {item!r}")
