"""Our AdaLoRA against PEFT's on the same tiny BERT, weights, batches and hyper-parameters.

PEFT scales the update by lora_alpha / (init_r + 1e-5) where we use lora_alpha / init_r: a
relative difference of 1e-5 / init_r (under 2e-6) on the adapter term. Each run is done twice:
"aligned-scaling" sets PEFT's ranknum so both scalings agree, leaving only float reordering
(batched regularizer, fused addmm_): losses agree within 1e-5 (observed 1.4e-6 at worst);
"peft-scaling" keeps PEFT's own: losses agree within 2e-5 (observed 7.3e-6, at the last steps).
The masks are identical at every masking step in both.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import AdaLoraConfig as PeftAdaLoraConfig
from peft import get_peft_model

from adalora_core.adalora_model import inject_adalora
from adalora_core.config import AdaLoraConfig

TOTAL_STEPS = 120
HYPER = {
    "init_r": 6,
    "target_r": 3,
    "t_init": 10,
    "t_final": 30,
    "delta_t": 5,
    "beta1": 0.85,
    "beta2": 0.85,
    "orth_reg_weight": 0.1,
    "lora_alpha": 16.0,
}
TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def _batches(steps: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        {
            "input_ids": torch.randint(0, 64, (8, 12), generator=generator),
            "labels": torch.randint(0, 2, (8,), generator=generator),
        }
        for _ in range(steps)
    ]


@pytest.fixture(scope="module", params=["aligned-scaling", "peft-scaling"])
def runs(request: pytest.FixtureRequest, make_tiny_bert) -> dict[str, list]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on shared CI cores
    try:
        return _run_both(request.param, make_tiny_bert())
    finally:
        torch.set_num_threads(threads)


def _run_both(variant: str, base) -> dict[str, list]:
    ours_base, peft_base = copy.deepcopy(base), copy.deepcopy(base)

    config = AdaLoraConfig(**HYPER, lora_dropout=0.0, target_modules=TARGETS)
    ours = inject_adalora(
        ours_base,
        config,
        schedule=config.schedule(TOTAL_STEPS),
        head_modules=["classifier"],
    )
    peft_config = PeftAdaLoraConfig(
        init_r=HYPER["init_r"],
        target_r=HYPER["target_r"],
        tinit=HYPER["t_init"],
        tfinal=HYPER["t_final"],
        deltaT=HYPER["delta_t"],
        beta1=HYPER["beta1"],
        beta2=HYPER["beta2"],
        orth_reg_weight=HYPER["orth_reg_weight"],
        lora_alpha=HYPER["lora_alpha"],
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        total_step=TOTAL_STEPS,
        task_type="SEQ_CLS",
    )
    theirs = get_peft_model(peft_base, peft_config)
    inner = theirs.base_model.model
    assert sorted(
        n.removesuffix(".lora_E.default")
        for n, _ in inner.named_parameters()
        if n.endswith("lora_E.default")
    ) == sorted(ours.adapted)
    with torch.no_grad():
        for path, layer in ours.adapted.items():
            target = inner.get_submodule(path)
            target.lora_A["default"].copy_(layer.lora_A)
            target.lora_B["default"].copy_(layer.lora_B)
            target.lora_E["default"].copy_(torch.randn_like(layer.lora_E) * 0.1)
            if variant == "aligned-scaling":
                # PEFT divides by ranknum + 1e-5; make that exactly init_r to isolate the rest.
                target.ranknum["default"].fill_(HYPER["init_r"] - 1e-5)
            layer.lora_E.copy_(target.lora_E["default"])  # non-zero λ so masking matters at once
        head = inner.classifier.modules_to_save["default"]
        head.load_state_dict(ours_base.classifier.state_dict())

    ours_opt = torch.optim.AdamW(ours.adapter_parameters() + ours.head_parameters(), lr=5e-3)
    their_params = [p for p in theirs.parameters() if p.requires_grad]
    assert len(their_params) == len(ours.adapter_parameters() + ours.head_parameters())
    their_opt = torch.optim.AdamW(their_params, lr=5e-3)

    record: dict[str, list] = {"ours_loss": [], "their_loss": [], "ours_mask": [], "their_mask": []}
    for step, batch in enumerate(_batches(TOTAL_STEPS), start=1):
        loss = ours(**batch).loss + ours.regularization_loss()
        loss.backward()
        ours_opt.step()
        ours.update_and_allocate(step)
        ours.zero_grad_adapters()
        record["ours_loss"].append(loss.item())

        their_loss = theirs(**batch).loss  # PEFT adds its orthogonality term itself
        their_loss.backward()
        their_opt.step()
        theirs.base_model.update_and_allocate(step)
        their_opt.zero_grad()
        record["their_loss"].append(their_loss.item())

        pattern = theirs.peft_config["default"].rank_pattern
        if pattern is not None:
            record["their_mask"].append(
                (step, {k.removesuffix(".lora_E.default"): v for k, v in pattern.items()})
            )
        record["ours_mask"].append((step, ours.rank_pattern()))
        # The λ actually used must agree too (the frozen pattern is re-applied after T - t_final).
        zeros_ours = {p: (layer.lora_E.view(-1) == 0).tolist() for p, layer in ours.adapted.items()}
        zeros_theirs = {
            p: (inner.get_submodule(p).lora_E["default"].view(-1) == 0).tolist()
            for p in ours.adapted
        }
        record.setdefault("zeros", []).append((step, zeros_ours, zeros_theirs))
    record["history"] = ours.history
    record["variant"] = variant
    return record


def test_losses_match_peft_every_step(runs: dict[str, list]) -> None:
    ours = torch.tensor(runs["ours_loss"], dtype=torch.float64)
    theirs = torch.tensor(runs["their_loss"], dtype=torch.float64)
    assert len(ours) == TOTAL_STEPS
    # Observed max |diff| over 120 steps: 1.4e-6 aligned, 7.3e-6 with PEFT's own scaling (the
    # gap grows in the final phase, where Adam keeps amplifying the 1e-6 relative difference).
    tolerance = 1e-5 if runs["variant"] == "aligned-scaling" else 2e-5
    assert torch.allclose(ours, theirs, rtol=0, atol=tolerance), (ours - theirs).abs().max()
    assert ours[-1] < ours[0]  # the runs actually trained


def test_masks_match_peft_at_every_masking_step(runs: dict[str, list]) -> None:
    masking_steps = [entry["step"] for entry in runs["history"]]
    schedule = AdaLoraConfig(**HYPER).schedule(TOTAL_STEPS)
    expected = [t for t in range(1, TOTAL_STEPS + 1) if schedule.is_masking_step(t)]
    assert masking_steps == expected
    assert len(expected) >= 10 and expected[-1] == TOTAL_STEPS - HYPER["t_final"]
    ours_by_step = dict(runs["ours_mask"])
    theirs_by_step = dict(runs["their_mask"])
    for step in masking_steps:
        assert ours_by_step[step] == theirs_by_step[step], f"masks differ at step {step}"


def test_final_phase_keeps_the_frozen_pattern_like_peft(runs: dict[str, list]) -> None:
    final = TOTAL_STEPS - HYPER["t_final"]
    for step, zeros_ours, zeros_theirs in runs["zeros"]:
        if step >= final:
            assert zeros_ours == zeros_theirs, f"masked λ differ at step {step}"
    last_ranks = runs["history"][-1]["ranks"]
    assert sum(last_ranks.values()) == HYPER["target_r"] * len(last_ranks)
