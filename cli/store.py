"""`adalora store check|gc`: the artifact store against the rows, on the service's own settings
(run where `adalora serve` or `adalora worker` runs; it reads the database and the store
directly, no API key)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from service.consistency import DEFAULT_GRACE_S, check_store, collect_garbage
from service.db import get_engine, session_scope
from service.settings import get_settings
from service.store import get_store

app = typer.Typer(help="Check the artifact store against the database; collect orphans.")


@app.command("check")
def check(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List stored objects no row points to, and rows whose objects are gone; exit 1 if any."""
    settings = get_settings()
    with session_scope(get_engine(settings.database_url, settings.db_limits)) as session:
        report = check_store(session, get_store(settings))
    if as_json:
        payload = {
            "orphans": [{"key": o.key, "size": o.size} for o in report.orphans],
            "missing": report.missing,
        }
        typer.echo(json.dumps(payload, indent=2))
    else:
        for obj in report.orphans:
            typer.echo(f"orphan  {obj.key} ({obj.size} bytes)")
        for key in report.missing:
            typer.echo(f"missing {key}")
        if report.consistent:
            typer.echo("the store and the rows agree")
    if not report.consistent:
        raise typer.Exit(1)


@app.command("gc")
def gc(
    grace_s: Annotated[
        float, typer.Option(help="Only orphans last written longer ago than this (seconds).")
    ] = DEFAULT_GRACE_S,
) -> None:
    """Delete orphaned objects older than the grace period (never anything a row points to), and
    what interrupted writes left (temp files, unfinished S3 multipart uploads) as old."""
    settings = get_settings()
    store = get_store(settings)
    with session_scope(get_engine(settings.database_url, settings.db_limits)) as session:
        deleted = collect_garbage(session, store, grace_s)
    for key in deleted:
        typer.echo(f"deleted {key}")
    typer.echo(f"{len(deleted)} orphan(s) deleted")
    typer.echo(f"{store.sweep_temp(grace_s)} unfinished write(s) removed")
