"""`adalora keys create|revoke|list`: API keys of the caller's tenant."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption
from cli.commands import Item, Listing, list_command, print_created, request_then_say

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
    print_created(created, as_json, "key", _secret_note)


def _secret_note(created: Item) -> str:
    return f"key id {created['id']} ({created['scope']}); the secret above is not shown again"


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Id of the key to revoke.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Revoke a key at once."""
    request_then_say(url, key, "DELETE", f"/keys/{key_id}", f"revoked {key_id}")


def _key_row(k: Item) -> list[str]:
    return [
        k["id"],
        k.get("scope") or "",
        k.get("name") or "",
        str(k.get("created_at") or ""),
        str(k.get("last_used_at") or ""),
        str(k.get("revoked_at") or ""),
    ]


KEYS = Listing(
    "/keys", ("id", "scope", "name", "created", "last used", "revoked"), _key_row, paged=False
)
app.command("list")(list_command(KEYS, "List keys by their public ids (secrets are never stored)."))
