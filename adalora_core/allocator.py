"""Importance tracking and global rank allocation, all in flat device tensors.

`FlatAdapterStore` packs every module's λ, Q and P into ONE storage (each nn.Parameter's data is
a view into it) and gives every parameter a `.grad` that is a view into ONE flat gradient
buffer; autograd then accumulates in place into those views (like DDP's
gradient_as_bucket_view). The λ of all modules form one contiguous leading segment, so masking
is one op, and the importance update is a handful of elementwise ops on two flat tensors with no
per-parameter loop and no host sync. The optimizer still sees the per-module parameters.

Packing happens at injection, so the model must already be on its device; `AdaLoraModel`
re-packs after `.to()`/`.cuda()`. `optimizer.zero_grad(set_to_none=True)` drops the grad views;
`FlatAdapterStore.ensure_grads_attached` (called by every update) copies such grads back into
the flat buffer and re-attaches the views, but `AdaLoraModel.zero_grad_adapters()` avoids the copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adalora_core.config import BudgetSchedule
from adalora_core.layers import SVDLinear

ALLOCATOR_STATE_VERSION = 1


class FlatAdapterStore:
    """One storage for all adapter weights and one for their gradients (layout: all λ, then
    Q and P of each module in order)."""

    def __init__(self, layers: Sequence[SVDLinear]) -> None:
        self.layers = list(layers)
        self.pack()

    def _collect(self) -> list[nn.Parameter]:
        lambdas = [layer.lora_E for layer in self.layers]
        vectors = [p for layer in self.layers for p in (layer.lora_A, layer.lora_B)]
        return lambdas + vectors

    @torch.no_grad()
    def pack(self) -> None:
        """(Re)build the flat storages from the parameters' current values and grads."""
        self.params = self._collect()
        devices = {p.device for p in self.params}
        dtypes = {p.dtype for p in self.params}
        if len(devices) > 1 or len(dtypes) > 1:
            raise ValueError(
                f"all adapter parameters must share one device and dtype to be packed, "
                f"got {sorted(map(str, devices))} / {sorted(map(str, dtypes))}"
            )
        self.numels = [p.numel() for p in self.params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        self.lambda_numel = sum(layer.lora_E.numel() for layer in self.layers)
        self.grad_views: list[Tensor] = []
        for param, segment, grad_segment in zip(
            self.params,
            self.flat.split(self.numels),
            self.grad.split(self.numels),
            strict=True,
        ):
            old_grad = param.grad
            param.data = segment.view(param.shape)
            grad_view = grad_segment.view(param.shape)
            if old_grad is not None:
                grad_view.copy_(old_grad)
            param.grad = grad_view
            self.grad_views.append(grad_view)

    @property
    def lambdas(self) -> Tensor:
        """λ of every module, in module order (init_r entries each)."""
        return self.flat[: self.lambda_numel]

    @torch.no_grad()
    def ensure_grads_attached(self) -> None:
        """Re-attach grads that zero_grad(set_to_none=True) or a fresh backward replaced.
        The check is identity comparisons only; the copy happens only after such a replacement."""
        if all(p.grad is g for p, g in zip(self.params, self.grad_views, strict=True)):
            return
        for param, view in zip(self.params, self.grad_views, strict=True):
            if param.grad is view:
                continue
            if param.grad is None:
                view.zero_()
            else:
                view.copy_(param.grad)
            param.grad = view

    @torch.no_grad()
    def zero_grad(self) -> None:
        self.grad.zero_()
        self.ensure_grads_attached()


class RankAllocator:
    """AdaLoRA's sensitivity-times-uncertainty importance and the cubic budget (in triplets).

    After update t: I = |w·∇w| per element, Ī ← β1·Ī + (1−β1)·I, Ū ← β2·Ū + (1−β2)·|I − Ī|
    (with the updated Ī, as PEFT does); triplet score S_i = s(λ_i) + mean_j s(Q_ij) +
    mean_j s(P_ji) with s = Ī·Ū. The importance is updated while t < T − t_final; at
    t = T − t_final the mask is forced to exactly the target budget, frozen, and the importance
    reset; later updates re-apply that frozen mask (PEFT's behaviour)."""

    def __init__(
        self,
        store: FlatAdapterStore,
        names: Sequence[str],
        schedule: BudgetSchedule,
        *,
        init_r: int,
        target_r: int,
        beta1: float,
        beta2: float,
    ) -> None:
        if len(names) != len(store.layers):
            raise ValueError("one name per adapted layer is required")
        if any(layer.rank != init_r for layer in store.layers):
            raise ValueError("the allocator needs every adapted layer at rank init_r")
        self.store = store
        self.names = list(names)
        self.schedule = schedule
        self.init_r = init_r
        self.beta1 = beta1
        self.beta2 = beta2
        self.num_triplets = init_r * len(self.names)
        self.initial_budget = self.num_triplets
        self.target_budget = target_r * len(self.names)
        self.triplet_index, self.element_weight = self._triplet_layout()
        self.ema_ipt = torch.zeros_like(store.flat)
        self.ema_unc = torch.zeros_like(store.flat)
        self.keep = torch.ones(self.num_triplets, dtype=torch.bool, device=store.flat.device)
        self.frozen = False
        self.budget = self.initial_budget
        self.history: list[dict[str, Any]] = []

    def _triplet_layout(self) -> tuple[Tensor, Tensor]:
        """For every flat element: its triplet and its weight in that triplet's score
        (1 for λ, 1/d_in for a row of Q, 1/d_out for a column of P)."""
        device = self.store.flat.device
        r = self.init_r
        indices = [torch.arange(self.num_triplets, dtype=torch.int32)]
        weights = [torch.ones(self.num_triplets)]
        for module, layer in enumerate(self.store.layers):
            first = module * r
            rows = torch.arange(first, first + r, dtype=torch.int32)
            indices.append(rows.repeat_interleave(layer.in_features))  # Q: r×in, row-major
            weights.append(torch.full((r * layer.in_features,), 1.0 / layer.in_features))
            indices.append(rows.repeat(layer.out_features))  # P: out×r, row-major
            weights.append(torch.full((r * layer.out_features,), 1.0 / layer.out_features))
        index = torch.cat(indices).to(device)
        weight = torch.cat(weights).to(device=device, dtype=self.store.flat.dtype)
        return index, weight

    def to_device(self) -> None:
        """Follow the store after it was re-packed on another device or dtype."""
        flat = self.store.flat
        self.ema_ipt = self.ema_ipt.to(device=flat.device, dtype=flat.dtype)
        self.ema_unc = self.ema_unc.to(device=flat.device, dtype=flat.dtype)
        self.keep = self.keep.to(flat.device)
        self.triplet_index = self.triplet_index.to(flat.device)
        self.element_weight = self.element_weight.to(device=flat.device, dtype=flat.dtype)

    @torch.no_grad()
    def update_and_allocate(self, step: int) -> None:
        """Call once after optimizer update `step` (1-based), before the grads are zeroed."""
        self.store.ensure_grads_attached()
        final = self.schedule.final_mask_step
        if step > final:
            if not self.frozen:  # e.g. resumed from a checkpoint written before the final mask
                self._mask_to(self.target_budget, step)
                self._freeze()
            self.store.lambdas.masked_fill_(~self.keep, 0.0)
            return
        if step < final:
            self.update_importance()
        if step == final:
            self._mask_to(self.target_budget, step)
            self._freeze()
        elif self.schedule.is_masking_step(step):
            budget = self.schedule.budget(step, self.initial_budget, self.target_budget)
            self._mask_to(budget, step)

    @torch.no_grad()
    def update_importance(self) -> None:
        """One EMA step from the current grads; skipped on device (no sync) when any adapter
        gradient is not finite, e.g. an fp16 overflow step."""
        self.store.ensure_grads_attached()
        ipt = (self.store.flat * self.store.grad).abs_()
        finite = torch.isfinite(ipt).all()
        new_ipt = self.beta1 * self.ema_ipt + (1 - self.beta1) * ipt
        new_unc = self.beta2 * self.ema_unc + (1 - self.beta2) * (ipt - new_ipt).abs_()
        self.ema_ipt = torch.where(finite, new_ipt, self.ema_ipt)
        self.ema_unc = torch.where(finite, new_unc, self.ema_unc)

    @torch.no_grad()
    def triplet_scores(self) -> Tensor:
        element = self.ema_ipt * self.ema_unc * self.element_weight
        scores = torch.zeros(self.num_triplets, dtype=element.dtype, device=element.device)
        return scores.index_add_(0, self.triplet_index, element)

    @torch.no_grad()
    def _mask_to(self, budget: int, step: int) -> None:
        """Keep the top-`budget` triplets (ties: lower index first, so exactly `budget` stay)."""
        keep = torch.zeros_like(self.keep)
        if budget >= self.num_triplets:
            keep.fill_(True)
        elif budget > 0:
            order = torch.sort(self.triplet_scores(), descending=True, stable=True).indices
            keep[order[:budget]] = True
        self.keep = keep
        self.store.lambdas.masked_fill_(~keep, 0.0)
        self.budget = min(budget, self.num_triplets)
        counts = keep.view(len(self.names), self.init_r).sum(dim=1).tolist()  # the one sync
        self.history.append(
            {
                "step": step,
                "budget": self.budget,
                "ranks": dict(zip(self.names, counts, strict=True)),
            }
        )

    def _freeze(self) -> None:
        self.frozen = True
        self.ema_ipt.zero_()
        self.ema_unc.zero_()

    def rank_pattern(self) -> dict[str, list[bool]]:
        rows = self.keep.view(len(self.names), self.init_r).tolist()
        return dict(zip(self.names, rows, strict=True))

    def ranks(self) -> dict[str, int]:
        counts = self.keep.view(len(self.names), self.init_r).sum(dim=1).tolist()
        return dict(zip(self.names, counts, strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": ALLOCATOR_STATE_VERSION,
            "names": list(self.names),
            "ema_ipt": self.ema_ipt.detach().clone(),
            "ema_unc": self.ema_unc.detach().clone(),
            "keep": self.keep.detach().clone(),
            "frozen": self.frozen,
            "budget": self.budget,
            "history": copy.deepcopy(self.history),
            "schedule": self.schedule.to_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != ALLOCATOR_STATE_VERSION:
            raise ValueError(f"unsupported allocator state version {state.get('version')!r}")
        if list(state["names"]) != self.names:
            raise ValueError("allocator state was saved for a different set of adapted modules")
        if state["ema_ipt"].shape != self.ema_ipt.shape or state["keep"].shape != self.keep.shape:
            raise ValueError("allocator state shapes do not match this model's adapters")
        if state["schedule"] != self.schedule.to_dict():
            raise ValueError(
                f"allocator state was saved for schedule {state['schedule']}, "
                f"this run uses {self.schedule.to_dict()}"
            )
        self.ema_ipt.copy_(state["ema_ipt"])
        self.ema_unc.copy_(state["ema_unc"])
        self.keep.copy_(state["keep"])
        self.frozen = bool(state["frozen"])
        self.budget = int(state["budget"])
        self.history = copy.deepcopy(list(state["history"]))
