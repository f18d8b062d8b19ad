"""The orthogonality penalty: its value by hand, rank-0 skipping, and its gradient reaching P
and Q when the trainer adds it to an arbitrary task loss."""

from __future__ import annotations

import torch
from torch import nn

from adalora_core.adalora_model import inject_adalora
from adalora_core.config import AdaLoraConfig
from adalora_core.layers import SVDLinear
from adalora_core.regularizer import OrthogonalityRegularizer


def _frobenius_off_identity(gram: torch.Tensor) -> float:
    n = gram.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            target = 1.0 if i == j else 0.0
            total += (gram[i, j].item() - target) ** 2
    return total**0.5


def test_value_is_the_mean_over_every_p_and_q() -> None:
    torch.manual_seed(0)
    layers = [
        SVDLinear(nn.Linear(5, 3), rank=2, init_r=2, lora_alpha=1.0),
        SVDLinear(nn.Linear(5, 3), rank=2, init_r=2, lora_alpha=1.0),  # same shapes: batched
        SVDLinear(nn.Linear(4, 6), rank=1, init_r=2, lora_alpha=1.0),  # a pruned layer
        SVDLinear(nn.Linear(4, 6), rank=0, init_r=2, lora_alpha=1.0),  # skipped
    ]
    terms = []
    for layer in layers[:3]:
        q, p = layer.lora_A.detach(), layer.lora_B.detach()
        terms.append(_frobenius_off_identity(q @ q.t()))
        terms.append(_frobenius_off_identity(p.t() @ p))
    regularizer = OrthogonalityRegularizer(layers)
    assert regularizer.num_terms == 6
    torch.testing.assert_close(regularizer().item(), sum(terms) / len(terms))


def test_orthonormal_factors_cost_nothing() -> None:
    layer = SVDLinear(nn.Linear(4, 4), rank=3, init_r=3, lora_alpha=1.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(4)[:3])
        layer.lora_B.copy_(torch.eye(4)[:, :3])
    assert OrthogonalityRegularizer([layer])().item() == 0.0


def test_gradient_reaches_p_and_q_through_a_custom_loss(make_tiny_bert, batch) -> None:
    config = AdaLoraConfig(init_r=4, target_r=2, orth_reg_weight=0.3)
    model = inject_adalora(
        make_tiny_bert(),
        config,
        schedule=config.schedule(10),
        head_modules=["classifier"],
    )
    logits = model(input_ids=batch["input_ids"]).logits
    custom = (logits - 1.0).pow(2).mean()  # not the model's own loss
    custom.backward(retain_graph=True)
    # λ = 0 at step 0, so the task loss alone gives P and Q no gradient at all ...
    assert all(
        layer.lora_A.grad.abs().sum() == 0 and layer.lora_B.grad.abs().sum() == 0
        for layer in model.adapted.values()
    )
    model.zero_grad_adapters()
    (custom + model.regularization_loss()).backward()
    # ... and with the penalty added, every P and Q gets exactly the penalty's gradient.
    factors = [p for layer in model.adapted.values() for p in (layer.lora_A, layer.lora_B)]
    reg_only = torch.autograd.grad(0.3 * model.regularizer(), factors)
    got = [p.grad for p in factors]
    for a, b in zip(got, reg_only, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.regularization_loss(), 0.3 * model.regularizer())


def test_zero_weight_gives_a_zero_loss(make_tiny_bert) -> None:
    config = AdaLoraConfig(init_r=4, target_r=2, orth_reg_weight=0.0)
    model = inject_adalora(make_tiny_bert(), config, schedule=config.schedule(10))
    assert model.regularization_loss().item() == 0.0


def test_the_penalty_is_fp32_even_under_bf16_autocast() -> None:
    """A loop running under bf16 autocast (the CUDA path) must not get a bf16 penalty: near an
    orthonormal start the Gram matrices differ from I by less than bf16 can resolve. CPU
    autocast casts matmuls the same way, so this runs anywhere."""
    torch.manual_seed(0)
    layers = [SVDLinear(nn.Linear(64, 64), rank=8, init_r=8, lora_alpha=1.0) for _ in range(3)]
    regularizer = OrthogonalityRegularizer(layers)
    exact = regularizer()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = regularizer()
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, exact)
