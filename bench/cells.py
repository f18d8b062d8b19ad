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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def cell_key(argv: Sequence[str]) -> str:
    return " ".join(argv)


def finished(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


Stage = Callable[[], Sequence[list[str]]]
CellRunner = Callable[[list[str]], "dict[str, Any] | None"]


def run_bench_cell(argv: list[str]) -> dict[str, Any] | None:
    """One ``python -m bench.glue <argv>`` subprocess: its JSON result, or None if it failed."""
    command = [sys.executable, "-m", "bench.glue", *argv]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"FAILED {cell_key(argv)}\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


@dataclass
class _StreamState:
    stages: deque[Stage]
    pending: deque[list[str]] = field(default_factory=deque)
    running: int = 0

    def exhausted(self) -> bool:
        return not (self.pending or self.running or self.stages)


def run_streams(
    streams: Sequence[Sequence[Stage]],
    out: Path,
    jobs: int = 1,
    run_one: CellRunner = run_bench_cell,
) -> None:
    """Run the cells of several streams on ``jobs`` workers, skipping those already in ``out``.

    A stream is a list of stages; a stage's cells are built only once every cell of the stage
    before it has finished, because they may depend on its results (LoRA's rank on AdaLoRA's
    final size). A free worker takes the next cell of the first stream that has one ready, so
    while one stream waits on a stage, a later stream's cells keep the cores busy. A failed cell
    is reported and skipped; the next run retries it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r.get("cell") for r in finished(out)}
    states = [_StreamState(deque(stages)) for stages in streams]
    errors: list[BaseException] = []
    cond = threading.Condition()

    def take() -> tuple[_StreamState, list[str]] | None:
        with cond:
            while not errors:
                for state in states:
                    while not (state.pending or state.running) and state.stages:
                        built = state.stages.popleft()()
                        state.pending.extend(a for a in built if cell_key(a) not in done)
                    if state.pending:
                        state.running += 1
                        return state, state.pending.popleft()
                if all(state.exhausted() for state in states):
                    return None
                cond.wait()
            return None

    def finish(state: _StreamState, argv: list[str], result: dict[str, Any] | None) -> None:
        with cond:
            state.running -= 1
            cond.notify_all()
            if result is None:
                return
            result["cell"] = cell_key(argv)
            with out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.add(result["cell"])
        print(
            f"{result['task']} {result['method']} seed {result['seed']}: "
            f"{result['value']:.4f} ({result['seconds']} s) [{cell_key(argv)}]",
            file=sys.stderr,
            flush=True,
        )

    def worker() -> None:
        try:
            while (taken := take()) is not None:
                state, argv = taken
                result = None
                try:
                    result = run_one(argv)
                finally:
                    finish(state, argv, result)
        except BaseException as error:  # a stage or the runner raised: stop every worker, re-raise
            with cond:
                errors.append(error)
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run_cells(cells: Sequence[list[str]], out: Path, jobs: int = 1) -> None:
    """Run every ``python -m bench.glue <argv>`` not yet in ``out``, ``jobs`` at a time."""
    run_streams([[lambda: cells]], out, jobs)
