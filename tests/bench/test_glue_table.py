"""The protocol's plan: LoRA's rank is fixed from AdaLoRA's finished cells, and every cell
carries the same sample and settings arguments as its method's."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bench import glue_table
from bench.cells import finished, run_streams

PER_RANK = 41_472


def fake_cell(argv: list[str]) -> dict[str, Any]:
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    method = args["--method"]
    # AdaLoRA ends at 2.6 ranks' worth of LoRA parameters: the nearest LoRA rank is 3.
    params = {"adalora": int(2.6 * PER_RANK), "svd": 2 * PER_RANK}.get(
        method, int(args.get("--lora-r", 0)) * PER_RANK
    )
    return {
        "task": args["--task"], "method": method, "seed": int(args["--seed"]), "split": "dev",
        "value": 0.5, "seconds": 0, "adapter_params": params, "lora_params_per_rank": PER_RANK,
    }  # fmt: skip


def test_lora_runs_at_the_rank_nearest_adalora_final_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(glue_table, "run_streams", partial(run_streams, run_one=fake_cell))
    out = tmp_path / "protocol.jsonl"
    glue_table.run_protocol(["rte"], out, jobs=2, threads=1, target_r=1)

    results = finished(out)
    by_method = {m: [r for r in results if r["method"] == m] for m in ("adalora", "lora", "svd")}
    assert {m: len(rs) for m, rs in by_method.items()} == {"adalora": 3, "lora": 3, "svd": 3}
    assert all("--lora-r 3" in r["cell"] for r in by_method["lora"])
    assert all("--target-r 1" in r["cell"] for r in by_method["adalora"] + by_method["svd"])
    assert all("--holdout 250" in r["cell"] for r in results)
