"""Run a grid of bench.glue cells (one subprocess each) and print a markdown results table.

    python -m bench.glue_table --tasks sst2 --seeds 0 1 2 --out /tmp/glue.jsonl -- \
        --train-limit 1920 --max-steps 60 --lr 2e-3

Finished cells are appended to ``--out`` as JSON lines and skipped when the grid is re-run,
so an interrupted grid continues where it stopped; ``--table-only`` just prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.glue import METHODS

LABELS = {"adalora": "AdaLoRA (ours, 12→8)", "lora": "LoRA r=8", "peft-adalora": "PEFT AdaLoRA"}


def _done(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def run_cell(task: str, method: str, seed: int, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.glue", "--task", task, "--method", method]
    command += ["--seed", str(seed), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| task | method | metric | mean ± std | seeds | per seed | final rank | trainable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["task"], r["method"]) for r in results}, key=lambda k: (k[0], METHODS.index(k[1]))
    )
    for task, method in keys:
        cells = sorted(
            (r for r in results if (r["task"], r["method"]) == (task, method)),
            key=lambda r: r["seed"],
        )
        metric = cells[0]["metric"]
        values = [100 * r["value"] for r in cells]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        rows = [
            f"| {task} | {LABELS[method]} | {metric} | {statistics.mean(values):.1f} ± "
            f"{spread:.1f} | {len(values)} | {per_seed} | {cells[0]['total_rank']} | "
            f"{cells[0]['trainable_params']:,} |"
        ]
        if task == "mrpc":
            f1 = [100 * r["metrics"]["f1"] for r in cells]
            rows.append(
                f"| {task} | {LABELS[method]} | f1 | {statistics.mean(f1):.1f} ± "
                f"{statistics.stdev(f1) if len(f1) > 1 else 0.0:.1f} | {len(f1)} | "
                f"{', '.join(f'{v:.1f}' for v in f1)} | | |"
            )
        lines += rows
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)

    if not args.table_only:
        finished = {(r["task"], r["method"], r["seed"]) for r in _done(args.out)}
        for seed in args.seeds:  # seed-major: every method gets seed 0 before any gets seed 1
            for task in args.tasks:
                for method in args.methods:
                    if (task, method, seed) in finished:
                        continue
                    result = run_cell(task, method, seed, extra)
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(result) + "\n")
                    print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(_done(args.out)))


if __name__ == "__main__":
    main()
