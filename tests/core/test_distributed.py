"""One job across two processes with the gloo backend (DistributedDataParallel on the CPU).

The tiny BERT has dropout off, so a two-process run with the same global batch computes the
same mean gradient as one process up to summation order: the final adapters must agree to a
stated tolerance and the rank history must be identical. Both ranks' masks are compared inside
the loop at every masking step and their histories again by the launcher; the two checks are
shown to fail when ranks disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_trainer_model import StopAfter, save_tiny_bert, sentiment_rows

from adalora_core.config import AdaLoraConfig
from adalora_core.distributed import Replica, ReplicaMismatch, ReplicaSync, shard
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import read_adapter
from adalora_core.launcher import assert_same_allocation, check_devices, train_data_parallel
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import TrainResult, train
from adalora_core.training_config import TrainingConfig

TASK = TaskSpec("classification", "text", label_column="label", labels=("negative", "positive"))
# Budget reduced over updates 3..12 of 21, one masking step per update.
ADALORA = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8.0, t_init=2, t_final=9, delta_t=1)
ROWS = sentiment_rows(51, seed=5)  # 51 rows in micro-batches of 8: the last one, 3, splits 2 + 1
EVAL_ROWS = sentiment_rows(16, seed=6)
# One process against two: the same mean gradient, summed in another order.
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


TRAINING = TrainingConfig(
    epochs=None, max_steps=21, batch_size=8, grad_accum=2, learning_rate=1e-2, seed=3
)
PLAN = plan_run(len(ROWS), TRAINING, ADALORA)
CHECKPOINTING = PLAN.with_training(checkpoint_every=4)


def _kwargs(base: Path, out: Path, **extra) -> dict:
    return {
        "base_model": base,
        "task": TASK,
        "train_rows": ROWS,
        "eval_rows": EVAL_ROWS,
        "output_dir": out,
        "device": "cpu",
        **extra,
    }


def _max_difference(a: Path, b: Path) -> float:
    left, right = read_adapter(a), read_adapter(b)
    assert left.modules.keys() == right.modules.keys()
    worst = 0.0
    for path, delta in left.modules.items():
        for name in ("lora_A", "lora_B", "lora_E"):
            diff = getattr(delta, name) - getattr(right.modules[path], name)
            if diff.numel():  # a module pruned to rank 0 holds empty tensors
                worst = max(worst, float(diff.abs().max()))
    for name, tensor in left.head.items():
        worst = max(worst, float((tensor - right.head[name]).abs().max()))
    return worst


@pytest.fixture(scope="module")
def two_process_run(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("ddp") / "adapter"
    return train_data_parallel(2, plan=PLAN, **_kwargs(base_dir, out))


def test_two_processes_match_one_process_with_the_same_global_batch(
    base_dir: Path, tmp_path: Path, two_process_run: TrainResult
) -> None:
    single = train(plan=PLAN, **_kwargs(base_dir, tmp_path / "single"))
    assert two_process_run.steps == single.steps == 21
    assert not two_process_run.cancelled
    # Every masking step: the same budget and the same ranks per module.
    assert len(single.history) == 10
    assert two_process_run.history == single.history
    assert two_process_run.ranks == single.ranks
    difference = _max_difference(two_process_run.adapter_dir, single.adapter_dir)
    assert difference < WEIGHT_TOLERANCE, difference
    assert two_process_run.metrics["accuracy"] == single.metrics["accuracy"]
    assert two_process_run.metrics["eval_loss"] == pytest.approx(single.metrics["eval_loss"], 1e-4)


def test_cancel_on_rank_0_stops_every_rank_and_the_resume_ends_as_uninterrupted(
    base_dir: Path, tmp_path: Path, two_process_run: TrainResult
) -> None:
    checkpoints = tmp_path / "checkpoints"
    stopped = train_data_parallel(
        2,
        plan=CHECKPOINTING,
        callbacks=StopAfter(9),
        checkpoint_dir=checkpoints,
        **_kwargs(base_dir, tmp_path / "stopped"),
    )
    # The launcher returns only once every child rank exited cleanly after the stop.
    assert stopped.cancelled and stopped.steps == 9
    assert stopped.adapter_dir is None
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004", "step-00000008"]
    resumed = train_data_parallel(
        2,
        plan=CHECKPOINTING,
        checkpoint_dir=checkpoints,
        **_kwargs(base_dir, tmp_path / "resumed"),
    )
    assert resumed.steps == 21
    assert resumed.history == two_process_run.history
    # gloo sums two ranks in a fixed order: the resumed run is the uninterrupted one, bitwise.
    assert _max_difference(resumed.adapter_dir, two_process_run.adapter_dir) == 0.0


def test_asking_for_more_gpus_than_the_machine_has_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        check_devices(torch.cuda.device_count() + 1, "cuda")
    assert caught.value.field == "resources.devices"
    with pytest.raises(ConfigError):
        check_devices(0, "cpu")
    check_devices(2, "cpu")  # CPU ranks need no GPUs


def test_a_micro_batch_is_shared_so_the_average_over_ranks_is_its_mean() -> None:
    rows = torch.arange(5)
    parts = [shard(rows, Replica(rank, 2)) for rank in range(2)]
    assert [p[0].tolist() for p in parts] == [[0, 2, 4], [1, 3]]
    # DDP averages the ranks: (w0·mean0 + w1·mean1) / 2 must be the mean over all 5 rows.
    assert [p[1] for p in parts] == [pytest.approx(6 / 5), pytest.approx(4 / 5)]
    lonely = shard(torch.arange(1), Replica(1, 2))
    assert lonely[0].tolist() == [0] and lonely[1] == 0.0


def test_the_launcher_rejects_histories_that_differ() -> None:
    step = {"step": 3, "budget": 40, "ranks": {"a": 2, "b": 2}}
    assert_same_allocation([[step], [dict(step)]])
    with pytest.raises(ReplicaMismatch, match="rank 1"):
        assert_same_allocation([[step], [{**step, "ranks": {"a": 3, "b": 1}}]])
    with pytest.raises(ReplicaMismatch, match="masking steps"):
        assert_same_allocation([[step], []])


def _compare_masks(rank: int, world: int, init_file: str, out_dir: str, differ: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        keep = torch.ones(8, dtype=torch.bool)
        if differ and rank == 1:
            keep[3] = False
        try:
            ReplicaSync(Replica(rank, world)).assert_same_mask(keep, step=5)
            outcome = "same"
        except ReplicaMismatch as exc:
            outcome = str(exc)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"{rank}.json").write_text(json.dumps(outcome))


@pytest.mark.parametrize("differ", [False, True])
def test_the_in_loop_mask_check_fails_on_every_rank_when_masks_differ(
    tmp_path: Path, differ: bool
) -> None:
    mp.spawn(_compare_masks, args=(2, str(tmp_path / "init"), str(tmp_path), differ), nprocs=2)
    outcomes = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    if differ:
        assert all("after update 5" in o and "1 differ" in o for o in outcomes), outcomes
    else:
        assert outcomes == ["same", "same"]
