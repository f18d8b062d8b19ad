"""`adalora tenants create|list|disable`: tenants, for an admin key of the operator tenant."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption, items

app = typer.Typer(help="Create, list and disable tenants (operator only).", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The new tenant's name.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tenant; its first (admin) key is printed once."""
    with ApiClient(url, key) as api:
        created = api.json("POST", "/tenants", json={"name": name})
    if as_json:
        typer.echo(json.dumps(created, indent=2))
        return
    typer.echo(created["key"])
    Console(stderr=True).print(
        f"tenant {created['id']} ({created['name']}); its admin key {created['key_id']} is "
        "printed above and not shown again"
    )


@app.command("list")
def list_(url: UrlOption = DEFAULT_URL, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """List every tenant."""
    with ApiClient(url, key) as api:
        payload = api.json("GET", "/tenants")
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table("id", "name", "operator", "created", "disabled")
    for t in items(payload):
        table.add_row(
            t["id"],
            t["name"],
            "yes" if t.get("operator") else "",
            str(t.get("created_at") or ""),
            str(t.get("disabled_at") or ""),
        )
    Console().print(table)


@app.command("disable")
def disable(
    tenant_id: Annotated[str, typer.Argument(help="Id of the tenant to disable.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Disable a tenant: its keys stop working at once; its data stays."""
    with ApiClient(url, key) as api:
        api.request("POST", f"/tenants/{tenant_id}/disable")
    typer.echo(f"disabled {tenant_id}")
