"""Does a change slow a benchmark down? Run it from two revisions, alternating, in one session.

    .venv/bin/python -m bench.compare_revisions --base d9c07fa --rounds 3 -- \\
        bench/infer.py --reps 3 --threads 1 --malloc-reps 0

The base revision is checked out into a temporary git worktree; each round runs the benchmark
script once from the base tree and once from this tree (alternating which goes first), each in
a fresh process with its own tree first on ``sys.path``. Every benchmark here prints one JSON
object as its last line; for every numeric leaf the table gives the median over rounds from
each tree and the ratio this/base (for times, below 1 is faster). The last line is one JSON
object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON value, keyed by their dotted path."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, int | float):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):  # per-round records (bench/decode.py): keyed by their index
        return leaves({str(index): item for index, item in enumerate(value)}, prefix)
    return {}


def run_once(tree: Path, command: list[str]) -> dict[str, float]:
    script, *args = command
    argv = [sys.executable, "-m", script, *args] if not script.endswith(".py") else None
    if argv is None:
        argv = [sys.executable, str(tree / script), *args]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return leaves(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py args, or module")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with tempfile.TemporaryDirectory(prefix="adalora-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            results: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
            trees = {"base": base, "this": ROOT}
            for round_ in range(args.rounds):
                order = ["base", "this"] if round_ % 2 == 0 else ["this", "base"]
                for name in order:
                    results[name].append(run_once(trees[name], command))
                    print(f"round {round_ + 1} {name} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                check=False,
                capture_output=True,
            )
    keys = sorted(set(results["base"][0]) & set(results["this"][0]))
    summary = {}
    print(f"| metric | base {args.base} | this | this/base |")
    print("|---|---|---|---|")
    for key in keys:
        old = statistics.median(r[key] for r in results["base"] if key in r)
        new = statistics.median(r[key] for r in results["this"] if key in r)
        ratio = new / old if old else float("nan")
        summary[key] = {"base": old, "this": new, "ratio": round(ratio, 4)}
        print(f"| {key} | {old:.6g} | {new:.6g} | {ratio:.3f} |")
    print(json.dumps({"base": args.base, "rounds": args.rounds, "metrics": summary}))


if __name__ == "__main__":
    main()
