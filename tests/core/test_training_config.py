"""TrainingConfig validation and the update count the budget schedule is built on."""

import subprocess
import sys

import pytest

from adalora_core.errors import ConfigError
from adalora_core.training_config import TrainingConfig, total_updates


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"learning_rate": 0.0}, "training.learning_rate"),
        ({"learning_rate": -1e-4}, "training.learning_rate"),
        ({"batch_size": 0}, "training.batch_size"),
        ({"grad_accum": 0}, "training.grad_accum"),
        ({"epochs": None, "max_steps": None}, "training.epochs"),
        ({"epochs": 1, "max_steps": 10}, "training.epochs"),
        ({"epochs": 0}, "training.epochs"),
        ({"epochs": None, "max_steps": 0}, "training.max_steps"),
        ({"warmup_ratio": 1.0}, "training.warmup_ratio"),
        ({"weight_decay": -0.1}, "training.weight_decay"),
        ({"max_length": 0}, "training.max_length"),
        ({"seed": -1}, "training.seed"),
        ({"eval_every": 0}, "training.eval_every"),
        ({"checkpoint_every": 0}, "training.checkpoint_every"),
    ],
)
def test_invalid_settings_name_their_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig(**kwargs).validate()
    assert info.value.field == field


def test_defaults_are_valid() -> None:
    TrainingConfig().validate()


def test_updates_per_epoch_round_up_and_count_accumulation_once() -> None:
    # 100 rows / 16 = 7 micro-batches (last one short) -> 7 updates per epoch
    assert total_updates(100, TrainingConfig(epochs=3, batch_size=16)) == 21
    # 7 micro-batches with grad_accum 2 -> 4 updates per epoch (last one from a single batch)
    assert total_updates(100, TrainingConfig(epochs=3, batch_size=16, grad_accum=2)) == 12
    assert total_updates(100, TrainingConfig(epochs=0.5, batch_size=16)) == 4


def test_max_steps_wins_regardless_of_rows() -> None:
    assert total_updates(10, TrainingConfig(epochs=None, max_steps=37)) == 37


def test_empty_dataset_is_rejected() -> None:
    with pytest.raises(ConfigError):
        total_updates(0, TrainingConfig())


def test_plan_config_and_task_spec_import_without_torch() -> None:
    code = (
        "import sys, adalora_core.training_config, adalora_core.config, adalora_core.tasks; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
