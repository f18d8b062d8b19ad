"""Wrap a transformers model with AdaLoRA (or plain LoRA) adapters for the trainer.

Trainer contract, per optimizer update t = 1, 2, ... (t counts updates, not micro-batches):
    out = model(**batch); loss = task_loss(out) + model.regularization_loss(); loss.backward()
    optimizer.step(); model.update_and_allocate(t); model.zero_grad_adapters()
Inject AFTER moving the base model to its device: adapters are created on the base weights'
device and packed into flat buffers there (a later `.to()` re-packs, costing one copy).
`zero_grad_adapters()` zeroes the flat gradient buffer in place and drops the head's grads;
`optimizer.zero_grad()` also works (set_to_none=True costs one copy back into the buffer at the
next update).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adalora_core.allocator import FlatAdapterStore, RankAllocator
from adalora_core.config import AdaLoraConfig, BudgetSchedule
from adalora_core.errors import ConfigError
from adalora_core.inject import find_targets, resolve_heads, set_submodule
from adalora_core.layers import DropoutCache, LoRALinear, SVDLinear
from adalora_core.regularizer import OrthogonalityRegularizer


class _AdaptedModel(nn.Module):
    """Forward delegation, shared dropout and head handling common to AdaLoRA and LoRA."""

    def __init__(
        self,
        base_model: nn.Module,
        adapted: dict[str, SVDLinear] | dict[str, LoRALinear],
        head_paths: list[str],
    ) -> None:
        super().__init__()
        self.base_model = base_model
        # A plain dict: the layers are already registered as submodules of base_model.
        self.adapted = adapted
        self.head_paths = head_paths
        # Shared by every adapter and cleared around each forward. It stays active outside the
        # forward too, so activation-checkpoint recomputation draws the same shared masks.
        self._dropout_cache = DropoutCache()
        for layer in adapted.values():
            layer.dropout_cache = self._dropout_cache

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._dropout_cache.clear()
        try:
            return self.base_model(*args, **kwargs)
        finally:
            self._dropout_cache.clear()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self._dropout_cache.clear()
        try:
            return self.base_model.generate(*args, **kwargs)
        finally:
            self._dropout_cache.clear()

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.adapted.values() for p in layer.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [
            p for path in self.head_paths for p in self.base_model.get_submodule(path).parameters()
        ]

    def final_parameter_count(self) -> int:
        """Parameters the trained adapter holds: kept ranks plus the heads. Equal rank is not
        equal size (a triplet on an FFN matrix costs more than one on attention), so budgets
        are compared on this count."""
        return self.adapter_parameter_count() + sum(p.numel() for p in self.head_parameters())

    def adapter_parameter_count(self) -> int:
        """Parameters of the kept ranks only (no heads)."""
        per_rank = self._parameters_per_rank()
        return sum(rank * per_rank[name] for name, rank in self.ranks().items())

    def _parameters_per_rank(self) -> dict[str, int]:
        raise NotImplementedError


class AdaLoraModel(_AdaptedModel):
    """A transformers model whose target linears are SVDLinear adapters with a rank allocator."""

    def __init__(
        self,
        base_model: nn.Module,
        config: AdaLoraConfig,
        schedule: BudgetSchedule,
        adapted: dict[str, SVDLinear],
        head_paths: list[str],
    ) -> None:
        super().__init__(base_model, adapted, head_paths)
        self.config = config
        self.schedule = schedule
        self.store = FlatAdapterStore(list(adapted.values()))
        self.allocator = RankAllocator(
            self.store,
            list(adapted),
            schedule,
            init_r=config.init_r,
            target_r=config.target_r,
            beta1=config.beta1,
            beta2=config.beta2,
        )
        self.regularizer = OrthogonalityRegularizer(list(adapted.values()))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AdaLoraModel:
        # .to()/.cuda()/.half() give every parameter fresh storage; rebuild the flat views.
        super()._apply(fn, recurse)
        self.store.pack()
        self.allocator.to_device()
        return self

    @property
    def history(self) -> list[dict[str, Any]]:
        """{"step", "budget", "ranks": {module: rank}} at every masking step."""
        return self.allocator.history

    @property
    def initial_budget(self) -> int:
        return self.allocator.initial_budget

    @property
    def target_budget(self) -> int:
        return self.allocator.target_budget

    def regularization_loss(self) -> Tensor:
        """γ·R; the trainer adds it to whatever task loss it uses."""
        weight = self.config.orth_reg_weight
        if weight == 0 or self.regularizer.num_terms == 0:
            return torch.zeros((), device=self.store.flat.device, dtype=self.store.flat.dtype)
        return weight * self.regularizer()

    def update_and_allocate(self, step: int) -> None:
        """After optimizer update `step` (1-based) and before zeroing grads."""
        self.allocator.update_and_allocate(step)

    def zero_grad_adapters(self) -> None:
        self._dropout_cache.clear()  # drops entries left by activation-checkpoint recomputation
        self.store.zero_grad()
        for param in self.head_parameters():
            param.grad = None

    def rank_pattern(self) -> dict[str, list[bool]]:
        return self.allocator.rank_pattern()

    def rank_mask(self) -> Tensor:
        """The kept-triplet mask on the device (compared across data-parallel ranks)."""
        return self.allocator.keep

    def ranks(self) -> dict[str, int]:
        return self.allocator.ranks()

    def _parameters_per_rank(self) -> dict[str, int]:
        # One triplet: a row of Q, a column of P and its λ.
        return {n: m.in_features + m.out_features + 1 for n, m in self.adapted.items()}

    def budget_now(self) -> int:
        """Triplets kept by the current mask (the initial budget before the first mask)."""
        return self.allocator.budget

    def allocator_state(self) -> dict[str, Any]:
        return self.allocator.state_dict()

    def load_allocator_state(self, state: dict[str, Any]) -> None:
        self.allocator.load_state_dict(state)


class LoraModel(_AdaptedModel):
    """Plain LoRA with the trainer-facing methods of AdaLoraModel (fixed rank, no allocator)."""

    def __init__(
        self, base_model: nn.Module, r: int, adapted: dict[str, LoRALinear], head_paths: list[str]
    ) -> None:
        super().__init__(base_model, adapted, head_paths)
        self.r = r
        self.history: list[dict[str, Any]] = []

    def regularization_loss(self) -> Tensor:
        return torch.zeros(())

    def update_and_allocate(self, step: int) -> None:
        """Nothing to allocate: every module keeps rank r."""

    def zero_grad_adapters(self) -> None:
        self._dropout_cache.clear()
        for param in self.adapter_parameters() + self.head_parameters():
            param.grad = None

    def rank_pattern(self) -> dict[str, list[bool]]:
        return {name: [True] * self.r for name in self.adapted}

    def ranks(self) -> dict[str, int]:
        return dict.fromkeys(self.adapted, self.r)

    def _parameters_per_rank(self) -> dict[str, int]:
        return {n: m.in_features + m.out_features for n, m in self.adapted.items()}

    def budget_now(self) -> int:
        return self.r * len(self.adapted)

    def allocator_state(self) -> dict[str, Any]:
        return {}

    def load_allocator_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError("a plain LoRA model has no allocator state to load")


def _prepare(model: nn.Module, targets: Sequence[str] | str | None, head_modules: Sequence[str]):
    targets_found = find_targets(model, targets, head_modules)
    head_paths = resolve_heads(model, head_modules)
    for param in model.parameters():
        param.requires_grad_(False)
    return targets_found, head_paths


def _unfreeze_heads(model: nn.Module, head_paths: list[str]) -> None:
    for path in head_paths:
        for param in model.get_submodule(path).parameters():
            param.requires_grad_(True)


def inject_adalora(
    model: nn.Module,
    config: AdaLoraConfig,
    *,
    schedule: BudgetSchedule,
    head_modules: Sequence[str] = (),
) -> AdaLoraModel:
    """Replace the target linears of `model` (in place) by SVDLinear adapters at rank init_r,
    freeze every base weight, make the named heads trainable. Call after `model.to(device)`.
    ``schedule`` is the run's (``RunPlan.schedule``, or ``config.schedule(total_steps)``)."""
    targets, head_paths = _prepare(model, config.target_modules, head_modules)
    adapted: dict[str, SVDLinear] = {}
    for path in targets:
        layer = SVDLinear(
            model.get_submodule(path),
            rank=config.init_r,
            init_r=config.init_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            pq_init=config.pq_init,
        )
        set_submodule(model, path, layer)
        adapted[path] = layer
    _unfreeze_heads(model, head_paths)
    return AdaLoraModel(model, config, schedule, adapted, head_paths)


def inject_lora(
    model: nn.Module,
    r: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    head_modules: Sequence[str] = (),
) -> LoraModel:
    """Plain LoRA on the same targets (the baseline for benchmarks and GLUE comparisons)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError("lora.r", f"must be an integer >= 1, got {r!r}")
    targets, head_paths = _prepare(model, target_modules, head_modules)
    adapted: dict[str, LoRALinear] = {}
    for path in targets:
        layer = LoRALinear(
            model.get_submodule(path), r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout
        )
        set_submodule(model, path, layer)
        adapted[path] = layer
    _unfreeze_heads(model, head_paths)
    return LoraModel(model, r, adapted, head_paths)
