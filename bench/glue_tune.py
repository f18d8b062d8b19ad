"""Choose each method's learning rate and alpha on held-out training rows (never the dev set).

    python -m bench.glue_tune --tasks sst2 --out bench-results/tune.jsonl --jobs 2 -- \
        --train-limit 3200 --holdout 1000 --threads 1

Every method gets a grid of the same size: the same four learning rates times two alphas,
spanning the same 4x range of scaling alpha/r (LoRA r=8: 2 and 8; AdaLoRA init_r=12: 2.67 and
10.7). Each cell trains on the fixed training sample and is scored on held-out rows of the same
training file. The winner per method is the best mean held-out metric over the tuning tasks.
`--learning-rates` and `--alphas` run an extension grid (one method's, or AdaLoRA at another
`--init-r`); give every method as many extra cells, so the tuning effort stays equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from bench.cells import finished, run_cells

# 4e-3 was added for both methods after AdaLoRA's best setting came out at 2e-3, the edge of the
# first grid (docs/lab-notebook.md).
LEARNING_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
ALPHAS = {"adalora": (32.0, 128.0), "lora": (16.0, 64.0)}
TUNING_SEED = 100  # apart from the protocol's seeds 0..N


def grid(
    tasks: list[str],
    methods: list[str],
    extra: list[str],
    learning_rates: tuple[float, ...] = LEARNING_RATES,
    alphas: tuple[float, float] | None = None,
) -> list[list[str]]:
    """``alphas`` replaces every method's pair: for an extension of one method's grid, or an
    AdaLoRA with another ``--init-r`` at the same span of alpha/init_r."""
    cells = []  # methods interleaved, so a partial grid is still balanced
    for task in tasks:
        for lr in learning_rates:
            for index in range(2):
                for method in methods:
                    alpha = (alphas or ALPHAS[method])[index]
                    cells.append(
                        ["--task", task, "--method", method, "--seed", str(TUNING_SEED)]
                        + ["--lr", str(lr), "--lora-alpha", str(alpha), *extra]
                    )
    return cells


class Setting(NamedTuple):
    lr: float
    alpha: float
    init_r: str | None  # the cell's explicit --init-r, if it gave one


def explicit_init_r(cell: str) -> str | None:
    args = cell.split()
    return args[args.index("--init-r") + 1] if "--init-r" in args else None


def best(results: list[dict], method: str) -> tuple[Setting, float, str]:
    """(setting, mean held-out metric over tasks, a table of every cell) for one method."""
    by_setting: dict[Setting, list[float]] = {}
    lines = []
    for r in results:
        if r["method"] != method or r["split"] != "holdout":
            continue
        init_r = explicit_init_r(r.get("cell", ""))
        setting = Setting(r["training"]["learning_rate"], r["adalora"]["lora_alpha"], init_r)
        by_setting.setdefault(setting, []).append(r["value"])
        value = 100 * r["value"]
        lines.append(
            f"| {method} | {r['task']} | {init_r or '-'} | {setting.lr:g} | {setting.alpha:g} "
            f"| {value:.1f} |"
        )
    if not by_setting:
        return Setting(0.0, 0.0, None), float("nan"), ""
    setting = max(by_setting, key=lambda s: statistics.mean(by_setting[s]))
    return setting, statistics.mean(by_setting[setting]), "\n".join(sorted(lines))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    if "--holdout" not in extra:
        sys.exit("tuning must score on held-out training rows: pass -- --holdout N")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--methods", nargs="+", default=list(ALPHAS), choices=list(ALPHAS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--learning-rates", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument(
        "--alphas", nargs=2, type=float, default=None, help="one pair for every method run"
    )
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.table_only:
        cells = grid(args.tasks, args.methods, extra, tuple(args.learning_rates), args.alphas)
        run_cells(cells, args.out, args.jobs)
    results = finished(args.out)
    print("| method | task | init_r | lr | alpha | held-out metric (%) |")
    print("|---|---|---|---|---|---|")
    bests = {method: best(results, method) for method in args.methods}
    for _, _, lines in bests.values():
        print(lines)
    for method, (setting, score, _) in bests.items():
        rank = f", init_r {setting.init_r}" if setting.init_r else ""
        print(
            f"\nbest {method}: lr {setting.lr:g}, alpha {setting.alpha:g}{rank}"
            f" (mean {100 * score:.2f})"
        )


if __name__ == "__main__":
    main()
