"""AdaLoraConfig validation and the cubic budget schedule at its boundaries."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from adalora_core.config import AdaLoraConfig, BudgetSchedule
from adalora_core.errors import ConfigError


def test_defaults_are_valid() -> None:
    AdaLoraConfig().validate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"init_r": 0}, "adalora.init_r"),
        ({"init_r": 2.5}, "adalora.init_r"),
        ({"target_r": 0}, "adalora.target_r"),
        ({"init_r": 4, "target_r": 8}, "adalora.target_r"),
        ({"t_init": -1}, "adalora.t_init"),
        ({"t_final": -3}, "adalora.t_final"),
        ({"delta_t": 0}, "adalora.delta_t"),
        ({"beta1": 1.0}, "adalora.beta1"),
        ({"beta2": 0.0}, "adalora.beta2"),
        ({"beta1": float("nan")}, "adalora.beta1"),
        ({"orth_reg_weight": -0.1}, "adalora.orth_reg_weight"),
        ({"lora_alpha": 0}, "adalora.lora_alpha"),
        ({"lora_dropout": 1.0}, "adalora.lora_dropout"),
        ({"lora_dropout": True}, "adalora.lora_dropout"),
        ({"target_modules": ()}, "adalora.target_modules"),
        ({"target_modules": "(unclosed"}, "adalora.target_modules"),
        ({"target_modules": ("query", "")}, "adalora.target_modules"),
    ],
)
def test_invalid_values_name_their_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdaLoraConfig(**overrides).validate()
    assert info.value.field == field
    assert info.value.message


def test_from_dict_rejects_unknown_keys_and_round_trips() -> None:
    with pytest.raises(ConfigError) as info:
        AdaLoraConfig.from_dict({"init_rank": 4})
    assert info.value.field == "adalora.init_rank"
    config = AdaLoraConfig.from_dict({"init_r": 10, "target_modules": ["query", "value"]})
    assert config.target_modules == ("query", "value")
    assert AdaLoraConfig.from_dict(config.to_dict()) == config


def test_config_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ConfigError("adalora.t_init", "too late")))
    assert (error.field, error.message) == ("adalora.t_init", "too late")


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, adalora_core.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_budget_at_the_schedule_boundaries() -> None:
    schedule = AdaLoraConfig(t_init=10, t_final=20, delta_t=5).schedule(100)
    assert schedule == BudgetSchedule(total_steps=100, t_init=10, t_final=20, delta_t=5)
    initial, target = 120, 80
    assert schedule.budget(1, initial, target) == 120
    assert schedule.budget(10, initial, target) == 120  # t_init: still the full budget
    # t_init + 1: one of 70 reducing steps done -> floor(40 * (69/70)^3 + 80) = floor(118.31)
    assert schedule.budget(11, initial, target) == 118
    assert schedule.budget(45, initial, target) == 85  # floor(40 * 0.5^3 + 80)
    assert schedule.budget(80, initial, target) == 80  # T - t_final: exactly the target
    assert schedule.budget(81, initial, target) == 80
    assert schedule.budget(100, initial, target) == 80


def test_masking_steps() -> None:
    schedule = AdaLoraConfig(t_init=10, t_final=20, delta_t=5).schedule(100)
    masking = [t for t in range(1, 101) if schedule.is_masking_step(t)]
    assert masking == [15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80]
    assert schedule.final_mask_step == 80


def test_t_init_must_leave_a_reducing_phase() -> None:
    with pytest.raises(ConfigError) as info:
        AdaLoraConfig(t_init=80, t_final=20).schedule(100)
    assert info.value.field == "adalora.t_init"
    assert "budget-reducing phase" in info.value.message
    with pytest.raises(ConfigError) as info:
        AdaLoraConfig(t_init=0, t_final=100).schedule(100)
    assert info.value.field == "adalora.t_final"


def test_default_schedule_follows_the_authors_proportions() -> None:
    """Warm-up ~12%, reduction ~43%, and a final phase about as long as the steps before it."""
    schedule = AdaLoraConfig().schedule(1000)
    assert (schedule.t_init, schedule.t_final) == (120, 450)
    masking = [t for t in range(1, 1001) if schedule.is_masking_step(t)]
    assert 100 <= len(masking) <= 150
    assert schedule.delta_t == 4


@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_tiny_runs_still_get_a_valid_schedule(total: int) -> None:
    schedule = AdaLoraConfig().schedule(total)
    assert 0 <= schedule.t_init < total - schedule.t_final
    assert schedule.delta_t >= 1
    assert schedule.is_masking_step(schedule.final_mask_step)


@pytest.mark.parametrize("total", [0, -5, 2.0, True])
def test_no_updates_is_rejected(total: object) -> None:
    with pytest.raises(ConfigError) as info:
        AdaLoraConfig().schedule(total)  # type: ignore[arg-type]
    assert info.value.field == "training.max_steps"


def test_pq_init_is_checked_and_named() -> None:
    assert AdaLoraConfig(pq_init="orthonormal").to_dict()["pq_init"] == "orthonormal"
    with pytest.raises(ConfigError) as raised:
        AdaLoraConfig.from_dict({"pq_init": "xavier"})
    assert raised.value.field == "adalora.pq_init"
