"""Continue training from a finished adapter or a checkpoint (``init_from``): the new job runs
on the same base with the same ranks, scaling and adapted modules, so the starting weights and
allocation fit; settings the body leaves out are taken from the job that trained the source,
and a body that contradicts them gets a 422 naming the field."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from application.errors import RequestError
from application.job_request import JobCreate
from service import adapters as adapter_rows
from service import checkpoints as checkpoint_rows
from service import jobs as job_rows
from service.tables import Adapter, Checkpoint, Job
from service.vocabulary import ArtifactFormat

# What the starting weights fix: the rank each module starts from, the scaling, the modules.
FIXED = ("init_r", "lora_alpha", "target_modules")
# What the source's job chose and the new one keeps unless the body says otherwise.
INHERITED = (*FIXED, "target_r")


def invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "invalid_request", message, field)


def _source(session: Session, tenant_id: str, body: JobCreate) -> tuple[Adapter | Checkpoint, str]:
    init = body.init_from
    assert init is not None
    if (init.adapter_id is None) == (init.checkpoint_id is None):
        raise invalid("init_from", "give adapter_id or checkpoint_id (one of them)")
    if init.adapter_id is not None:
        field = "init_from.adapter_id"
        row: Adapter | Checkpoint | None = adapter_rows.get_adapter(
            session, tenant_id, init.adapter_id
        )
    else:
        field = "init_from.checkpoint_id"
        row = checkpoint_rows.get_checkpoint(session, tenant_id, init.checkpoint_id or "")
    if row is None:
        raise invalid(field, f"{getattr(init, field.split('.')[1])!r} not found")
    if isinstance(row, Adapter) and row.status != "ready":
        raise invalid(field, f"adapter {row.id!r} is {row.status} and cannot be continued")
    return row, field


def resolve_init_from(
    session: Session, tenant_id: str, body: JobCreate
) -> tuple[JobCreate, Job | None, dict[str, Any] | None]:
    """The body with the source's settings filled in, the source's job, and what the worker
    stores of the source (its id and PEFT artifact); the body as is when it continues nothing."""
    if body.init_from is None:
        return body, None, None
    row, field = _source(session, tenant_id, body)
    job = job_rows.get_job(session, tenant_id, row.job_id) if row.job_id else None
    trained = (job.hyperparameters or {}).get("adalora") if job is not None else None
    if job is None or not isinstance(trained, dict):
        raise invalid(field, f"{row.id!r} was not trained by a job here, so it cannot be continued")
    if row.base_model != body.base_model:
        raise invalid(
            "base_model", f"is {body.base_model!r}; {row.id!r} was trained on {row.base_model!r}"
        )
    if row.task != body.task:
        raise invalid("task", f"is {body.task!r}; {row.id!r} was trained for {row.task!r}")
    given = body.adalora.model_dump(exclude_none=True)
    for name in FIXED:
        if name in given and given[name] != trained.get(name):
            raise invalid(
                f"adalora.{name}",
                f"is {given[name]!r}; {row.id!r} was trained with {trained.get(name)!r}, and "
                "its weights only fit that",
            )
    filled = {n: trained[n] for n in INHERITED if n not in given and trained.get(n) is not None}
    peft = (row.formats or {}).get(ArtifactFormat.PEFT) or {}
    source = {
        field.split(".")[1]: row.id,
        "storage_key": peft.get("storage_key"),
        "sha256": peft.get("sha256"),
    }
    return body.model_copy(update={"adalora": body.adalora.model_copy(update=filled)}), job, source


def check_labels(hyperparameters: dict[str, Any], source_job: Job | None) -> None:
    """A continued classifier keeps its head: the new data must have the same labels."""
    if source_job is None:
        return
    before = (source_job.hyperparameters or {}).get("labels")
    after = hyperparameters.get("labels")
    if before != after:
        raise invalid(
            "columns.label",
            f"the data's labels {after} differ from those the adapter was trained on {before}",
        )
