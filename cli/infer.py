"""`adalora infer`: run inputs through an adapter."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, KeyOption, UrlOption
from cli.commands import print_json


def infer(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id.")],
    texts: Annotated[
        list[str] | None, typer.Argument(help="Input texts (default: one per line on stdin).")
    ] = None,
    text_pair: Annotated[
        list[str] | None, typer.Option(help="Second text per input (pair tasks), repeatable.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Classify / score texts with an adapter; prints one JSON answer."""
    inputs = texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not inputs:
        raise typer.BadParameter("give at least one text (arguments or stdin)")
    if text_pair and len(text_pair) != len(inputs):
        raise typer.BadParameter(
            f"got {len(inputs)} texts but {len(text_pair)} --text-pair values",
            param_hint="--text-pair",
        )
    rows: list[object] = (
        [[t, p] for t, p in zip(inputs, text_pair, strict=True)] if text_pair else inputs
    )
    body: dict[str, object] = {"adapter_id": adapter_id, "inputs": rows}
    with ApiClient(url, key) as api:
        print_json(api.json("POST", "/infer", json=body))
