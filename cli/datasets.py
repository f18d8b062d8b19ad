"""`adalora datasets upload|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption
from cli.commands import Item, Listing, list_command, print_created

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
    print_created(dataset, as_json, "id", _upload_note)


def _upload_note(dataset: Item) -> str:
    return f"{dataset.get('num_rows')} rows, columns {', '.join(dataset.get('columns') or [])}"


def _dataset_row(ds: Item) -> list[str]:
    return [
        ds["id"],
        ds.get("name") or "",
        ds.get("format") or "",
        str(ds.get("num_rows", "")),
        ", ".join(ds.get("columns") or []),
        str(ds.get("created_at", "")),
    ]


DATASETS = Listing(
    "/datasets", ("id", "name", "format", "rows", "columns", "created"), _dataset_row
)
app.command("list")(list_command(DATASETS, "List this tenant's data sets."))
