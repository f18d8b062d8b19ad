"""The command shapes the resource groups share, written once: a `list` printed as a table (or
the API's JSON with --json), a request that prints one line, and a creation that prints what a
script needs on stdout and a note for people on stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, LimitOption, UrlOption, items

Item = dict[str, Any]
RenderRow = Callable[[Item], Sequence[str]]


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2))


def print_items(payload: Any, as_json: bool, columns: Sequence[str], render: RenderRow) -> None:
    """A list answer as its JSON (--json), or as a table with one row per item."""
    if as_json:
        print_json(payload)
        return
    table = Table(*columns)
    for item in items(payload):
        table.add_row(*render(item))
    Console().print(table)


def print_created(
    created: Item, as_json: bool, field: str, note: Callable[[Item], str] | None = None
) -> None:
    """A new resource: its JSON (--json), or ``created[field]`` alone on stdout (for a script to
    capture) and ``note(created)`` on stderr."""
    if as_json:
        print_json(created)
        return
    typer.echo(created[field])
    if note is not None:
        Console(stderr=True).print(note(created))


@dataclass(frozen=True)
class Listing:
    """What a `list` command shows: the route, the table's columns and how an item fills a row.
    A ``paged`` route is followed page by page up to --limit; another answers in one piece."""

    route: str
    columns: tuple[str, ...]
    render: RenderRow
    paged: bool = True

    def show(
        self,
        url: str,
        key: str | None,
        as_json: bool,
        limit: int = 1000,
        params: dict[str, Any] | None = None,
    ) -> None:
        with ApiClient(url, key) as api:
            if self.paged:
                payload = api.list_all(self.route, params, limit)
            else:
                payload = api.json("GET", self.route)
        print_items(payload, as_json, self.columns, self.render)


def list_command(listing: Listing, doc: str) -> Callable[..., None]:
    """The `list` command of a listing with only the common options: --limit (paged routes),
    --url, --key and --json; ``doc`` is its help. Register it with ``app.command("list")``."""
    command = _paged_list(listing) if listing.paged else _whole_list(listing)
    command.__doc__ = doc
    return command


def _paged_list(listing: Listing) -> Callable[..., None]:
    def list_(
        limit: LimitOption = 1000,
        url: UrlOption = DEFAULT_URL,
        key: KeyOption = None,
        as_json: JsonOption = False,
    ) -> None:
        listing.show(url, key, as_json, limit)

    return list_


def _whole_list(listing: Listing) -> Callable[..., None]:
    def list_(
        url: UrlOption = DEFAULT_URL, key: KeyOption = None, as_json: JsonOption = False
    ) -> None:
        listing.show(url, key, as_json)

    return list_


def request_then_say(url: str, key: str | None, method: str, route: str, done: str) -> None:
    """One request whose answer has nothing to show; ``done`` says that it happened."""
    with ApiClient(url, key) as api:
        api.request(method, route)
    typer.echo(done)
