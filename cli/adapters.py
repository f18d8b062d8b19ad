"""`adalora adapters list|import|ranks|download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.client import DEFAULT_URL, ApiClient, JsonOption, KeyOption, UrlOption, fail
from cli.commands import Item, Listing, list_command, print_created, print_json
from service.vocabulary import ArtifactFormat

app = typer.Typer(
    help="List adapters, import PEFT adapters, inspect their rank pattern, download them.",
    no_args_is_help=True,
)


def _adapter_row(ad: Item) -> list[str]:
    return [
        ad["id"],
        ad.get("name") or "",
        ad.get("base_model") or "",
        ad.get("task") or "",
        str(ad.get("total_rank", "")),
        str(ad.get("trainable_params", "")),
        ", ".join(sorted(ad.get("formats") or {})),
        str(ad.get("created_at") or ""),
    ]


ADAPTERS = Listing(
    "/adapters",
    ("id", "name", "base model", "task", "total rank", "params", "formats", "created"),
    _adapter_row,
)
app.command("list")(list_command(ADAPTERS, "List this tenant's adapters."))


def zipped_adapter(path: Path) -> bytes:
    """A PEFT adapter directory as a zip (its files at the top), or a zip file as it is."""
    import io
    import zipfile

    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        fail(f"{path} is neither a directory nor a zip file")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink()):
            archive.write(file, file.name)
    return buffer.getvalue()


@app.command("import")
def import_adapter(
    path: Annotated[Path, typer.Argument(help="A PEFT adapter directory or a zip of one.")],
    base: Annotated[str, typer.Option("--base", help="The registered base it runs on.")],
    task: Annotated[
        str | None,
        typer.Option(
            help="classification | regression | causal-lm | seq2seq (default: its task_type)"
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Label names, comma-separated (classification).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name, unique among your adapters.")] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a PEFT LoRA or AdaLoRA adapter trained elsewhere; prints the new adapter."""
    import json

    data: dict[str, str] = {"base_model": base}
    if task:
        data["task"] = task
    if labels:
        data["labels"] = json.dumps([label.strip() for label in labels.split(",")])
    if name:
        data["name"] = name
    archive = zipped_adapter(path)
    with ApiClient(url, key, timeout=600) as api:
        adapter = api.json(
            "POST",
            "/adapters/import",
            files={"file": (f"{path.name}.zip", archive, "application/zip")},
            data=data,
        )
    print_created(adapter, as_json, "id", _import_note)


def _import_note(adapter: Item) -> str:
    name = f" {adapter['name']!r}" if adapter.get("name") else ""
    return f"imported{name}: {adapter['task']}, total rank {adapter['total_rank']}"


@app.command("ranks")
def ranks(
    adapter_id: str,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the final rank of every adapted module and a layers × kinds heatmap."""
    with ApiClient(url, key) as api:
        info = api.json("GET", f"/adapters/{adapter_id}/ranks")
    if as_json:
        print_json(info)
        return
    console = Console()
    modules = info.get("modules") or []
    table = Table("module", "layer", "kind", "rank", title=f"ranks of {adapter_id}")
    for m in modules:
        table.add_row(m["name"], _cell(m.get("layer")), m.get("kind") or "", str(m["rank"]))
    console.print(table)
    console.print(rank_heatmap(modules))
    budget = info.get("budget") or {}
    if budget:
        console.print(
            "budget: initial {initial}, target {target}, final {final}".format(
                initial=budget.get("initial", "?"),
                target=budget.get("target", "?"),
                final=budget.get("final", sum(int(m["rank"]) for m in modules)),
            )
        )


def rank_heatmap(modules: list[dict[str, Any]]) -> Table:
    """Layers as rows, module kinds as columns, each cell shaded by its rank."""
    kinds = sorted({m.get("kind") or "?" for m in modules})
    layers = sorted(
        {m.get("layer") for m in modules}, key=lambda x: (x is None, x if x is not None else 0)
    )
    grid = {(m.get("layer"), m.get("kind") or "?"): int(m["rank"]) for m in modules}
    top = max(grid.values(), default=0) or 1
    table = Table("layer", *kinds, title="rank heatmap (layers × kinds)", show_lines=False)
    for layer in layers:
        row = [Text(_cell(layer))]
        for kind in kinds:
            rank = grid.get((layer, kind))
            row.append(_shade(rank, top))
        table.add_row(*row)
    return table


def _shade(rank: int | None, top: int) -> Text:
    if rank is None:
        return Text("·", style="dim")
    level = int(round(rank / top * 5))  # 0..5 steps of a 6-level ramp
    colours = ["grey23", "navy_blue", "blue3", "dodger_blue2", "deep_sky_blue1", "bright_white"]
    fg = "black" if level >= 4 else "white"
    return Text(f"{rank:>3}", style=f"{fg} on {colours[level]}")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


@app.command("download")
def download(
    adapter_id: str,
    format: Annotated[
        str, typer.Option("--format", help=" | ".join(ArtifactFormat))
    ] = ArtifactFormat.PEFT,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output file (default <id>-<format>.zip).")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Download an adapter as a zip; the sha256 the service recorded is checked."""
    import hashlib

    if format not in set(ArtifactFormat):
        fail(f"--format must be one of {', '.join(ArtifactFormat)}, got {format!r}")
    out = out or Path(f"{adapter_id}-{format}.zip")
    digest = hashlib.sha256()
    with (
        ApiClient(url, key, timeout=600) as api,
        api.stream("GET", f"/adapters/{adapter_id}/download", params={"format": format}) as resp,
    ):
        if resp.status_code >= 400:
            resp.read()
            from cli.client import describe_error

            fail(describe_error(resp))
        expected = resp.headers.get("x-sha256") or resp.headers.get("x-checksum-sha256")
        tmp = out.with_suffix(out.suffix + ".part")
        with tmp.open("wb") as handle:
            for chunk in resp.iter_bytes():
                digest.update(chunk)
                handle.write(chunk)
    if expected and expected != digest.hexdigest():
        tmp.unlink(missing_ok=True)
        fail(f"download corrupted: sha256 {digest.hexdigest()} != {expected}")
    tmp.replace(out)
    typer.echo(str(out))
