"""A run's facts come from one function: the update count, the schedule, the ranks, the fit to
the base's context, each checked; and the base's context limit is read from its config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adalora_core.config import AdaLoraConfig
from adalora_core.context_limit import context_limit
from adalora_core.errors import ConfigError
from adalora_core.run_plan import plan_run
from adalora_core.training_config import TrainingConfig

ADALORA = AdaLoraConfig(init_r=6, target_r=4)


def test_an_adalora_plan_derives_the_run_length_and_fills_the_schedule() -> None:
    plan = plan_run(100, TrainingConfig(epochs=3, batch_size=16), ADALORA)
    assert plan.num_rows == 100 and plan.total_steps == 21  # 7 updates an epoch
    assert plan.schedule == ADALORA.schedule(21)
    assert (plan.adalora.t_init, plan.adalora.t_final, plan.adalora.delta_t) == (2, 9, 1)
    assert plan.adalora.schedule(21) == plan.schedule  # the filled config means the same
    assert (plan.method, plan.lora_r, plan.init_r, plan.target_r) == ("adalora", None, 6, 4)
    assert plan.eval_every is None and plan.checkpoint_every is None


def test_a_lora_plan_has_a_rank_and_no_schedule() -> None:
    default = plan_run(100, TrainingConfig(max_steps=5, epochs=None), ADALORA, method="lora")
    assert default.schedule is None and default.lora_r == 4  # adalora.target_r
    assert default.adalora.t_init is None  # nothing to fill: LoRA never reallocates
    given = plan_run(100, TrainingConfig(), ADALORA, method="lora", lora_r=3)
    assert (given.init_r, given.target_r) == (3, 3)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"method": "dora"}, "method"),
        ({"lora_r": 3}, "lora_r"),  # only LoRA takes a rank
        ({"method": "lora", "lora_r": 0}, "lora_r"),
        ({"training": TrainingConfig(learning_rate=0)}, "training.learning_rate"),
        ({"adalora": AdaLoraConfig(init_r=2, target_r=4)}, "adalora.target_r"),
        ({"adalora": AdaLoraConfig(t_final=50)}, "adalora.t_final"),  # longer than the run
        ({"num_rows": 0}, "dataset"),
        ({"max_positions": 64}, "training.max_length"),  # max_length 128 does not fit
    ],
)
def test_every_bad_setting_is_named(arguments: dict, field: str) -> None:
    given = {"num_rows": 100, "training": TrainingConfig(max_steps=20, epochs=None)}
    given |= {"adalora": ADALORA} | arguments
    num_rows, training, adalora = given.pop("num_rows"), given.pop("training"), given.pop("adalora")
    with pytest.raises(ConfigError) as raised:
        plan_run(num_rows, training, adalora, **given)
    assert raised.value.field == field


def test_with_training_plans_again() -> None:
    plan = plan_run(100, TrainingConfig(max_steps=20, epochs=None), ADALORA, max_positions=128)
    cadenced = plan.with_training(eval_every=5, checkpoint_every=2)
    assert (cadenced.eval_every, cadenced.checkpoint_every) == (5, 2)
    assert cadenced.total_steps == 20 and cadenced.schedule == plan.schedule
    with pytest.raises(ConfigError) as raised:
        plan.with_training(max_length=256)
    assert raised.value.field == "training.max_length"


def test_the_context_limit_comes_from_the_bases_config(tmp_path: Path) -> None:
    def base(name: str, config: dict | None) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config))
        return directory

    assert context_limit(base("bert", {"max_position_embeddings": 512})) == 512
    assert context_limit(base("gpt2", {"n_positions": 1024})) == 1024
    assert context_limit(base("t5", {"d_model": 64})) is None  # relative positions: no limit
    assert context_limit(base("none", None)) is None
    assert context_limit(tmp_path / "missing") is None
