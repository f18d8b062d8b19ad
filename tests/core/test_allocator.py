"""RankAllocator: importance EMAs and triplet scores against hand computation, masking to the
budget, the frozen final phase, fp16-overflow skipping, checkpoint round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adalora_core.adalora_model import AdaLoraModel, inject_adalora
from adalora_core.allocator import FlatAdapterStore, RankAllocator
from adalora_core.config import AdaLoraConfig, BudgetSchedule
from adalora_core.layers import SVDLinear

BETA1, BETA2 = 0.8, 0.7
# final mask at 15; reducing phase 3..14, masking at 3, 6, 9, 12
SCHEDULE = BudgetSchedule(total_steps=20, t_init=2, t_final=5, delta_t=3)


def _allocator() -> tuple[list[SVDLinear], FlatAdapterStore, RankAllocator]:
    torch.manual_seed(0)
    layers = [
        SVDLinear(nn.Linear(3, 2), rank=2, init_r=2, lora_alpha=2.0),
        SVDLinear(nn.Linear(2, 4), rank=2, init_r=2, lora_alpha=2.0),
    ]
    with torch.no_grad():
        for layer in layers:
            layer.lora_E.normal_()
    store = FlatAdapterStore(layers)
    allocator = RankAllocator(
        store, ["a", "b"], SCHEDULE, init_r=2, target_r=1, beta1=BETA1, beta2=BETA2
    )
    return layers, store, allocator


def _set_grads(store: FlatAdapterStore, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in store.params:
        param.grad.copy_(torch.randn(param.shape, generator=generator))


def _per_param(flat: torch.Tensor, store: FlatAdapterStore) -> list[torch.Tensor]:
    return [
        chunk.view(p.shape) for chunk, p in zip(flat.split(store.numels), store.params, strict=True)
    ]


def test_importance_emas_follow_the_formulas_element_by_element() -> None:
    _, store, allocator = _allocator()
    expected_ipt = [[0.0] * p.numel() for p in store.params]
    expected_unc = [[0.0] * p.numel() for p in store.params]
    for seed in (1, 2, 3):
        _set_grads(store, seed)
        with torch.no_grad():  # the weights move between updates, as after optimizer.step()
            for param in store.params:
                param.add_(0.1 * seed)
        for k, param in enumerate(store.params):
            for j, (w, g) in enumerate(
                zip(param.flatten().tolist(), param.grad.flatten().tolist(), strict=True)
            ):
                sensitivity = abs(w * g)
                expected_ipt[k][j] = BETA1 * expected_ipt[k][j] + (1 - BETA1) * sensitivity
                expected_unc[k][j] = BETA2 * expected_unc[k][j] + (1 - BETA2) * abs(
                    sensitivity - expected_ipt[k][j]
                )
        allocator.update_importance()
    for got, want in zip(_per_param(allocator.ema_ipt, store), expected_ipt, strict=True):
        torch.testing.assert_close(got.flatten(), torch.tensor(want))
    for got, want in zip(_per_param(allocator.ema_unc, store), expected_unc, strict=True):
        torch.testing.assert_close(got.flatten(), torch.tensor(want))


def test_triplet_score_is_lambda_plus_row_and_column_means() -> None:
    layers, store, allocator = _allocator()
    _set_grads(store, 5)
    allocator.update_importance()
    _set_grads(store, 6)
    allocator.update_importance()
    element = allocator.ema_ipt * allocator.ema_unc
    chunks = _per_param(element, store)
    lambdas, vectors = chunks[: len(layers)], chunks[len(layers) :]
    expected = []
    for m, layer in enumerate(layers):
        q, p = vectors[2 * m], vectors[2 * m + 1]  # lora_A (r×in), lora_B (out×r)
        for i in range(layer.rank):
            row = sum(q[i, j].item() for j in range(layer.in_features)) / layer.in_features
            col = sum(p[j, i].item() for j in range(layer.out_features)) / layer.out_features
            expected.append(lambdas[m][i, 0].item() + row + col)
    torch.testing.assert_close(allocator.triplet_scores(), torch.tensor(expected))


def test_masking_keeps_the_top_budget_triplets_and_zeroes_the_rest() -> None:
    layers, store, allocator = _allocator()
    for step in (1, 2):
        _set_grads(store, step)
        allocator.update_and_allocate(step)
    assert allocator.history == []  # no masking during the warm-up
    _set_grads(store, 3)
    before = store.lambdas.clone()
    allocator.update_and_allocate(3)
    budget = SCHEDULE.budget(3, 4, 2)
    assert budget == math.floor(2 * (1 - 1 / 13) ** 3 + 2) == 3
    scores = allocator.triplet_scores()
    top = set(torch.topk(scores, budget).indices.tolist())
    assert {i for i, kept in enumerate(allocator.keep.tolist()) if kept} == top
    dropped = [i for i in range(4) if i not in top]
    assert store.lambdas[dropped].eq(0).all()
    assert torch.equal(store.lambdas[sorted(top)], before[sorted(top)])
    assert layers[0].lora_E.view(-1).tolist() == store.lambdas[:2].tolist()  # views, not copies
    assert allocator.history == [
        {
            "step": 3,
            "budget": 3,
            "ranks": dict(zip(["a", "b"], allocator.keep.view(2, 2).sum(1).tolist(), strict=True)),
        }
    ]


def test_ties_still_keep_exactly_the_budget() -> None:
    _, store, allocator = _allocator()
    for step in (1, 2, 3):  # zero grads: every score is 0, all tied
        store.zero_grad()
        allocator.update_and_allocate(step)
    assert allocator.keep.tolist() == [True, True, True, False]  # lowest indices win ties
    assert sum(allocator.ranks().values()) == allocator.budget == 3


def test_non_finite_gradient_skips_the_update() -> None:
    _, store, allocator = _allocator()
    _set_grads(store, 1)
    allocator.update_importance()
    ipt, unc = allocator.ema_ipt.clone(), allocator.ema_unc.clone()
    for bad in (float("inf"), float("nan")):
        _set_grads(store, 2)
        store.params[3].grad.view(-1)[0] = bad
        allocator.update_importance()
        assert torch.equal(allocator.ema_ipt, ipt) and torch.equal(allocator.ema_unc, unc)
    _set_grads(store, 2)
    allocator.update_importance()
    assert not torch.equal(allocator.ema_ipt, ipt)


def test_final_mask_is_exact_frozen_and_reapplied() -> None:
    layers, store, allocator = _allocator()
    for step in range(1, 16):
        _set_grads(store, step)
        allocator.update_and_allocate(step)
    assert [entry["step"] for entry in allocator.history] == [3, 6, 9, 12, 15]
    assert allocator.frozen and allocator.budget == 2
    assert sum(allocator.ranks().values()) == 2
    assert allocator.ema_ipt.eq(0).all() and allocator.ema_unc.eq(0).all()  # reset, as PEFT
    pattern = allocator.keep.clone()
    for step in range(16, 21):
        with torch.no_grad():  # the optimizer revives masked λ between updates
            for layer in layers:
                layer.lora_E.add_(1.0)
        _set_grads(store, step)
        allocator.update_and_allocate(step)
        assert torch.equal(allocator.keep, pattern)
        assert store.lambdas[~pattern].eq(0).all() and store.lambdas[pattern].ne(0).all()
        assert allocator.ema_ipt.eq(0).all()  # importance no longer updated
    assert len(allocator.history) == 5


def _train(model: AdaLoraModel, optimizer, batches, steps, zero_grad=None) -> None:
    for step in steps:
        loss = model(**batches[step - 1]).loss + model.regularization_loss()
        loss.backward()
        optimizer.step()
        model.update_and_allocate(step)
        (zero_grad or model.zero_grad_adapters)()


def _tiny_adalora(make_tiny_bert) -> tuple[AdaLoraModel, torch.optim.Optimizer]:
    config = AdaLoraConfig(init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2)
    model = inject_adalora(
        make_tiny_bert(),
        config,
        schedule=config.schedule(12),
        head_modules=["classifier"],
    ).train()
    optimizer = torch.optim.AdamW(model.adapter_parameters() + model.head_parameters(), lr=1e-2)
    return model, optimizer


@pytest.fixture
def batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        {
            "input_ids": torch.randint(0, 64, (4, 8), generator=generator),
            "labels": torch.randint(0, 2, (4,), generator=generator),
        }
        for _ in range(12)
    ]


def test_resume_from_allocator_state_is_bitwise_identical(make_tiny_bert, batches) -> None:
    reference, ref_opt = _tiny_adalora(make_tiny_bert)
    _train(reference, ref_opt, batches, range(1, 6))
    checkpoint = {
        "model": {k: v.clone() for k, v in reference.state_dict().items()},
        "optimizer": copy.deepcopy(ref_opt.state_dict()),
        "allocator": reference.allocator_state(),
    }
    _train(reference, ref_opt, batches, range(6, 13))

    torch.manual_seed(123)  # a different adapter init, overwritten by the checkpoint
    resumed, opt = _tiny_adalora(make_tiny_bert)
    resumed.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    resumed.load_allocator_state(checkpoint["allocator"])
    _train(resumed, opt, batches, range(6, 13))

    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.history == reference.history and len(resumed.history) >= 3
    state_a, state_b = reference.allocator_state(), resumed.allocator_state()
    assert torch.equal(state_a["keep"], state_b["keep"])


def test_set_to_none_zero_grad_gives_the_same_result(make_tiny_bert, batches) -> None:
    flat_run, flat_opt = _tiny_adalora(make_tiny_bert)
    _train(flat_run, flat_opt, batches, range(1, 8))
    none_run, none_opt = _tiny_adalora(make_tiny_bert)
    _train(none_run, none_opt, batches, range(1, 8), lambda: none_opt.zero_grad(set_to_none=True))
    assert torch.equal(flat_run.allocator.ema_ipt, none_run.allocator.ema_ipt)
    assert flat_run.history == none_run.history
    assert none_run.store.params[0].grad is None
    none_run(**batches[7]).loss.backward()
    none_run.update_and_allocate(8)  # copies the fresh grads into the flat buffer, re-attaches
    assert all(
        p.grad is g for p, g in zip(none_run.store.params, none_run.store.grad_views, strict=True)
    )
    assert none_run.store.grad.abs().sum() > 0


def test_moving_the_model_repacks_the_flat_views(make_tiny_bert, batches) -> None:
    model, _ = _tiny_adalora(make_tiny_bert)
    model.double()
    storage = model.store.flat.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in model.adapter_parameters())
    assert model.allocator.ema_ipt.dtype == torch.float64
    optimizer = torch.optim.AdamW(model.adapter_parameters() + model.head_parameters(), lr=1e-2)
    _train(model, optimizer, batches, range(1, 5))
    assert model.allocator.ema_ipt.abs().sum() > 0
    assert len(model.history) == 1


def test_state_for_another_model_is_rejected(make_tiny_bert) -> None:
    model, _ = _tiny_adalora(make_tiny_bert)
    state = model.allocator_state()
    state["names"] = state["names"][:-1]
    with pytest.raises(ValueError, match="different set of adapted modules"):
        model.load_allocator_state(state)
