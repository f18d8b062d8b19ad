"""SVDLinear / LoRALinear: the forward formula, step-0 identity, pruned ranks, shared dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adalora_core.adalora_model import inject_adalora
from adalora_core.config import AdaLoraConfig
from adalora_core.layers import DropoutCache, LoRALinear, SVDLinear


def _base(kind: str, d_in: int = 5, d_out: int = 7) -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(d_in, d_out) if kind == "linear" else Conv1D(d_out, d_in)


def _weight_out_in(base: nn.Module) -> torch.Tensor:
    return base.weight.t() if isinstance(base, Conv1D) else base.weight


def _randomize(layer: SVDLinear) -> None:
    with torch.no_grad():
        layer.lora_E.normal_()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_step_zero_output_equals_base(kind: str) -> None:
    base = _base(kind)
    x = torch.randn(2, 3, 5)
    expected = base(x)
    layer = SVDLinear(base, rank=4, init_r=4, lora_alpha=8.0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-7)
    assert layer.base_layer is base and not base.weight.requires_grad


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_and_grads_follow_the_svd_formula(kind: str) -> None:
    base = _base(kind)
    layer = SVDLinear(base, rank=4, init_r=4, lora_alpha=8.0)
    _randomize(layer)
    x = torch.randn(2, 3, 5, requires_grad=True)
    out = layer(x)
    P, lam, Q = layer.lora_B, layer.lora_E, layer.lora_A
    w0 = _weight_out_in(base)
    reference = x @ w0.t() + base.bias + 2.0 * (x @ Q.t() @ torch.diag(lam.view(-1)) @ P.t())
    torch.testing.assert_close(out, reference)
    upstream = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, P, lam, Q), upstream)
    theirs = torch.autograd.grad(reference, (x, P, lam, Q), upstream)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    delta = layer.delta_weight()
    assert delta.shape == base.weight.shape  # Conv1D keeps its in×out layout
    torch.testing.assert_close(out, base(x) + x @ _weight_out_in_delta(delta, kind).t())


def _weight_out_in_delta(delta: torch.Tensor, kind: str) -> torch.Tensor:
    return delta.t() if kind == "conv1d" else delta


def test_pruned_rank_keeps_the_init_r_scaling() -> None:
    base = _base("linear")
    layer = SVDLinear(base, rank=2, init_r=6, lora_alpha=12.0)
    assert layer.rank == 2 and layer.scaling == pytest.approx(2.0)
    assert layer.lora_A.shape == (2, 5) and layer.lora_B.shape == (7, 2)
    _randomize(layer)
    x = torch.randn(4, 5)
    expected = base(x) + 2.0 * (x @ layer.lora_A.t() * layer.lora_E.view(-1)) @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_rank_zero_returns_the_base_output(kind: str) -> None:
    base = _base(kind)
    layer = SVDLinear(base, rank=0, init_r=4, lora_alpha=8.0)
    assert layer.lora_A.shape == (0, 5) and layer.lora_B.shape == (7, 0)
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=1e-7)
    assert torch.count_nonzero(layer.delta_weight()) == 0


def test_lora_linear_starts_at_base_and_follows_its_formula() -> None:
    base = _base("linear")
    layer = LoRALinear(base, r=3, lora_alpha=6.0)
    x = torch.randn(2, 5)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=1e-7)
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * (x @ layer.lora_A.t() @ layer.lora_B.t())
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), base(x) + x @ layer.delta_weight().t())


def _identity_adapter(cache: DropoutCache | None, dropout: float) -> SVDLinear:
    """A layer whose output is exactly scaling · dropout(x), to observe the dropout mask."""
    base = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(base.weight)
    layer = SVDLinear(base, rank=4, init_r=4, lora_alpha=4.0, lora_dropout=dropout)
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(4))
        layer.lora_B.copy_(torch.eye(4))
        layer.lora_E.fill_(1.0)
    layer.dropout_cache = cache
    return layer


def test_shared_dropout_gives_query_key_value_one_mask() -> None:
    cache = DropoutCache()
    q, k, v = (_identity_adapter(cache, 0.5) for _ in range(3))
    x = torch.ones(8, 4)
    outs = [layer(x) for layer in (q, k, v)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    assert 0 < int((outs[0] == 0).sum()) < outs[0].numel()  # dropout did drop something
    cache.clear()
    assert not cache._entries


def test_without_a_cache_each_module_draws_its_own_mask() -> None:
    torch.manual_seed(0)
    q, k = _identity_adapter(None, 0.5), _identity_adapter(None, 0.5)
    x = torch.ones(16, 4)
    assert not torch.equal(q(x), k(x))


def test_eval_mode_and_zero_dropout_do_not_drop() -> None:
    layer = _identity_adapter(DropoutCache(), 0.5).eval()
    x = torch.ones(8, 4)
    assert torch.equal(layer(x), x)
    no_dropout = _identity_adapter(DropoutCache(), 0.0)
    assert torch.equal(no_dropout(x), x)


def test_model_forward_shares_one_draw_per_input_and_clears_it(make_tiny_bert, batch) -> None:
    config = AdaLoraConfig(init_r=4, target_r=2, lora_dropout=0.3)
    model = inject_adalora(
        make_tiny_bert(),
        config,
        schedule=config.schedule(10),
        head_modules=["classifier"],
    ).train()
    cache = model._dropout_cache
    draws = []
    original = torch.nn.functional.dropout

    def counting_dropout(x, p=0.5, training=True, inplace=False):
        if p == 0.3:  # the adapters' rate; BERT's own dropout layers run at p = 0
            draws.append(x.shape)
        return original(x, p, training, inplace)

    torch.nn.functional.dropout = counting_dropout
    try:
        model(**batch)
    finally:
        torch.nn.functional.dropout = original
    # Per layer: q/k/v share one draw; attention.output.dense, intermediate, output: one each.
    assert len(draws) == 2 * 4
    assert not cache._entries


def test_hooked_base_layers_go_through_their_module() -> None:
    base = _base("linear")
    base.register_forward_hook(lambda module, inputs, output: output + 1.0)
    layer = SVDLinear(base, rank=2, init_r=2, lora_alpha=2.0)
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(layer(x), base(x))  # the hook's +1 is kept (λ = 0)
    assert layer(x).shape == (2, 3, 7)


def test_an_orthonormal_start_leaves_the_model_unchanged_and_the_penalty_at_zero() -> None:
    """P with orthonormal columns and Q with orthonormal rows: the regulariser's target from
    the first update, while λ = 0 still keeps the output equal to the base layer's."""
    from adalora_core.regularizer import OrthogonalityRegularizer

    torch.manual_seed(0)
    base = nn.Linear(48, 32)
    layer = SVDLinear(base, rank=6, init_r=6, lora_alpha=12.0, pq_init="orthonormal")
    eye = torch.eye(6)
    torch.testing.assert_close(layer.lora_A @ layer.lora_A.T, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.lora_B.T @ layer.lora_B, eye, atol=1e-5, rtol=0)
    x = torch.randn(4, 48)
    torch.testing.assert_close(layer(x), base(x))
    assert float(OrthogonalityRegularizer([layer])()) < 1e-5
    normal = SVDLinear(nn.Linear(48, 32), rank=6, init_r=6, lora_alpha=12.0)
    assert float(OrthogonalityRegularizer([normal])()) > 1.0  # N(0, 0.02) starts far from I
