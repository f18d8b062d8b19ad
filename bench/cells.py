"""Run bench.glue cells as subprocesses, a few at a time, appending each result as one JSON line.

A cell is keyed by its arguments; a re-run skips keys already in the output file, so an
interrupted grid resumes where it stopped. Cells in parallel share the machine's cores: give
each ``--threads`` so that jobs × threads matches the cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def cell_key(argv: Sequence[str]) -> str:
    return " ".join(argv)


def finished(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def run_cells(cells: Sequence[list[str]], out: Path, jobs: int = 1) -> None:
    """Run every ``python -m bench.glue <argv>`` not yet in ``out``; failures are reported and
    the others go on (a failed cell is retried by the next run)."""
    done = {r.get("cell") for r in finished(out)}
    todo = [argv for argv in cells if cell_key(argv) not in done]
    lock = threading.Lock()

    def one(argv: list[str]) -> None:
        command = [sys.executable, "-m", "bench.glue", *argv]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"FAILED {cell_key(argv)}\n{completed.stderr[-2000:]}", file=sys.stderr)
            return
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["cell"] = cell_key(argv)
        with lock, out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(
            f"{result['task']} {result['method']} seed {result['seed']}: "
            f"{result['value']:.4f} ({result['seconds']} s) [{cell_key(argv)}]",
            file=sys.stderr,
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))
