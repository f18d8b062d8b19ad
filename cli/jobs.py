"""`adalora jobs submit|list|show|cancel|follow|metrics`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cli.client import (
    DEFAULT_URL,
    EVENT_STREAM,
    ApiClient,
    JsonOption,
    KeyOption,
    LimitOption,
    UrlOption,
    describe_error,
    fail,
    items,
    iter_sse,
)
from cli.commands import Item, Listing, print_created, print_json
from service.vocabulary import TERMINAL, OutputMode

app = typer.Typer(help="Submit, watch and cancel training jobs.", no_args_is_help=True)


def build_request(
    config: Path | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The job body: a JSON file (if given) with command-line options laid over it."""
    body: dict[str, Any] = {}
    if config is not None:
        try:
            body = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--config {config}: {exc}")
        if not isinstance(body, dict):
            fail(f"--config {config}: must hold a JSON object")
    for dotted, value in overrides.items():
        if value is None:
            continue
        target = body
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return body


@app.command("submit")
def submit(
    dataset: Annotated[str | None, typer.Option(help="Training data set id.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Registered base model name.")] = None,
    task: Annotated[
        str | None, typer.Option(help="classification | regression | causal-lm | seq2seq.")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Input text column.")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column.")] = None,
    target_column: Annotated[str | None, typer.Option(help="Target column (seq2seq).")] = None,
    validation_dataset: Annotated[str | None, typer.Option(help="Eval data set id.")] = None,
    init_r: Annotated[int | None, typer.Option(help="Initial rank per module.")] = None,
    target_r: Annotated[int | None, typer.Option(help="Average target rank per module.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer updates (instead of epochs).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    devices: Annotated[
        int | None, typer.Option(help="Train on this many GPUs (data parallel).")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="unmerged (default) or merged (adds a merged model).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the job.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="JSON file with the full job body."),
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a fine-tuning job; prints its id."""
    body = build_request(
        config,
        {
            "name": name,
            "base_model": base_model,
            "dataset_id": dataset,
            "validation_dataset_id": validation_dataset,
            "output": output,
            "task": task,
            "columns.text": text_column,
            "columns.text_pair": text_pair_column,
            "columns.label": label_column,
            "columns.target": target_column,
            "adalora.init_r": init_r,
            "adalora.target_r": target_r,
            "training.epochs": epochs,
            "training.max_steps": max_steps,
            "training.batch_size": batch_size,
            "training.learning_rate": learning_rate,
            "resources.devices": devices,
        },
    )
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with ApiClient(url, key) as api:
        job = api.json("POST", "/jobs", json=body, headers=headers)
    print_created(job, as_json, "id")


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: LimitOption = 1000,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    JOBS.show(url, key, as_json, limit, {"status": status} if status else None)


def _job_row(job: Item) -> list[str]:
    return [
        job["id"],
        job.get("name") or "",
        job["status"],
        job.get("base_model") or "",
        _progress_text(job),
        job.get("adapter_id") or "",
        str(job.get("created_at") or ""),
    ]


JOBS = Listing(
    "/jobs", ("id", "name", "status", "base model", "progress", "adapter", "created"), _job_row
)


@app.command("show")
def show(
    job_id: str,
    request: Annotated[
        bool,
        typer.Option(
            "--request",
            help="Print instead a job body with every resolved setting, to repeat the run "
            "exactly with `jobs submit --config`.",
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Print one job as JSON; `hyperparameters` holds every setting that ran, and
    `chosen_by_service` names the ones the service chose."""
    with ApiClient(url, key) as api:
        job = api.json("GET", f"/jobs/{job_id}")
    print_json(repeatable_request(job) if request else job)


def repeatable_request(job: dict[str, Any]) -> dict[str, Any]:
    """The job body that reproduces ``job``: its resolved settings, none left to the service."""
    hyper = job.get("hyperparameters") or {}
    body: dict[str, Any] = {
        "base_model": job["base_model"],
        "task": job["task"],
        "dataset_id": job["dataset_id"],
        "columns": dict(hyper.get("columns") or {}),
        "adalora": dict(hyper.get("adalora") or {}),
        "training": dict(hyper.get("training") or {}),
        "resources": dict(hyper.get("resources") or {"devices": 1}),
        "output": hyper.get("output") or OutputMode.UNMERGED.value,
        "metadata": job.get("metadata") or {},
    }
    if job.get("validation_dataset_id"):
        body["validation_dataset_id"] = job["validation_dataset_id"]
    if job.get("name"):
        body["name"] = job["name"]
    return body


@app.command("cancel")
def cancel(job_id: str, url: UrlOption = DEFAULT_URL, key: KeyOption = None) -> None:
    """Ask a job to stop; a running job stops within a training step."""
    with ApiClient(url, key) as api:
        job = api.json("POST", f"/jobs/{job_id}/cancel")
    typer.echo(f"{job_id}: {job['status']}")


@app.command("follow")
def follow(
    job_id: str,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    poll: Annotated[
        bool, typer.Option("--poll", help="Poll instead of following the live event stream.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Draw a progress bar (loss, current rank budget) until the job ends; exit 1 unless it
    succeeded. Events arrive live (server-sent events); if the stream is not available or
    drops, it goes on by polling every --interval seconds."""
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout if timeout is not None else None
    with (
        ApiClient(url, key) as api,
        Progress(
            TextColumn("[bold]{task.fields[status]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("budget {task.fields[budget]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task(job_id, total=None, status="queued", loss="-", budget="-")
        display = _FollowDisplay(bar, task)
        job = api.json("GET", f"/jobs/{job_id}")
        display.show(job)
        after, ended = 0, False
        if not poll:
            after, ended = _follow_stream(api, job_id, display, deadline)
        if not ended:
            bar.console.print(f"polling every {interval:g}s")
        while True:
            job = api.json("GET", f"/jobs/{job_id}")
            events = items(api.json("GET", f"/jobs/{job_id}/events", params={"after": after}))
            for event in events:
                after = max(after, int(event["id"]))
                display.apply(event)
            display.show(job)
            if job["status"] in TERMINAL:
                break
            _check_deadline(deadline, job_id, job["status"])
            time.sleep(interval)
    if job["status"] == "succeeded":
        console.print(f"[green]succeeded[/green]: adapter {job.get('adapter_id')}")
        typer.echo(job.get("adapter_id") or "")
        return
    error = job.get("error") or {}
    fail(
        f"job {job['status']}" + (f": {error.get('code')}: {error.get('message')}" if error else "")
    )


def _check_deadline(deadline: float | None, job_id: str, status: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        fail(f"job {job_id} still {status} when --timeout ran out", code=2)


class _FollowDisplay:
    """The progress bar and the lines printed above it, fed by events and job snapshots."""

    def __init__(self, bar: Progress, task: Any) -> None:
        self.bar = bar
        self.task = task
        self.loss: float | None = None

    def apply(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        kind = event["kind"]
        if kind == "progress":
            if data.get("loss") is not None:
                self.loss = float(data["loss"])
            fields: dict[str, Any] = {"loss": f"{self.loss:.4f}" if self.loss is not None else "-"}
            if data.get("step") is not None:
                fields["completed"] = data["step"]
            if data.get("budget") is not None:
                fields["budget"] = str(data["budget"])
            self.bar.update(self.task, **fields)
        elif kind == "status" and data.get("to"):
            self.bar.update(self.task, status=data["to"])
        elif kind == "eval":
            self.bar.console.print(f"eval @ step {data.get('step')}: {data.get('metrics')}")
        elif kind == "error":
            self.bar.console.print(f"[red]error: {data}")
        elif kind == "warning":
            self.bar.console.print(f"[yellow]warning: {data.get('message')}")

    def show(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        self.bar.update(
            self.task,
            total=progress.get("total_steps"),
            completed=progress.get("step", 0),
            status=job["status"],
            loss=f"{self.loss:.4f}" if self.loss is not None else "-",
            budget=_budget_text(job.get("budget") or {}),
        )


def _follow_stream(
    api: ApiClient, job_id: str, display: _FollowDisplay, deadline: float | None
) -> tuple[int, bool]:
    """Apply the job's live events until its ``end`` event: (last event id, whether it ended).
    A server without the stream, or a dropped connection, returns False to fall back."""
    after = 0
    headers = {"Accept": EVENT_STREAM}
    try:
        with api.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                fail(describe_error(response))
            if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
                return after, False
            display.bar.console.print("following live events")
            for kind, data in iter_sse(response.iter_lines()):
                if kind == "end":
                    return after, True
                event = json.loads(data)
                after = max(after, int(event["id"]))
                display.apply(event)
                _check_deadline(deadline, job_id, "running")
    except httpx.HTTPError:
        return after, False
    return after, False


def _progress_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    if progress.get("total_steps"):
        return f"{progress.get('step', 0)}/{progress['total_steps']}"
    return ""


def _budget_text(budget: dict[str, Any]) -> str:
    if not budget:
        return "-"
    current = budget.get("current", budget.get("initial"))
    return f"{current}" + (f" → {budget['target']}" if budget.get("target") is not None else "")


@app.command("metrics")
def metrics(
    job_id: str,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output file (default <id>-metrics.csv).")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Save the job's metrics file: one CSV row per progress or evaluation event."""
    out = out or Path(f"{job_id}-metrics.csv")
    with ApiClient(url, key) as api:
        response = api.request("GET", f"/jobs/{job_id}/metrics.csv")
    out.write_bytes(response.content)
    typer.echo(str(out))
