"""`adalora keys create|revoke|list`: API keys of the caller's tenant."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption, items

app = typer.Typer(help="Create, revoke and list API keys.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    scope: Annotated[
        str, typer.Option(help="infer | train | admin; never above your own key's scope.")
    ] = "train",
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; its secret is printed once."""
    with ApiClient(url, key) as api:
        body = {"scope": scope, **({"name": name} if name else {})}
        created = api.json("POST", "/keys", json=body)
    if as_json:
        typer.echo(json.dumps(created, indent=2))
        return
    typer.echo(created["key"])
    Console(stderr=True).print(
        f"key id {created['id']} ({created['scope']}); the secret above is not shown again"
    )


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Id of the key to revoke.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Revoke a key at once."""
    with ApiClient(url, key) as api:
        api.request("DELETE", f"/keys/{key_id}")
    typer.echo(f"revoked {key_id}")


@app.command("list")
def list_(url: UrlOption = DEFAULT_URL, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """List keys by their public ids (secrets are never stored)."""
    with ApiClient(url, key) as api:
        payload = api.json("GET", "/keys")
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table("id", "scope", "name", "created", "last used", "revoked")
    for k in items(payload):
        table.add_row(
            k["id"],
            k.get("scope") or "",
            k.get("name") or "",
            str(k.get("created_at") or ""),
            str(k.get("last_used_at") or ""),
            str(k.get("revoked_at") or ""),
        )
    Console().print(table)
