"""The adapted model the loop drives: AdaLoRA, the plain LoRA baseline, or an external
implementation plugged in through ``adapt`` (benchmarks compare PEFT's this way)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from adalora_core.run_plan import RunPlan


class Adaptation(Protocol):
    """What the loop needs from an adapted model. Optional extras it uses when present:
    ``budget_now``, ``initial_budget``/``target_budget``, ``history``, ``rank_mask``, ``ranks``,
    ``allocator_state``/``load_allocator_state``, ``zero_grad_adapters`` and the parameter
    counts."""

    def __call__(self, **batch: torch.Tensor) -> Any: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
    def regularization_loss(self) -> torch.Tensor: ...
    def update_and_allocate(self, step: int) -> None: ...


AdaptFn = Callable[[nn.Module, tuple[str, ...], RunPlan], Adaptation]


def adapt_model(
    model: nn.Module, heads: tuple[str, ...], plan: RunPlan, adapt: AdaptFn | None
) -> Adaptation:
    """Wrap ``model`` (in place) in the plan's adapters, or in ``adapt``'s."""
    if adapt is not None:
        return adapt(model, heads, plan)
    from adalora_core.adalora_model import inject_adalora, inject_lora

    adalora = plan.adalora
    if plan.schedule is None:
        return inject_lora(
            model,
            r=plan.init_r,
            lora_alpha=adalora.lora_alpha,
            lora_dropout=adalora.lora_dropout,
            target_modules=adalora.target_modules,
            head_modules=heads,
        )
    return inject_adalora(model, adalora, schedule=plan.schedule, head_modules=heads)


def trainable_parameters(adapted: Adaptation) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in adapted.named_parameters() if p.requires_grad]


def rank_history(adapted: Adaptation) -> list[dict[str, Any]]:
    """The budget and ranks at every masking step so far (empty when nothing reallocates)."""
    return list(getattr(adapted, "history", []))


def module_ranks(adapted: Adaptation) -> dict[str, int]:
    ranks = getattr(adapted, "ranks", None)
    return dict(ranks()) if ranks else {}


def parameter_count(adapted: Adaptation, counter: str) -> int | None:
    """``final_parameter_count`` or ``adapter_parameter_count``, for adaptations that have it."""
    count = getattr(adapted, counter, None)
    return int(count()) if count else None
