"""Job rows and events: submission, listing and cancellation (the worker's side is in leases).

Every function takes a Session and leaves committing to the caller unless it says otherwise.
Concurrent state changes go through conditional UPDATEs (``WHERE status = ...``), so two actors
can never both win the same transition.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adalora_core.state_machine import IllegalTransition
from service.ids import new_id
from service.lifecycle import JobStatus, guarded_transition
from service.pagination import Page, paginate
from service.tables import Job, JobEvent, utcnow
from service.vocabulary import EventKind


def create_job(
    session: Session,
    *,
    tenant_id: str,
    base_model: str,
    task: str,
    dataset_id: str,
    validation_dataset_id: str | None,
    request: dict[str, Any],
    hyperparameters: dict[str, Any],
    request_hash: str,
    idempotency_key: str | None = None,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
) -> Job:
    """Insert a queued job and its first status event (flushes: an idempotency clash raises
    IntegrityError here)."""
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=name,
        status=JobStatus.QUEUED.value,
        base_model=base_model,
        task=task,
        dataset_id=dataset_id,
        validation_dataset_id=validation_dataset_id,
        request=request,
        hyperparameters=hyperparameters,
        progress={"step": 0, "total_steps": hyperparameters.get("total_steps"), "epoch": 0.0},
        metrics={},
        budget=budget or {},
        error=None,
        metadata_=metadata or {},
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        cancel_requested=False,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    session.add(
        JobEvent(
            job_id=job.id,
            tenant_id=tenant_id,
            kind="status",
            data={"from": None, "to": JobStatus.QUEUED.value},
            created_at=now,
        )
    )
    session.flush()
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The tenant's job; another tenant's id reads as absent."""
    job = session.get(Job, job_id)
    return job if job is not None and job.tenant_id == tenant_id else None


def get_job_by_id(session: Session, job_id: str) -> Job | None:
    """Any tenant's job (for the worker, which acts on ids from the queue)."""
    return session.get(Job, job_id)


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    return session.scalars(stmt).first()


def list_jobs(
    session: Session,
    tenant_id: str,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Job]:
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return paginate(session, stmt, Job.id, limit, cursor)


def add_event(session: Session, job: Job, kind: str, data: dict[str, Any]) -> JobEvent:
    if kind not in set(EventKind):
        raise ValueError(f"unknown event kind {kind!r}; expected one of {sorted(EventKind)}")
    event = JobEvent(job_id=job.id, tenant_id=job.tenant_id, kind=kind, data=data)
    event.created_at = utcnow()
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session, job: Job, after: int | None = None, limit: int = 100
) -> list[JobEvent]:
    """Events of one job in order, strictly after the ``after`` event id."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    stmt = stmt.order_by(JobEvent.id).limit(max(1, min(limit, 1000)))
    return list(session.scalars(stmt))


def events_of_kinds(session: Session, job: Job, kinds: tuple[str, ...]) -> list[JobEvent]:
    """Every event of the given kinds of one job, in order (a run has a few thousand at most)."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind.in_(kinds))
    return list(session.scalars(stmt.order_by(JobEvent.id)))


def request_cancel(session: Session, job: Job) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops within a step).

    Idempotent for a job already cancelling; raises IllegalTransition for a finished or
    uploading job.
    """
    for _ in range(3):
        for current, new in (
            (JobStatus.QUEUED, JobStatus.CANCELLED),
            (JobStatus.RUNNING, JobStatus.CANCELLING),
        ):
            moved = guarded_transition(
                session, job.id, new, expected=[current], values={"cancel_requested": True}
            )
            if moved is not None:
                return moved
        session.refresh(job)
        if job.status == JobStatus.CANCELLING.value:
            return job
        if job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            raise IllegalTransition("job", job.status, JobStatus.CANCELLING)
    raise IllegalTransition("job", job.status, JobStatus.CANCELLING)


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(count) for status, count in rows})
    return counts
