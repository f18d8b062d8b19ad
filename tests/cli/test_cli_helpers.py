"""CLI pieces that need no server: request building, error text, the rank heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cli.adapters import rank_heatmap
from cli.client import describe_error
from cli.jobs import build_request
from cli.main import app


def test_options_are_laid_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"adalora": {"init_r": 12, "t_init": 5}, "task": "regression"}))
    body = build_request(config, {"adalora.init_r": 6, "task": None, "columns.text": "t"})
    assert body == {
        "adalora": {"init_r": 6, "t_init": 5},
        "task": "regression",
        "columns": {"text": "t"},
    }


def test_a_config_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "job.json"
    config.write_text("[1, 2]")
    with pytest.raises(typer.Exit):
        build_request(config, {})


def test_api_errors_are_shown_with_code_message_and_field() -> None:
    body = {
        "error": {"code": "validation_error", "message": "must be >= 1", "field": "adalora.init_r"}
    }
    text = describe_error(httpx.Response(422, json=body))
    assert text == "HTTP 422: validation_error: must be >= 1: field adalora.init_r"
    assert describe_error(httpx.Response(502, text="bad gateway")) == "HTTP 502: bad gateway"


def test_heatmap_has_a_row_per_layer_and_a_column_per_kind() -> None:
    modules = [
        {"name": "l0.q", "layer": 0, "kind": "query", "rank": 4},
        {"name": "l0.v", "layer": 0, "kind": "value", "rank": 0},
        {"name": "l1.q", "layer": 1, "kind": "query", "rank": 2},
        {"name": "head", "layer": None, "kind": "pooler", "rank": 1},
    ]
    table = rank_heatmap(modules)
    assert [c.header for c in table.columns] == ["layer", "pooler", "query", "value"]
    assert table.row_count == 3  # layers 0, 1 and the layer-less module
    console = Console(width=80, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    layer1 = next(line for line in lines if line.strip("│ ").startswith("1 "))
    assert "2" in layer1 and "·" in layer1  # rank 2 for query; no value module in layer 1


def test_client_commands_need_a_key() -> None:
    result = CliRunner().invoke(app, ["datasets", "list"], env={"ADALORA_KEY": ""})
    assert result.exit_code != 0 and "API key is required" in result.output
