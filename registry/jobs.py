"""Job rows and events: submission, listing, cancellation, and the worker's lease/progress writes.

Every function takes a Session and leaves committing to the caller unless it says otherwise.
Concurrent state changes go through conditional UPDATEs (``WHERE status = ...``), so two actors
can never both win the same transition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry.ids import new_id
from registry.models import Job, JobEvent, utcnow
from registry.pagination import Page, paginate
from registry.states import ALLOWED, TERMINAL, IllegalTransition, JobStatus
from registry.vocabulary import EventKind


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


def _conditional_status(
    session: Session, job: Job, expected: JobStatus, new: JobStatus, **values: Any
) -> bool:
    """Move ``job`` from ``expected`` to ``new`` only if nobody moved it first."""
    if new not in ALLOWED[expected]:
        raise IllegalTransition(expected, new)
    now = utcnow()
    if new in TERMINAL:
        values.setdefault("finished_at", now)
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == expected.value)
        .values(status=new.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.add(
        JobEvent(
            job_id=job.id,
            tenant_id=job.tenant_id,
            kind="status",
            data={"from": expected.value, "to": new.value},
            created_at=now,
        )
    )
    session.flush()
    session.refresh(job)
    return True


def request_cancel(session: Session, job: Job) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops within a step).

    Idempotent for a job already cancelling; raises IllegalTransition for a finished or
    uploading job.
    """
    for _ in range(3):
        if _conditional_status(
            session, job, JobStatus.QUEUED, JobStatus.CANCELLED, cancel_requested=True
        ):
            return job
        if _conditional_status(
            session, job, JobStatus.RUNNING, JobStatus.CANCELLING, cancel_requested=True
        ):
            return job
        session.refresh(job)
        if job.status == JobStatus.CANCELLING.value:
            return job
        if job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            raise IllegalTransition(job.status, JobStatus.CANCELLING.value)
    raise IllegalTransition(job.status, JobStatus.CANCELLING.value)


# --- worker side -------------------------------------------------------------------------


def claim_job(session: Session, job: Job, owner: str, lease_seconds: float) -> bool:
    """queued -> running with a lease for ``owner``; False if another worker got it first."""
    now = utcnow()
    return _conditional_status(
        session,
        job,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        heartbeat_at=now,
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, now),
    )


def renew_lease(session: Session, job: Job, owner: str, lease_seconds: float) -> bool:
    """Extend the lease if ``owner`` still holds it; False means the job was taken away."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.lease_owner == owner)
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.flush()
    session.refresh(job)
    return result.rowcount == 1


def record_progress(
    session: Session,
    job: Job,
    *,
    step: int,
    total_steps: int | None = None,
    epoch: float | None = None,
    budget_current: int | None = None,
    metrics: dict[str, Any] | None = None,
    event: bool = True,
) -> None:
    """Write the progress/budget/metrics snapshot and (optionally) a progress event."""
    progress = {
        "step": step,
        "total_steps": total_steps if total_steps is not None else job.progress.get("total_steps"),
        "epoch": epoch if epoch is not None else job.progress.get("epoch"),
    }
    job.progress = progress
    if budget_current is not None:
        job.budget = {**job.budget, "current": budget_current}
    if metrics:
        job.metrics = {**job.metrics, **metrics}
    job.updated_at = utcnow()
    if event:
        data: dict[str, Any] = dict(progress)
        if budget_current is not None:
            data["budget"] = budget_current
        add_event(session, job, "progress", data)
    session.flush()


def expired_leases(session: Session, now: datetime | None = None) -> list[Job]:
    """Jobs whose worker stopped heartbeating (for the reconciler)."""
    now = now or utcnow()
    owned = [JobStatus.RUNNING.value, JobStatus.UPLOADING.value, JobStatus.CANCELLING.value]
    stmt = select(Job).where(Job.status.in_(owned), Job.lease_expires_at < now).order_by(Job.id)
    return list(session.scalars(stmt))


def queued_before(session: Session, before: datetime) -> list[Job]:
    """Jobs still queued that were last touched before ``before`` (to re-enqueue)."""
    stmt = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.updated_at < before)
        .order_by(Job.id)
    )
    return list(session.scalars(stmt))


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(count) for status, count in rows})
    return counts
