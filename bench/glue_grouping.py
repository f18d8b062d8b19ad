"""Does length-grouped batching change adapter quality? Paired held-out cells, on and off.

    python -m bench.glue_grouping --out bench/results/glue_grouping.jsonl --jobs 2

Each method trains at its recipe settings with the tuning seeds (never the protocol's), once
with random batches and once with length-grouped ones, and is scored on 1,000 held-out SST-2
training rows. Prints mean held-out accuracy per method and order, and the paired difference.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.cells import finished, run_cells

SEEDS = (100, 101, 102)
METHODS = ("adalora", "lora")
FIXED = ["--task", "sst2", "--train-limit", "3200", "--holdout", "1000", "--threads", "1"]


def cells() -> list[list[str]]:
    return [
        [*FIXED, "--method", method, "--seed", str(seed), order]
        for seed in SEEDS
        for order in ("--group-by-length", "--no-group-by-length")
        for method in METHODS
    ]


def report(results: list[dict]) -> str:
    value = {
        (r["method"], r["seed"], r["training"]["group_by_length"]): 100 * r["value"]
        for r in results
    }
    lines = [
        "| method | seeds | random | grouped | grouped - random, paired | seconds random/grouped |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        seeds = [s for s in SEEDS if (method, s, True) in value and (method, s, False) in value]
        if not seeds:
            continue
        off = [value[(method, s, False)] for s in seeds]
        on = [value[(method, s, True)] for s in seeds]
        diffs = [b - a for a, b in zip(off, on, strict=True)]
        secs = {
            grouped: statistics.median(
                r["seconds"]
                for r in results
                if r["method"] == method and r["training"]["group_by_length"] is grouped
            )
            for grouped in (False, True)
        }
        lines.append(
            f"| {method} | {len(seeds)} | {statistics.mean(off):.2f} | {statistics.mean(on):.2f}"
            f" | {statistics.mean(diffs):+.2f} ({', '.join(f'{d:+.1f}' for d in diffs)})"
            f" | {secs[False]:.0f} / {secs[True]:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/glue_grouping.jsonl"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    run_cells(cells(), args.out, args.jobs)
    print(report(finished(args.out)))


if __name__ == "__main__":
    main()
