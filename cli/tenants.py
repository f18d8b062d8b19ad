"""`adalora tenants create|list|disable`: tenants, for an admin key of the operator tenant."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption
from cli.commands import Item, Listing, list_command, print_created, request_then_say

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
    print_created(created, as_json, "key", _secret_note)


def _secret_note(created: Item) -> str:
    return (
        f"tenant {created['id']} ({created['name']}); its admin key {created['key_id']} is "
        "printed above and not shown again"
    )


def _tenant_row(t: Item) -> list[str]:
    return [
        t["id"],
        t["name"],
        "yes" if t.get("operator") else "",
        str(t.get("created_at") or ""),
        str(t.get("disabled_at") or ""),
    ]


TENANTS = Listing(
    "/tenants", ("id", "name", "operator", "created", "disabled"), _tenant_row, paged=False
)
app.command("list")(list_command(TENANTS, "List every tenant."))


@app.command("disable")
def disable(
    tenant_id: Annotated[str, typer.Argument(help="Id of the tenant to disable.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Disable a tenant: its keys stop working at once; its data stays."""
    request_then_say(url, key, "POST", f"/tenants/{tenant_id}/disable", f"disabled {tenant_id}")
