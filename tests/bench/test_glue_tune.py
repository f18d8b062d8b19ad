"""The tuning grid and its choice: an extension grid keeps the grid's shape, and a tuned
setting carries the rank its best cell ran at, so the protocol reruns that cell's model."""

from __future__ import annotations

from typing import Any

from bench import glue_table, glue_tune


def tuning_row(method: str, lr: float, alpha: float, value: float, cell: str) -> dict[str, Any]:
    return {
        "task": "cola", "method": method, "split": "holdout", "value": value, "cell": cell,
        "training": {"learning_rate": lr}, "adalora": {"lora_alpha": alpha},
    }  # fmt: skip


def test_an_alpha_pair_replaces_every_method_pair_over_the_given_learning_rates() -> None:
    cells = glue_tune.grid(["cola"], ["lora"], ["--holdout", "9"], (1e-4, 2e-4), (8.0, 16.0))
    settings = [(c[c.index("--lr") + 1], c[c.index("--lora-alpha") + 1]) for c in cells]
    assert settings == [
        ("0.0001", "8.0"),
        ("0.0001", "16.0"),
        ("0.0002", "8.0"),
        ("0.0002", "16.0"),
    ]
    assert all(c[-2:] == ["--holdout", "9"] for c in cells)


def test_the_tuned_setting_carries_its_best_cells_init_r() -> None:
    rows = [
        tuning_row("adalora", 2e-3, 32.0, 0.19, "--method adalora --lr 0.002 --target-r 1"),
        tuning_row("adalora", 1e-3, 64.0, 0.25, "--method adalora --lr 0.001 --init-r 4"),
        tuning_row("lora", 5e-4, 16.0, 0.18, "--method lora --lr 0.0005 --lora-r 1"),
    ]
    chosen = glue_table.tuned_settings(rows, "cola")
    assert chosen["adalora"] == ["--lr", "0.001", "--lora-alpha", "64.0", "--init-r", "4"]
    assert chosen["svd"] == chosen["adalora"]
    assert chosen["lora"] == ["--lr", "0.0005", "--lora-alpha", "16.0"]


def test_the_same_lr_and_alpha_at_another_init_r_is_another_setting() -> None:
    rows = [
        tuning_row("adalora", 1e-3, 64.0, 0.30, "--method adalora --init-r 4"),
        tuning_row("adalora", 1e-3, 64.0, 0.10, "--method adalora --init-r 2"),
    ]
    setting, score, _ = glue_tune.best(rows, "adalora")
    assert setting == glue_tune.Setting(1e-3, 64.0, "4") and score == 0.30
