"""Automatic settings: each rule, for every task kind, and that given values are never touched."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args

import pytest

from adalora_core import recipe
from adalora_core.config import PQ_INITS, AdaLoraConfig
from adalora_core.errors import ConfigError
from adalora_core.tasks import TASK_KINDS
from adalora_core.training_config import TrainingConfig
from api.schemas import DatasetOut
from application.job_request import AdaLoraParams, TaskName, TrainingParams
from service.datasets_io import FORMATS


def resolve(rows: int, kind: str = "classification", **given: dict) -> recipe.Resolved:
    return recipe.resolve(
        recipe.DataProfile(rows, kind), given.get("training"), given.get("adalora")
    )


@pytest.mark.parametrize(
    ("rows", "steps"),
    [
        (10, 20),  # 1 update an epoch: at most MAX_EPOCHS passes over a tiny set
        (160, 200),  # 10 updates an epoch: 20 passes, still under the 600 floor
        (3_200, 600),  # 3 passes = 600 exactly
        (4_000, 750),  # 3 passes
        (67_349, 1_000),  # capped
    ],
)
def test_run_length_follows_the_data_size(rows: int, steps: int) -> None:
    resolved = resolve(rows)
    assert resolved.plan.total_steps == steps
    assert resolved.plan.training.max_steps == steps and resolved.plan.training.epochs is None


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_task_kind_gets_a_complete_valid_config(kind: str) -> None:
    resolved = recipe.resolve(recipe.DataProfile(5_000, kind, max_positions=64))
    resolved.plan.training.validate()
    resolved.plan.adalora.validate()
    assert resolved.plan.training.max_length == 64  # never past the model's positions
    assert resolved.plan.schedule is not None
    assert resolved.plan.schedule.final_mask_step - resolved.plan.schedule.t_init >= 200
    assert resolved.plan.adalora.t_init == resolved.plan.schedule.t_init
    assert resolved.warnings == ()
    assert resolved.plan.training.group_by_length is False
    assert "training.group_by_length" in resolved.chosen


def test_generative_kinds_get_longer_sequences_and_a_smaller_step() -> None:
    cls = resolve(5_000)
    lm = resolve(5_000, "causal-lm")
    assert lm.plan.training.max_length > cls.plan.training.max_length
    assert lm.plan.training.learning_rate < cls.plan.training.learning_rate
    pair = recipe.resolve(recipe.DataProfile(5_000, "classification", paired=True))
    assert pair.plan.training.max_length > cls.plan.training.max_length


def test_given_values_are_kept_and_the_rest_follows_them() -> None:
    resolved = resolve(
        4_000,
        training={
            "batch_size": 32,
            "epochs": 2,
            "learning_rate": 3e-4,
            "max_grad_norm": 0,
            "group_by_length": False,
        },
        adalora={"init_r": 6, "target_r": 2, "t_init": 10},
    )
    plan = resolved.plan
    assert plan.total_steps == 250  # 2 epochs of 125 updates: epochs decide, not the recipe
    assert plan.training.learning_rate == 3e-4 and plan.training.max_grad_norm == 0
    assert plan.training.group_by_length is False
    assert plan.adalora.init_r == 6 and plan.adalora.t_init == 10
    assert "training.max_steps" not in resolved.chosen
    assert "adalora.t_init" not in resolved.chosen and "adalora.t_final" in resolved.chosen


def test_one_given_rank_sets_the_other_at_the_default_ratio() -> None:
    assert resolve(4_000, adalora={"target_r": 16}).plan.adalora.init_r == 24
    only_init = resolve(4_000, adalora={"init_r": 4})
    assert only_init.plan.adalora.target_r == 3 and "adalora.target_r" in only_init.chosen
    assert "adalora.init_r" not in only_init.chosen
    with pytest.raises(ConfigError) as raised:
        resolve(4_000, adalora={"init_r": 4, "target_r": 16})
    assert raised.value.field == "adalora.target_r"


def test_a_short_reduction_window_warns_with_its_numbers() -> None:
    resolved = resolve(4_000, training={"max_steps": 100})
    (warning,) = resolved.warnings
    assert "over only 43 updates" in warning and "updates 13-55 of 100" in warning
    fixed_rank = resolve(4_000, training={"max_steps": 100}, adalora={"init_r": 8, "target_r": 8})
    assert fixed_rank.warnings == ()  # nothing is reallocated, so nothing to warn about


def test_the_checkpoint_interval_gives_about_ten_checkpoints_unless_given() -> None:
    resolved = resolve(4_000, training={"max_steps": 40})
    assert resolved.plan.checkpoint_every == 4 and "training.checkpoint_every" in resolved.chosen
    given = resolve(4_000, training={"max_steps": 40, "checkpoint_every": 7})
    assert given.plan.checkpoint_every == 7 and "training.checkpoint_every" not in given.chosen
    assert resolve(4_000, training={"max_steps": 1}).plan.checkpoint_every is None
    assert recipe.default_checkpoint_every(1000) == 100 and recipe.default_checkpoint_every(5) == 1


def test_a_sequence_longer_than_the_base_takes_is_named() -> None:
    with pytest.raises(ConfigError) as raised:
        recipe.resolve(
            recipe.DataProfile(100, "classification", max_positions=64), {"max_length": 65}
        )
    assert raised.value.field == "training.max_length"


def test_invalid_given_values_name_their_field() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve(100, training={"max_grad_norm": -1})
    assert raised.value.field == "training.max_grad_norm"
    with pytest.raises(ConfigError) as raised:
        resolve(100, training={"group_by_length": "yes"})
    assert raised.value.field == "training.group_by_length"
    with pytest.raises(ConfigError) as raised:
        resolve(100, training={"epochs": 1, "max_steps": 5})
    assert raised.value.field == "training.epochs"
    with pytest.raises(ConfigError):
        recipe.resolve(recipe.DataProfile(100, "translation"))


def test_the_api_schemas_cover_every_config_field() -> None:
    """The job body cannot drift from the core's config dataclasses."""
    assert set(AdaLoraParams.model_fields) == {f.name for f in fields(AdaLoraConfig)}
    assert set(TrainingParams.model_fields) == {f.name for f in fields(TrainingConfig)}


def test_the_api_vocabularies_are_the_cores() -> None:
    """Literal types in the schemas spell vocabularies defined elsewhere; they must agree."""
    assert get_args(TaskName) == TASK_KINDS
    assert set(get_args(DatasetOut.model_fields["format"].annotation)) == set(FORMATS.values())
    pq_init = AdaLoraParams.model_fields["pq_init"].annotation
    assert set(get_args(get_args(pq_init)[0])) == set(PQ_INITS)
