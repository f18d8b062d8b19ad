"""Fine-tuned model names, OpenAI's way: ``ft:<base>:<tenant name>:<suffix>:<job id>`` for a
job's finished adapter, and the same with ``:ckpt-step-<N>`` for one of its checkpoints.

A name is resolved from its job id (the last part) and checked whole against the name that job
has, so a name with another base or tenant in it finds nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from application.openai_ids import from_openai, to_openai
from service import adapters as adapter_rows
from service import checkpoints as checkpoint_rows
from service import jobs as job_rows
from service.tables import Adapter, Checkpoint, Job, Tenant
from service.vocabulary import JobStatus

PREFIX = "ft:"
CHECKPOINT = "ckpt-step-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _part(text: str) -> str:
    """A name part without the separator (a base or tenant name may hold any character)."""
    return _UNSAFE.sub("-", text)


def fine_tuned_model(job: Job, tenant_name: str) -> str:
    suffix = (job.request or {}).get("suffix") or ""
    job_part = to_openai("ftjob", job.id)
    return f"{PREFIX}{_part(job.base_model)}:{_part(tenant_name)}:{suffix}:{job_part}"


def checkpoint_model(job: Job, tenant_name: str, step: int) -> str:
    return f"{fine_tuned_model(job, tenant_name)}:{CHECKPOINT}{step}"


@dataclass(frozen=True)
class FineTunedName:
    job_id: str
    step: int | None  # a checkpoint's step, or None for the finished adapter


def parse(name: str) -> FineTunedName | None:
    """The job (and step) a fine-tuned name points at; None for any other string."""
    if not name.startswith(PREFIX):
        return None
    parts = name.split(":")
    step = None
    if parts[-1].startswith(CHECKPOINT):
        digits = parts.pop()[len(CHECKPOINT) :]
        if not digits.isdigit():
            return None
        step = int(digits)
    if len(parts) != 5:
        return None
    job_id = from_openai("ftjob", parts[4])
    return FineTunedName(job_id, step) if job_id else None


def tenant_name(session: Session, tenant_id: str) -> str:
    tenant = session.get(Tenant, tenant_id)
    return tenant.name if tenant is not None else tenant_id


def resolve(session: Session, tenant_id: str, name: str) -> Adapter | Checkpoint | None:
    """The tenant's adapter or checkpoint that ``name`` names; None when it names none."""
    parsed = parse(name)
    job = job_rows.get_job(session, tenant_id, parsed.job_id) if parsed else None
    if parsed is None or job is None:
        return None
    owner = tenant_name(session, tenant_id)
    if parsed.step is not None:
        if name != checkpoint_model(job, owner, parsed.step):
            return None
        return checkpoint_rows.checkpoint_at(session, job.id, parsed.step)
    if name != fine_tuned_model(job, owner) or job.adapter_id is None:
        return None
    return adapter_rows.get_adapter(session, tenant_id, job.adapter_id)


@dataclass(frozen=True)
class NamedModel:
    name: str
    created_at: datetime
    base_model: str
    task: str


def named_models(session: Session, tenant_id: str) -> list[NamedModel]:
    """Every fine-tuned name the tenant can serve: finished jobs, then checkpoints."""
    owner = tenant_name(session, tenant_id)
    jobs = session.scalars(
        select(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.status == JobStatus.SUCCEEDED.value,
            Job.adapter_id.is_not(None),
        )
        .order_by(Job.id)
    ).all()
    found = [
        NamedModel(fine_tuned_model(j, owner), j.created_at, j.base_model, j.task) for j in jobs
    ]
    rows = session.execute(
        select(Checkpoint, Job)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.tenant_id == tenant_id)
        .order_by(Checkpoint.job_id, Checkpoint.step)
    ).all()
    found += [
        NamedModel(checkpoint_model(job, owner, c.step), c.created_at, c.base_model, c.task)
        for c, job in rows
    ]
    return found


def source_name(session: Session, job: Job) -> str | None:
    """The fine-tuned name of what a continued job started from (OpenAI shows it as the job's
    ``model``); None for a job that started from its base."""
    source = (job.hyperparameters or {}).get("init_from") or {}
    row: Adapter | Checkpoint | None = None
    if source.get("adapter_id"):
        row = adapter_rows.get_adapter(session, job.tenant_id, source["adapter_id"])
    elif source.get("checkpoint_id"):
        row = checkpoint_rows.get_checkpoint(session, job.tenant_id, source["checkpoint_id"])
    origin = job_rows.get_job(session, job.tenant_id, row.job_id) if row and row.job_id else None
    if row is None or origin is None:
        return None
    owner = tenant_name(session, job.tenant_id)
    if isinstance(row, Checkpoint):
        return checkpoint_model(origin, owner, row.step)
    return fine_tuned_model(origin, owner)
