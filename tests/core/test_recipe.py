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


def test_generative_kinds_get_longer_sequences() -> None:
    cls = resolve(5_000)
    lm = resolve(5_000, "causal-lm")
    assert lm.plan.training.max_length > cls.plan.training.max_length
    pair = recipe.resolve(recipe.DataProfile(5_000, "classification", paired=True))
    assert pair.plan.training.max_length > cls.plan.training.max_length


def generative(rows: int, chars: int | None = None, **given: dict) -> recipe.Resolved:
    profile = recipe.DataProfile(rows, "causal-lm", learned_chars=chars)
    return recipe.resolve(profile, given.get("training"), given.get("adalora"))


@pytest.mark.parametrize(
    ("rows", "batch"), [(1, 4), (80, 4), (159, 4), (160, 8), (319, 8), (320, 16), (90_000, 16)]
)
def test_a_generative_batch_leaves_twenty_updates_an_epoch_down_to_four(
    rows: int, batch: int
) -> None:
    resolved = generative(rows)
    assert resolved.plan.training.batch_size == batch
    assert "training.batch_size" in resolved.chosen


@pytest.mark.parametrize(
    ("rows", "chars", "steps"),
    [
        (80, 3_000, 480),  # 1,000 learned tokens: 24 epochs of 20 updates
        (80, 2_400, 600),  # 800 learned tokens: 30 epochs
        (400, 3_000, 600),  # 24 epochs of 25 updates at batch 16
        (80, 30_000, 462),  # long answers: 3 epochs are 60 updates, the allocator's floor wins
        (80, None, 462),  # unknown content: 3 epochs, then the floor
        (10, 300, 90),  # a tiny set: 30 epochs (90 updates); the floor would be 154 epochs
        (16, 464, 120),  # the OpenAI e2e test's set: 30 epochs of 4 updates
        (200, 1_500, 750),  # 500 tokens: 48 epochs wanted, 30 of 25 updates (batch 8) taken
        (2_000, 200_000, 462),  # 66,666 tokens: 3 epochs of 125 updates, then the floor
        (4_000, 30_000, 750),  # 10,000 tokens: 3 epochs of 250 updates
        (4_000, 12_000, 1_000),  # 4,000 tokens: 6 epochs, capped
        (90_000, 9_000_000, 1_000),  # a large set: capped
    ],
)
def test_generative_run_length_follows_rows_and_learned_tokens(
    rows: int, chars: int | None, steps: int
) -> None:
    resolved = generative(rows, chars)
    assert resolved.plan.total_steps == steps
    assert resolved.plan.training.epochs is None and "training.max_steps" in resolved.chosen


def test_generative_defaults_are_the_measured_ones() -> None:
    plan = generative(80, 3_000).plan
    assert plan.training.learning_rate == 2e-3 and plan.adalora.lora_alpha == 128
    lora = recipe.resolve(recipe.DataProfile(80, "causal-lm", learned_chars=3_000), method="lora")
    assert lora.plan.training.learning_rate == 1e-3 and lora.plan.adalora.lora_alpha == 16
    # the encoder kinds keep theirs
    assert resolve(5_000).plan.training.batch_size == recipe.BATCH_SIZE == 16


@pytest.mark.parametrize("rows", [1, 3, 10, 45, 80, 150, 400, 2_000, 50_000])
@pytest.mark.parametrize("chars", [None, 10, 3_000, 100_000, 10_000_000])
@pytest.mark.parametrize("given", [{}, {"batch_size": 64}, {"batch_size": 1, "grad_accum": 4}])
@pytest.mark.parametrize("kind", ["causal-lm", "seq2seq"])
def test_no_generative_schedule_the_recipe_chooses_draws_its_own_warning(
    rows: int, chars: int | None, given: dict, kind: str
) -> None:
    profile = recipe.DataProfile(rows, kind, learned_chars=chars)
    resolved = recipe.resolve(profile, given)
    assert resolved.warnings == ()
    schedule = resolved.plan.schedule
    assert schedule is not None
    adalora = resolved.plan.adalora
    reduces = schedule.final_mask_step - schedule.t_init >= recipe.MIN_REDUCTION_UPDATES
    assert reduces or adalora.init_r == adalora.target_r


@pytest.mark.parametrize(
    ("rows", "chars", "given", "fixed"),
    [
        (10, 300, {}, True),  # 90 updates: the allocator would need 154 passes
        (16, 464, {}, True),
        (80, None, {}, False),  # 462 updates are 23 passes: raised to the floor instead
        (80, 3_000, {"batch_size": 64}, True),  # 2 updates a pass
        (10, 300, {"max_steps": 90}, False),  # a given length is the job's own choice: warned
    ],
)
def test_a_set_too_small_for_the_allocator_keeps_its_ranks(
    rows: int, chars: int | None, given: dict, fixed: bool
) -> None:
    resolved = generative(rows, chars, training=given)
    adalora = resolved.plan.adalora
    assert (adalora.init_r == adalora.target_r == 8) is fixed
    assert "adalora.init_r" in resolved.chosen
    assert (resolved.warnings != ()) is ("max_steps" in given)
    given_ranks = generative(rows, chars, training=given, adalora={"init_r": 6, "target_r": 2})
    assert (given_ranks.plan.adalora.init_r, given_ranks.plan.adalora.target_r) == (6, 2)


def test_the_floor_is_the_fewest_updates_without_a_warning() -> None:
    floor = recipe.min_schedule_updates()
    assert resolve(4_000, training={"max_steps": floor}).warnings == ()
    assert resolve(4_000, training={"max_steps": floor - 1}).warnings != ()


def test_learned_characters_count_what_the_loss_is_on() -> None:
    from adalora_core.tasks import TaskSpec

    chats = [
        {"messages": [{"role": "user", "content": "hi there"},
                      {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "ab"}, {"role": "user", "content": "more"},
                      {"role": "assistant", "content": "cde"}]},
    ]  # fmt: skip
    assert recipe.learned_chars(chats, TaskSpec("causal-lm", "messages")) == 10
    pairs = [{"prompt": "question", "completion": "four"}]
    assert (
        recipe.learned_chars(pairs, TaskSpec("causal-lm", "prompt", target_column="completion"))
        == 4
    )
    assert recipe.learned_chars(pairs, TaskSpec("causal-lm", "prompt")) == 8
    assert (
        recipe.learned_chars(pairs, TaskSpec("seq2seq", "prompt", target_column="completion")) == 4
    )


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


def test_the_best_evaluation_is_kept_when_there_is_validation_data() -> None:
    with_validation = recipe.resolve(recipe.DataProfile(400, "causal-lm", has_validation=True))
    assert with_validation.plan.training.keep_best is True
    assert "training.keep_best" in with_validation.chosen
    assert with_validation.plan.training.early_stop_patience is None  # off unless asked
    without = recipe.resolve(recipe.DataProfile(400, "causal-lm"))
    assert without.plan.training.keep_best is False and "training.keep_best" in without.chosen
    last = recipe.resolve(
        recipe.DataProfile(400, "causal-lm", has_validation=True), {"keep_best": False}
    )
    assert last.plan.training.keep_best is False and "training.keep_best" not in last.chosen
    classifier = recipe.DataProfile(400, "classification", has_validation=True)
    assert recipe.resolve(classifier).plan.training.keep_best is False  # as measured
    assert recipe.resolve(classifier, {"keep_best": True}).plan.training.keep_best is True
    patient = recipe.resolve(
        recipe.DataProfile(400, "causal-lm", has_validation=True), {"early_stop_patience": 3}
    )
    assert patient.plan.training.early_stop_patience == 3


@pytest.mark.parametrize(
    ("given", "field", "has_validation"),
    [
        ({"keep_best": True}, "training.keep_best", False),
        ({"early_stop_patience": 2}, "training.early_stop_patience", False),
        ({"early_stop_patience": 0}, "training.early_stop_patience", True),
        ({"early_stop_patience": 1.5}, "training.early_stop_patience", True),
        ({"keep_best": "yes"}, "training.keep_best", True),
    ],
)
def test_keeping_the_best_and_stopping_early_are_checked(
    given: dict, field: str, has_validation: bool
) -> None:
    profile = recipe.DataProfile(400, "causal-lm", has_validation=has_validation)
    with pytest.raises(ConfigError) as raised:
        recipe.resolve(profile, given)
    assert raised.value.field == field
