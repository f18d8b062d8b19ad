"""`adalora datasets upload|list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, LimitOption, UrlOption, items

app = typer.Typer(
    help="Upload and list training data sets (.jsonl, .csv, .tsv).", no_args_is_help=True
)


@app.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="Name (default: the file name).")] = None,
    header: Annotated[
        bool,
        typer.Option(
            "--header/--no-header",
            help="CSV/TSV: the first line names the columns (--no-header: it is data; the "
            "columns are column_1, column_2, ...).",
        ),
    ] = True,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a data set file; prints its id."""
    with ApiClient(url, key, timeout=600) as api, path.open("rb") as handle:
        data = {"name": name} if name else {}
        if not header:
            data["header"] = "false"
        dataset = api.json("POST", "/datasets", files={"file": (path.name, handle)}, data=data)
    if as_json:
        typer.echo(json.dumps(dataset, indent=2))
        return
    typer.echo(dataset["id"])
    Console(stderr=True).print(
        f"{dataset.get('num_rows')} rows, columns {', '.join(dataset.get('columns') or [])}"
    )


@app.command("list")
def list_(
    limit: LimitOption = 1000,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List this tenant's data sets."""
    with ApiClient(url, key) as api:
        payload = api.list_all("/datasets", limit=limit)
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table("id", "name", "format", "rows", "columns", "created")
    for ds in items(payload):
        table.add_row(
            ds["id"],
            ds.get("name") or "",
            ds.get("format") or "",
            str(ds.get("num_rows", "")),
            ", ".join(ds.get("columns") or []),
            str(ds.get("created_at", "")),
        )
    Console().print(table)
