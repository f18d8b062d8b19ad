"""The bench cell scheduler: stages wait for the stage before them, other streams fill the
wait, finished cells are skipped on a re-run, and failures neither stop the others nor hang."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bench.cells import cell_key, finished, run_streams


def fake_result(argv: list[str]) -> dict[str, Any]:
    return {"task": "t", "method": argv[0], "seed": int(argv[1]), "value": 0.5, "seconds": 0}


def cells(method: str, seeds: range) -> list[list[str]]:
    return [[method, str(s)] for s in seeds]


def test_a_stage_is_built_only_after_the_stage_before_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "cells.jsonl"
    adalora_done_when_built: list[int] = []

    def lora_stage() -> list[list[str]]:
        done = [r for r in finished(out) if r["method"] == "adalora"]
        adalora_done_when_built.append(len(done))
        return cells("lora", range(len(done)))

    run_streams(
        [[lambda: cells("adalora", range(3)), lora_stage], [lambda: cells("svd", range(3))]],
        out,
        jobs=2,
        run_one=fake_result,
    )
    results = finished(out)
    assert adalora_done_when_built == [3]
    assert sorted((r["method"], r["seed"]) for r in results) == sorted(
        [(m, s) for m in ("adalora", "lora", "svd") for s in range(3)]
    )
    assert all(r["cell"] == cell_key([r["method"], str(r["seed"])]) for r in results)


def test_a_later_stream_fills_the_core_a_waiting_stage_leaves_idle(tmp_path: Path) -> None:
    """adalora 2 holds its worker until svd 0 has started: that can only happen if the free
    worker, finding LoRA's stage not yet buildable, takes the ablation's cell."""
    svd_started = threading.Event()
    started: list[str] = []
    lock = threading.Lock()

    def run_one(argv: list[str]) -> dict[str, Any]:
        with lock:
            started.append(" ".join(argv))
        if argv == ["svd", "0"]:
            svd_started.set()
        if argv == ["adalora", "2"]:
            assert svd_started.wait(timeout=60), "the ablation never filled the idle worker"
        return fake_result(argv)

    out = tmp_path / "cells.jsonl"
    run_streams(
        [
            [lambda: cells("adalora", range(3)), lambda: cells("lora", range(3))],
            [lambda: cells("svd", range(3))],
        ],
        out,
        jobs=2,
        run_one=run_one,
    )
    assert started.index("svd 0") < started.index("lora 0")
    assert len(finished(out)) == 9


def test_an_earlier_stream_keeps_priority_when_it_has_a_cell_ready(tmp_path: Path) -> None:
    order: list[str] = []

    def run_one(argv: list[str]) -> dict[str, Any]:
        order.append(" ".join(argv))
        return fake_result(argv)

    run_streams(
        [
            [lambda: cells("adalora", range(2)), lambda: cells("lora", range(2))],
            [lambda: cells("svd", range(2))],
        ],
        tmp_path / "cells.jsonl",
        jobs=1,
        run_one=run_one,
    )
    assert order == ["adalora 0", "adalora 1", "lora 0", "lora 1", "svd 0", "svd 1"]


def test_a_rerun_skips_finished_cells_and_retries_failed_ones(tmp_path: Path) -> None:
    out = tmp_path / "cells.jsonl"
    ran: list[list[str]] = []

    def flaky(argv: list[str]) -> dict[str, Any] | None:
        ran.append(argv)
        return None if argv == ["adalora", "1"] else fake_result(argv)

    streams = [[lambda: cells("adalora", range(3))]]
    run_streams(streams, out, jobs=2, run_one=flaky)
    assert sorted(r["seed"] for r in finished(out)) == [0, 2]

    ran.clear()

    def healthy(argv: list[str]) -> dict[str, Any]:
        ran.append(argv)
        return fake_result(argv)

    run_streams(streams, out, jobs=2, run_one=healthy)
    assert ran == [["adalora", "1"]]
    assert sorted(r["seed"] for r in finished(out)) == [0, 1, 2]


def test_a_stage_that_raises_stops_the_run_instead_of_hanging(tmp_path: Path) -> None:
    def broken() -> list[list[str]]:
        raise RuntimeError("no AdaLoRA results to match")

    with pytest.raises(RuntimeError, match="no AdaLoRA results"):
        run_streams(
            [[lambda: cells("adalora", range(2)), broken], [lambda: cells("svd", range(4))]],
            tmp_path / "cells.jsonl",
            jobs=2,
            run_one=fake_result,
        )
