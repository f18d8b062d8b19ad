"""A job's metrics file: one CSV row per progress or evaluation event, in the order they
happened. It is what a tracker or a spreadsheet reads, and the OpenAI job's result file."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from service import jobs as job_rows
from service.tables import Job, JobEvent
from service.vocabulary import EventKind

FIRST = ["step", "epoch", "train_loss"]
LAST = ["learning_rate", "budget", "elapsed_s"]


def metrics_rows(events: Iterable[JobEvent], started_at: datetime | None) -> list[dict[str, Any]]:
    """Each progress and eval event as a row; an eval row repeats the epoch and budget of the
    update it followed."""
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for event in events:
        data = event.data or {}
        if event.kind == EventKind.PROGRESS:
            last = {"epoch": data.get("epoch"), "budget": data.get("budget")}
            row = {
                "step": data.get("step"),
                **last,
                "train_loss": data.get("loss"),
                "learning_rate": data.get("learning_rate"),
            }
            if data.get("token_accuracy") is not None:
                row["train_mean_token_accuracy"] = data["token_accuracy"]
        elif event.kind == EventKind.EVAL:
            row = {"step": data.get("step"), **last}
            for name, value in (data.get("metrics") or {}).items():
                row[name if name.startswith("eval_") else f"eval_{name}"] = value
        else:
            continue
        if started_at is not None:
            row["elapsed_s"] = round(max(0.0, (event.created_at - started_at).total_seconds()), 3)
        rows.append(row)
    return rows


def metrics_csv(events: Iterable[JobEvent], started_at: datetime | None) -> str:
    """The CSV text: step, epoch, train_loss, eval_loss, the other metrics seen, then
    learning_rate, budget and elapsed_s; an empty cell where an event has no value."""
    rows = metrics_rows(events, started_at)
    seen: list[str] = []
    for row in rows:
        seen.extend(name for name in row if name not in seen)
    middle = [n for n in seen if n not in FIRST + LAST]
    middle.sort(key=lambda n: (n != "eval_loss", not n.startswith("train_"), n))
    if "eval_loss" not in middle:
        middle.insert(0, "eval_loss")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIRST + middle + LAST, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def job_metrics_csv(session: Session, job: Job) -> str:
    """The job's metrics file, from its progress and eval events."""
    events = job_rows.events_of_kinds(session, job, (EventKind.PROGRESS, EventKind.EVAL))
    return metrics_csv(events, job.started_at)
