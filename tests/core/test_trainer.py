"""The training loop on a tiny BERT: callbacks, cancellation, regulariser, schedule, baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer_model import save_tiny_bert, sentiment_rows
from torch.optim.optimizer import register_optimizer_step_pre_hook

from adalora_core.config import AdaLoraConfig
from adalora_core.context_limit import context_limit
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import read_adapter
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import ProgressEvent, TrainCallbacks, resolve_device, train
from adalora_core.training.optimizer import build_scheduler
from adalora_core.training_config import TrainingConfig

TASK = TaskSpec("classification", "text", label_column="label", labels=("negative", "positive"))
ADALORA = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8.0)  # schedule derived from T
ROWS = sentiment_rows(48, seed=1)
EVAL_ROWS = sentiment_rows(16, seed=2)
NUM_MODULES = 12  # 2 layers x (query, key, value, attention.output, intermediate, output)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


class Recorder(TrainCallbacks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[ProgressEvent] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.polls = 0
        self.stop_after = stop_after

    def on_progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, metrics))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append((step, path))

    def should_stop(self) -> bool:
        self.polls += 1
        return self.stop_after is not None and len(self.events) >= self.stop_after


def _train(
    base: Path,
    out: Path,
    training: TrainingConfig,
    *,
    adalora: AdaLoraConfig = ADALORA,
    method: str = "adalora",
    lora_r: int | None = None,
    **kwargs,
):
    kwargs.setdefault("eval_rows", EVAL_ROWS)
    plan = plan_run(
        len(ROWS),
        training,
        adalora,
        method=method,
        lora_r=lora_r,
        max_positions=context_limit(base),
    )
    return train(base_model=base, task=TASK, train_rows=ROWS, plan=plan, output_dir=out, **kwargs)


def test_full_run_reports_progress_evals_and_writes_the_bundle(
    base_dir: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    training = TrainingConfig(epochs=2, batch_size=8, grad_accum=2, learning_rate=1e-2)
    result = _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(**{**training.__dict__, "checkpoint_every": 2}),
        adalora=AdaLoraConfig(init_r=4, target_r=2, t_init=1, t_final=2, delta_t=1),
        callbacks=recorder,
        checkpoint_dir=tmp_path / "ckpt",
    )
    # 48 rows / 8 = 6 micro-batches, 3 updates per epoch, 2 epochs
    assert result.steps == 6 and not result.cancelled
    assert [e.step for e in recorder.events] == list(range(1, 7))
    assert all(e.total_steps == 6 for e in recorder.events)
    assert [e.epoch for e in recorder.events] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    budgets = [e.budget for e in recorder.events]
    assert budgets[0] == 4 * NUM_MODULES and budgets[-1] == 2 * NUM_MODULES
    assert budgets == sorted(budgets, reverse=True)
    assert [step for step, _ in recorder.evals] == [3, 6]  # each epoch end (the last is the end)
    assert set(recorder.evals[-1][1]) == {
        "eval_loss",
        "accuracy",
        "f1",
        "matthews",
        "predicted_classes",
    }
    assert [step for step, _ in recorder.checkpoints] == [2, 4]  # none after the final update
    assert result.total_rank == 2 * NUM_MODULES == sum(result.ranks.values())
    assert result.metrics == recorder.evals[-1][1]
    assert result.history and result.history[-1]["budget"] == 2 * NUM_MODULES

    bundle = read_adapter(result.adapter_dir)
    assert bundle.meta.labels == ["negative", "positive"]
    assert bundle.meta.budget == {"initial": 48, "target": 24, "final": 24}
    assert {m["name"]: m["rank"] for m in bundle.meta.modules} == result.ranks
    assert bundle.meta.trainable_params == result.trainable_params
    assert set(bundle.head) == {
        "classifier.weight",
        "classifier.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }


def test_should_stop_cancels_within_one_step_and_writes_nothing(
    base_dir: Path, tmp_path: Path
) -> None:
    recorder = Recorder(stop_after=2)
    result = _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(epochs=3, batch_size=8, grad_accum=2),
        callbacks=recorder,
    )
    assert result.cancelled and result.adapter_dir is None
    assert result.steps == 2
    assert recorder.polls == 2 * 2 + 1  # every micro-batch of two updates, then the stop
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_regularizer_is_added_to_a_custom_loss(
    base_dir: Path, tmp_path: Path, weight: float
) -> None:
    """With a task loss of exactly zero, the reported loss is the orthogonality penalty."""
    calls: list[int] = []

    def zero_task_loss(outputs, batch) -> torch.Tensor:
        calls.append(len(batch["labels"]))
        return outputs.logits.sum() * 0.0

    recorder = Recorder()
    config = AdaLoraConfig(**{**ADALORA.to_dict(), "orth_reg_weight": weight})
    _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(epochs=None, max_steps=3, batch_size=16, weight_decay=0.0),
        adalora=config,
        callbacks=recorder,
        loss_fn=zero_task_loss,
    )
    assert calls == [16, 16, 16]
    losses = [e.loss for e in recorder.events]
    if weight == 0.0:
        assert losses == [0.0, 0.0, 0.0]
    else:
        assert all(loss > 0 for loss in losses)


def test_grad_accumulation_matches_one_big_batch(base_dir: Path, tmp_path: Path) -> None:
    big = _train(
        base_dir,
        tmp_path / "big",
        TrainingConfig(epochs=None, max_steps=3, batch_size=16, grad_accum=1, seed=3),
    )
    small = _train(
        base_dir,
        tmp_path / "small",
        TrainingConfig(epochs=None, max_steps=3, batch_size=8, grad_accum=2, seed=3),
    )
    left, right = read_adapter(big.adapter_dir), read_adapter(small.adapter_dir)
    for path, delta in left.modules.items():
        torch.testing.assert_close(delta.lora_A, right.modules[path].lora_A, atol=1e-6, rtol=0)
        torch.testing.assert_close(delta.lora_E, right.modules[path].lora_E, atol=1e-6, rtol=0)


def test_lora_baseline_trains_through_the_same_loop(base_dir: Path, tmp_path: Path) -> None:
    result = _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(epochs=1, batch_size=16),
        method="lora",
        lora_r=3,
    )
    assert result.ranks == dict.fromkeys(result.ranks, 3) and len(result.ranks) == NUM_MODULES
    assert result.history == []
    bundle = read_adapter(result.adapter_dir)
    assert bundle.meta.method == "lora" and bundle.meta.init_r == 3
    assert all(torch.equal(m.lora_E, torch.ones(3, 1)) for m in bundle.modules.values())


def test_training_lowers_the_training_loss(base_dir: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(epochs=None, max_steps=60, batch_size=16, learning_rate=3e-2),
        adalora=AdaLoraConfig(init_r=4, target_r=2, orth_reg_weight=0.0, lora_alpha=8.0),
        eval_rows=None,
        callbacks=recorder,
    )
    first = sum(e.loss for e in recorder.events[:6]) / 6
    last = sum(e.loss for e in recorder.events[-6:]) / 6
    assert last < first - 0.02


def test_bad_rows_and_settings_name_the_field(base_dir: Path, tmp_path: Path) -> None:
    rows = [*ROWS[:3], {"text": "a film", "label": "meh"}]
    with pytest.raises(ConfigError) as info:
        train(
            base_model=base_dir,
            task=TASK,
            train_rows=rows,
            eval_rows=None,
            plan=plan_run(len(rows), TrainingConfig(epochs=1), ADALORA),
            output_dir=tmp_path / "a",
        )
    assert info.value.field == "train_rows[3].label"
    with pytest.raises(ConfigError) as info:  # rows the run was not planned for
        train(
            base_model=base_dir,
            task=TASK,
            train_rows=ROWS[:40],
            eval_rows=None,
            plan=plan_run(len(ROWS), TrainingConfig(epochs=1), ADALORA),
            output_dir=tmp_path / "a",
        )
    assert info.value.field == "train_rows" and "planned for 48" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _train(base_dir, tmp_path / "b", TrainingConfig(epochs=1), method="dora")
    assert info.value.field == "method"
    with pytest.raises(ConfigError) as info:
        _train(base_dir, tmp_path / "c", TrainingConfig(learning_rate=0))
    assert info.value.field == "training.learning_rate"
    with pytest.raises(ConfigError) as info:  # the tiny BERT's config.json has 128 positions
        _train(base_dir, tmp_path / "d", TrainingConfig(max_length=129))
    assert info.value.field == "training.max_length"


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = build_scheduler(optimizer, total=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            resolve_device("cuda")


@pytest.mark.parametrize("method", ["adalora", "lora"])
def test_gradients_are_clipped_before_every_update(
    base_dir: Path, tmp_path: Path, method: str
) -> None:
    """The optimizer (and after it the allocator) sees gradients of global norm <= the limit;
    with clipping off the same run exceeds it, so the check can fail."""
    limit = 1e-3

    def norms_seen(max_grad_norm: float) -> list[float]:
        seen: list[float] = []

        def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        handle = register_optimizer_step_pre_hook(record)
        try:
            training = TrainingConfig(
                epochs=None, max_steps=4, batch_size=8, max_grad_norm=max_grad_norm
            )
            _train(base_dir, tmp_path / f"{max_grad_norm}", training, method=method)
        finally:
            handle.remove()
        return seen

    clipped = norms_seen(limit)
    assert len(clipped) == 4 and max(clipped) <= limit * (1 + 1e-4)
    assert min(norms_seen(0)) > limit


def test_the_adapter_records_the_settings_it_was_trained_with(
    base_dir: Path, tmp_path: Path
) -> None:
    training = TrainingConfig(epochs=None, max_steps=6, batch_size=8, max_grad_norm=0.5)
    result = _train(base_dir, tmp_path / "out", training)
    meta = read_adapter(result.adapter_dir).meta
    assert meta.training["max_grad_norm"] == 0.5 and meta.training["max_steps"] == 6
    assert meta.adalora["lora_alpha"] == ADALORA.lora_alpha
    assert AdaLoraConfig.from_dict(meta.adalora).schedule(6) == ADALORA.schedule(6)
    # 12 modules: the kept triplets (in + out + 1 each) plus the classifier and pooler.
    assert result.final_params == meta.final_params
    assert result.final_params < result.trainable_params  # masked triplets do not count


def test_the_loop_hands_the_loss_over_unread(base_dir: Path, tmp_path: Path) -> None:
    """On a GPU every tensor-to-Python conversion waits for the device; the loop used to make
    one per micro-batch to total the loss. Now the update's loss stays a tensor on the training
    device, and only a callback that reads ``event.loss`` pays for the conversion."""
    seen: list[ProgressEvent] = []

    class Keeping(TrainCallbacks):
        def on_progress(self, event: ProgressEvent) -> None:
            seen.append(event)

    _train(
        base_dir,
        tmp_path / "adapter",
        TrainingConfig(epochs=1, batch_size=8, grad_accum=2),
        method="lora",
        lora_r=2,
        eval_rows=None,
        callbacks=Keeping(),
    )
    assert len(seen) > 2
    for event in seen:
        assert isinstance(event.loss_value, torch.Tensor) and event.loss_value.dim() == 0
        assert event.loss_value.device.type == "cpu"  # the training device here
        assert event.loss == float(event.loss_value) > 0
