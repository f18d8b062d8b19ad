"""The `adalora` command: server processes and an HTTP client for the API."""

from __future__ import annotations

import typer

from cli import adapters, datasets, jobs, keys, store, tenants
from cli.chat import chat
from cli.infer import infer
from cli.server import serve, worker

app = typer.Typer(
    help="AdaLoRA Service: fine-tune with AdaLoRA, inspect rank budgets, serve adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
app.command("worker")(worker)
app.add_typer(keys.app, name="keys")
app.add_typer(tenants.app, name="tenants")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(adapters.app, name="adapters")
app.add_typer(store.app, name="store")
app.command("infer")(infer)
app.command("chat")(chat)

if __name__ == "__main__":
    app()
