"""A run interrupted and resumed from its newest checkpoint ends with the SAME adapter, bitwise.

The tiny model keeps dropout on, so the RNG state in the checkpoint matters; 60 rows in batches
of 8 with grad_accum 3 give updates of 3, 3 and 2 micro-batches per epoch, and both resume
points (steps 8 and 15) lie inside the budget-reducing phase (updates 6..20).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer_model import StopAfter, save_tiny_bert, sentiment_rows

from adalora_core.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from adalora_core.config import AdaLoraConfig
from adalora_core.formats.bundle import read_adapter
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import ProgressEvent, TrainCallbacks, TrainResult, train
from adalora_core.training_config import TrainingConfig

TASK = TaskSpec("classification", "text", label_column="label", labels=("negative", "positive"))
ADALORA = AdaLoraConfig(init_r=4, target_r=2, t_init=5, t_final=10, delta_t=2, lora_alpha=8.0)
TRAIN_ROWS = sentiment_rows(60, seed=3)
EVAL_ROWS = sentiment_rows(16, seed=4)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.1)


def _training(checkpoint_every: int | None = None) -> TrainingConfig:
    return TrainingConfig(
        epochs=None,
        max_steps=30,
        batch_size=8,
        grad_accum=3,
        learning_rate=1e-2,
        checkpoint_every=checkpoint_every,
        group_by_length=True,  # the service's choice; its order must replay on resume too
        seed=7,
    )


def _run(
    base: Path,
    out: Path,
    callbacks: TrainCallbacks | None = None,
    *,
    training: TrainingConfig,
    **kwargs,
) -> TrainResult:
    return train(
        base_model=base,
        task=TASK,
        train_rows=TRAIN_ROWS,
        eval_rows=EVAL_ROWS,
        plan=plan_run(len(TRAIN_ROWS), training, ADALORA),
        output_dir=out,
        callbacks=callbacks,
        **kwargs,
    )


class Crash(RuntimeError):
    pass


class CrashAt(TrainCallbacks):
    def __init__(self, step: int) -> None:
        self.limit = step

    def on_progress(self, event: ProgressEvent) -> None:
        if event.step == self.limit:
            raise Crash(f"simulated crash after update {event.step}")


def _assert_same_adapter(a: Path, b: Path) -> None:
    left, right = read_adapter(a), read_adapter(b)
    assert left.modules.keys() == right.modules.keys()
    for path, delta in left.modules.items():
        other = right.modules[path]
        for name in ("lora_A", "lora_B", "lora_E"):
            assert torch.equal(getattr(delta, name), getattr(other, name)), f"{path}.{name}"
    assert left.head.keys() == right.head.keys()
    for name, tensor in left.head.items():
        assert torch.equal(tensor, right.head[name]), name
    assert left.meta.history == right.meta.history
    assert left.meta.metrics == right.meta.metrics
    assert left.peft_config["rank_pattern"] == right.peft_config["rank_pattern"]


@pytest.fixture(scope="module")
def uninterrupted(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return _run(base_dir, tmp_path_factory.mktemp("full") / "adapter", training=_training())


def test_cancel_then_resume_mid_epoch_in_reducing_phase(
    base_dir: Path, tmp_path: Path, uninterrupted: TrainResult
) -> None:
    checkpoints = tmp_path / "checkpoints"
    stopped = _run(
        base_dir,
        tmp_path / "adapter",
        StopAfter(10),
        training=_training(checkpoint_every=4),
        checkpoint_dir=checkpoints,
    )
    assert stopped.cancelled and stopped.adapter_dir is None and stopped.steps == 10
    assert not (tmp_path / "adapter").exists()
    newest = latest_checkpoint(checkpoints)
    assert newest is not None
    state = load_checkpoint(newest)
    assert state.position.step == 8
    assert (state.position.epoch, state.position.batch) == (2, 6)  # mid-epoch
    assert 5 < state.position.step < 20  # inside the budget-reducing phase
    assert state.history, "masking had started before the checkpoint"

    resumed = _run(
        base_dir,
        tmp_path / "adapter",
        training=_training(checkpoint_every=4),
        checkpoint_dir=checkpoints,
    )
    assert not resumed.cancelled and resumed.steps == 30
    assert resumed.adapter_dir is not None and uninterrupted.adapter_dir is not None
    _assert_same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)
    assert resumed.ranks == uninterrupted.ranks


def test_crash_then_resume_at_epoch_boundary(
    base_dir: Path, tmp_path: Path, uninterrupted: TrainResult
) -> None:
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Crash):
        _run(
            base_dir,
            tmp_path / "adapter",
            CrashAt(16),
            training=_training(checkpoint_every=3),
            checkpoint_dir=checkpoints,
        )
    state = load_checkpoint(latest_checkpoint(checkpoints))
    assert state.position.step == 15 and state.position.batch == 0  # epoch boundary
    assert len(list_checkpoints(checkpoints)) == 2  # older ones pruned

    resumed = _run(
        base_dir,
        tmp_path / "adapter",
        training=_training(checkpoint_every=3),
        checkpoint_dir=checkpoints,
    )
    assert uninterrupted.adapter_dir is not None and resumed.adapter_dir is not None
    _assert_same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)


def test_a_resume_differs_without_the_rng_state(
    base_dir: Path, tmp_path: Path, uninterrupted: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bitwise check above can fail: dropping the restored RNG state changes the result."""
    checkpoints = tmp_path / "checkpoints"
    _run(
        base_dir,
        tmp_path / "adapter",
        StopAfter(10),
        training=_training(checkpoint_every=4),
        checkpoint_dir=checkpoints,
    )
    monkeypatch.setattr("adalora_core.checkpoint.restore_rng", lambda state: None)
    resumed = _run(
        base_dir,
        tmp_path / "adapter",
        training=_training(checkpoint_every=4),
        checkpoint_dir=checkpoints,
    )
    assert uninterrupted.adapter_dir is not None and resumed.adapter_dir is not None
    with pytest.raises(AssertionError):
        _assert_same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)


def test_a_checkpoint_from_a_host_with_more_gpus_restores_what_applies(monkeypatch) -> None:
    """Saved on 2 GPUs, resumed on 1: the one generator here is restored, nothing raises."""
    import torch

    from adalora_core import checkpoint as ckpt

    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append(index))
    monkeypatch.setattr(
        torch.cuda,
        "set_rng_state_all",
        lambda states: (_ for _ in ()).throw(RuntimeError("invalid device ordinal")),
    )
    state = {"torch": torch.get_rng_state(), "python": __import__("random").getstate()}
    state["cuda"] = [torch.get_rng_state(), torch.get_rng_state()]
    ckpt.restore_rng(state)
    assert restored == [0]
