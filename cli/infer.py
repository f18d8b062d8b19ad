"""`adalora infer`: run inputs through an adapter."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, KeyOption, UrlOption


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
    body: dict[str, object] = {"adapter_id": adapter_id, "inputs": inputs}
    if text_pair:
        body["text_pairs"] = text_pair
    with ApiClient(url, key) as api:
        typer.echo(json.dumps(api.json("POST", "/infer", json=body), indent=2))
