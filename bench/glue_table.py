"""The GLUE comparison protocol: AdaLoRA against LoRA at equal final parameter budget.

    python -m bench.glue_table --out runs/protocol.jsonl --jobs 2 --tasks sst2 mrpc rte cola

Per task, with the settings the recipe chose on held-out SST-2 rows, or with ``--tuned`` the
best setting per method from a tuning run on that task's own held-out rows
(``bench/glue_tune.py``; the SVD ablation takes AdaLoRA's):
1. AdaLoRA (12 -> 8, or ``--target-r`` with the recipe's 1.5 ratio) over paired seeds.
2. LoRA at the rank whose final parameter count is nearest to AdaLoRA's mean final count.
3. The SVD-form ablation (fixed at AdaLoRA's final rank, no pruning), filling the cores while
   LoRA waits for AdaLoRA's last seed.
Every cell trains on the same sample the tuning used (the held-out rows stay out) and is
scored on the full dev set. Finished cells are appended as JSON lines; a re-run resumes.
``--table-only`` prints the table from what is there.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from scipy import stats

from bench.cells import Stage, finished, run_streams


@dataclass(frozen=True)
class TaskProtocol:
    seeds: tuple[int, ...]
    args: tuple[str, ...]  # fixes the training sample; every other setting is the recipe's


PROTOCOL: dict[str, TaskProtocol] = {
    "sst2": TaskProtocol(tuple(range(5)), ("--train-limit", "3200", "--holdout", "1000")),
    "mrpc": TaskProtocol(tuple(range(5)), ("--holdout", "400")),
    "rte": TaskProtocol(tuple(range(3)), ("--holdout", "250")),
    # CoLA on 3,200 rows (600 updates) left LoRA at the majority class on one seed of two
    # (bench/results/glue_cola_600.jsonl), so it trains on its whole split: the recipe's 1,000.
    "cola": TaskProtocol(tuple(range(3)), ("--holdout", "1000")),
}


def cell(task: str, method: str, seed: int, threads: int, *extra: str) -> list[str]:
    protocol = PROTOCOL[task]
    return [
        "--task", task, "--method", method, "--seed", str(seed),
        *protocol.args, "--eval-on", "dev", "--threads", str(threads), *extra,
    ]  # fmt: skip


def dev_results(results: list[dict[str, Any]], task: str, method: str) -> dict[int, dict]:
    return {
        r["seed"]: r
        for r in results
        if r["task"] == task and r["method"] == method and r["split"] == "dev"
    }


def matched_lora_rank(adalora_cells: dict[int, dict]) -> int:
    """The LoRA rank whose adapter parameter count is nearest AdaLoRA's mean final count (the
    heads are the same for both methods)."""
    kept = statistics.mean(r["adapter_params"] for r in adalora_cells.values())
    per_rank = next(iter(adalora_cells.values()))["lora_params_per_rank"]
    return max(1, round(kept / per_rank))


def tuned_settings(tuning: list[dict[str, Any]], task: str) -> dict[str, list[str]]:
    """Per method, the ``--lr``/``--lora-alpha`` (and any explicit ``--init-r``) arguments of
    its best held-out cell on ``task`` (the SVD ablation gets AdaLoRA's); empty where that
    method was not tuned there."""
    from bench.glue_tune import best

    on_task = [r for r in tuning if r["task"] == task]
    chosen: dict[str, list[str]] = {}
    for method in ("adalora", "lora"):
        setting, _, _ = best(on_task, method)
        if setting.lr:
            chosen[method] = ["--lr", str(setting.lr), "--lora-alpha", str(setting.alpha)]
            if setting.init_r:
                chosen[method] += ["--init-r", setting.init_r]
    if "adalora" in chosen:
        chosen["svd"] = chosen["adalora"]
    return chosen


def run_protocol(
    tasks: list[str],
    out: Path,
    jobs: int,
    threads: int,
    seed_count: int | None = None,
    tuning: list[dict[str, Any]] | None = None,
    target_r: int | None = None,
) -> None:
    """Per task, AdaLoRA then LoRA (AdaLoRA's final size fixes LoRA's rank) in one stream and
    the ablation in another, so the ablation fills a core while LoRA waits for AdaLoRA's last
    seed. ``seed_count`` runs seeds 0..N-1 of each task instead of the protocol's: fewer to
    resume the rest later, more to narrow an interval."""
    streams: list[list[Stage]] = []
    for task in tasks:
        seeds = tuple(range(seed_count)) if seed_count else PROTOCOL[task].seeds
        tuned = tuned_settings(tuning or [], task)
        if tuning is not None and set(tuned) != {"adalora", "lora", "svd"}:
            raise SystemExit(f"--tuned has no finished cells for both methods on {task}")
        if target_r is not None:
            for method in ("adalora", "svd"):
                tuned[method] = [*tuned.get(method, []), "--target-r", str(target_r)]
        adalora_args = tuned.get("adalora", [])
        adalora_cells = [cell(task, "adalora", s, threads, *adalora_args) for s in seeds]
        svd_cells = [cell(task, "svd", s, threads, *tuned.get("svd", [])) for s in seeds]
        lora_cells = partial(_matched_lora_cells, out, task, seeds, threads, tuned.get("lora", []))
        streams.append([lambda cells=adalora_cells: cells, lora_cells])
        streams.append([lambda cells=svd_cells: cells])
    run_streams(streams, out, jobs)


def _matched_lora_cells(
    out: Path, task: str, seeds: tuple[int, ...], threads: int, extra: list[str]
) -> list[list[str]]:
    adalora = dev_results(finished(out), task, "adalora")
    if len(adalora) < len(seeds):
        return []  # an AdaLoRA cell failed; the next run retries it before LoRA's rank is fixed
    rank = matched_lora_rank(adalora)
    return [cell(task, "lora", s, threads, "--lora-r", str(rank), *extra) for s in seeds]


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int]:
    """Mean of a - b over the seeds both have, with its two-sided 95% t interval."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan, len(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half, len(diffs)


def table(results: list[dict[str, Any]], tasks: list[str]) -> str:
    lines = [
        "| task | metric | method | dev mean ± std | per seed | final params |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = [
        "",
        "| task | AdaLoRA − LoRA (points) | 95% interval | seeds | ahead? |",
        "|---|---|---|---|---|",
    ]
    for task in tasks:
        scores: dict[str, dict[int, float]] = {}
        for method in ("adalora", "svd", "lora"):
            cells = dev_results(results, task, method)
            if not cells:
                continue
            first = next(iter(cells.values()))
            scores[method] = {s: 100.0 * r["value"] for s, r in cells.items()}
            values = [scores[method][s] for s in sorted(scores[method])]
            params = statistics.mean(r["final_params"] for r in cells.values())
            label = method_label(first)
            lines.append(
                f"| {task} | {first['metric']} | {label} | {_mean_std(values)} | "
                f"{', '.join(f'{v:.1f}' for v in values)} | {params:,.0f} |"
            )
        if "adalora" in scores and "lora" in scores:
            mean, low, high, n = paired_difference(scores["adalora"], scores["lora"])
            ahead = "yes" if mean > 0 and low >= -0.5 else "no"
            verdicts.append(f"| {task} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {n} | {ahead} |")
    return "\n".join(lines + verdicts)


def method_label(cell: dict[str, Any]) -> str:
    """Read off the cell, so a table at any budget names its ranks."""
    if cell["method"] == "lora":
        return f"LoRA r={cell['lora_r']}"
    ranks = cell["adalora"]
    if cell["method"] == "svd":
        return f"SVD form, rank {ranks['target_r']}, no pruning"
    return f"AdaLoRA {ranks['init_r']}→{ranks['target_r']}"


def draw_allocation(results: list[dict[str, Any]], task: str, path: Path) -> None:
    """The final rank pattern of the task's seed-0 AdaLoRA cell, as the API draws it."""
    from adalora_core.inject import module_layer_and_kind
    from application.heatmap import draw_rank_heatmap

    cell = dev_results(results, task, "adalora").get(0)
    if cell is None or not cell.get("ranks"):
        return
    modules = [
        {"name": name, "layer": layer, "kind": kind, "rank": rank}
        for name, rank in cell["ranks"].items()
        for layer, kind in [module_layer_and_kind(name)]
    ]
    title = f"{task}: {method_label(cell)}, seed 0 (final budget {sum(cell['ranks'].values())})"
    path.write_bytes(draw_rank_heatmap(modules, init_r=cell["adalora"]["init_r"], title=title))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(PROTOCOL), choices=list(PROTOCOL))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--seeds", type=int, help="run seeds 0..N-1 of each task instead of the protocol's"
    )
    parser.add_argument(
        "--target-r", type=int, help="AdaLoRA's final rank (default the recipe's 8), init 1.5x"
    )
    parser.add_argument("--heatmaps", type=Path, help="folder for <task>_ranks.png")
    parser.add_argument(
        "--tuned",
        type=Path,
        nargs="+",
        help="glue_tune results: each method runs at its best held-out setting on each task",
    )
    args = parser.parse_args(argv)
    tuning = [r for path in args.tuned for r in finished(path)] if args.tuned else None
    if not args.table_only:
        run_protocol(
            args.tasks, args.out, args.jobs, args.threads, args.seeds, tuning, args.target_r
        )
    results = finished(args.out)
    print(table(results, args.tasks))
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
        for task in args.tasks:
            draw_allocation(results, task, args.heatmaps / f"{task}_ranks.png")


if __name__ == "__main__":
    main()
