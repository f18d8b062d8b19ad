"""The adapted model the loop drives: AdaLoRA, the plain LoRA baseline, or an external
implementation plugged in through ``adapt`` (benchmarks compare PEFT's this way)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from adalora_core.run_plan import RunPlan

if TYPE_CHECKING:
    from adalora_core.formats.bundle import AdapterWeights


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


@torch.no_grad()
def start_from(adapted: Adaptation, weights: AdapterWeights) -> None:
    """Continue training from an adapter: its kept triplets and head weights go into the
    freshly injected model, every triplet it pruned starts at λ = 0 and the allocator's mask is
    its rank pattern, so the model computes what the adapter computed (until the new run's own
    allocation moves on). The adapter must come from the same base with the same init_r,
    lora_alpha and adapted modules."""
    from adalora_core.errors import ConfigError

    layers: dict[str, Any] = getattr(adapted, "adapted", {})
    allocator = getattr(adapted, "allocator", None)
    if allocator is None:
        raise ConfigError("init_from", "only an AdaLoRA run continues from an adapter")
    meta = weights.meta
    if meta.init_r != allocator.init_r:
        raise ConfigError(
            "adalora.init_r", f"is {allocator.init_r}; the adapter was trained with {meta.init_r}"
        )
    if set(weights.modules) != set(layers):
        missing = sorted(set(weights.modules) ^ set(layers))[:5]
        raise ConfigError(
            "adalora.target_modules",
            f"adapts other modules than the adapter does (differing: {', '.join(missing)})",
        )
    pattern = weights.peft_config.get("rank_pattern") or {}
    keep: list[bool] = []
    for name in allocator.names:
        delta, layer = weights.modules[name], layers[name]
        if abs(delta.scaling - layer.scaling) > 1e-9 * max(1.0, abs(layer.scaling)):
            raise ConfigError(
                "adalora.lora_alpha", "differs from the adapter's (its scaling would change)"
            )
        kept = pattern.get(f"{name}.lora_E") or [i < delta.rank for i in range(meta.init_r)]
        device = layer.lora_A.device
        index = torch.tensor([i for i, k in enumerate(kept) if k], dtype=torch.long, device=device)
        layer.lora_E.zero_()
        if len(index):
            layer.lora_A[index] = delta.lora_A.to(layer.lora_A)
            layer.lora_B[:, index] = delta.lora_B.to(layer.lora_B)
            layer.lora_E[index] = delta.lora_E.to(layer.lora_E)
        keep += [bool(k) for k in kept]
    model = getattr(adapted, "base_model", None)
    if weights.head and model is not None:
        unknown = sorted(set(weights.head) - set(model.state_dict()))
        if unknown:
            raise ConfigError("init_from", f"the base model has no head tensors {unknown[:3]}")
        model.load_state_dict(dict(weights.head), strict=False)
    allocator.keep = torch.tensor(keep, dtype=torch.bool, device=allocator.keep.device)
    allocator.budget = int(sum(keep))
