"""The lease that keeps one job on one worker at a time, and the queries that find lost ones.

Every write that only the lease holder may make is guarded by ``lease_owner = <me>`` in the
UPDATE itself, so a worker that lost its lease (the reconciler re-queued the job) cannot
overwrite the row of whoever holds it now.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.lifecycle import JobStatus, guarded_transition
from service.tables import Job, JobEvent, utcnow

# Statuses in which the lease holder is doing work and keeps renewing its lease.
LEASED_STATUSES = (JobStatus.RUNNING.value, JobStatus.UPLOADING.value, JobStatus.CANCELLING.value)


def worker_identity() -> str:
    """Unique per process, readable in the job row: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_job(session: Session, job_id: str, owner: str, lease_seconds: float) -> Job | None:
    """Take the job if it is queued or its previous holder's lease ran out; else ``None``.

    One conditional UPDATE decides it, so two workers racing for the same job cannot both win.
    """
    now = utcnow()
    attempts = session.execute(select(Job.attempts).where(Job.id == job_id)).scalar_one_or_none()
    if attempts is None:
        return None
    job = guarded_transition(
        session,
        job_id,
        JobStatus.RUNNING,
        expected=(JobStatus.QUEUED, JobStatus.RUNNING),
        where=[or_(Job.status == JobStatus.QUEUED.value, Job.lease_expires_at < now)],
        values={
            "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "heartbeat_at": now,
            "attempts": Job.attempts + 1,
        },
        event_data={"attempt": attempts + 1, "worker": owner},
    )
    if job is None:
        session.rollback()
        return None
    session.commit()
    return job


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend our lease; ``False`` means we no longer hold it and must stop working."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(LEASED_STATUSES))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel_requested(session: Session, job_id: str) -> bool:
    value = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()
    session.rollback()  # end the read transaction so the next poll sees fresh data
    return bool(value)


def write_progress(
    session: Session,
    job_id: str,
    owner: str,
    values: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]],
    also: Callable[[Session, Job], None] | None = None,
) -> bool:
    """Update progress/metrics/budget columns and append events, if we still hold the lease;
    ``also`` writes more of the run's record (its checkpoint rows) in the same transaction."""
    job = session.execute(
        select(Job).where(Job.id == job_id, Job.lease_owner == owner)
    ).scalar_one_or_none()
    if job is None:
        session.rollback()
        return False
    now = utcnow()
    for name, value in values.items():
        setattr(job, name, value)
    job.updated_at = now
    for kind, data in events:
        session.add(
            JobEvent(job_id=job.id, tenant_id=job.tenant_id, kind=kind, data=data, created_at=now)
        )
    if also is not None:
        also(session, job)
    session.commit()
    return True


def load_owned_job(session: Session, job_id: str, owner: str) -> Job | None:
    """The job row, fresh from the database, if we still hold its lease."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.lease_owner != owner:
        return None
    return job


# --- the reconciler's queries ------------------------------------------------------------


def lost_lease_ids(session: Session, now: datetime) -> list[str]:
    """Jobs a worker holds (or held) whose lease is gone: the worker died or hung."""
    stmt = select(Job.id).where(
        Job.status.in_(LEASED_STATUSES),
        (Job.lease_expires_at.is_(None)) | (Job.lease_expires_at < now),
    )
    return list(session.scalars(stmt.order_by(Job.id)))


def stale_queued_ids(session: Session, before: datetime) -> list[str]:
    """Queued jobs nobody holds that have not changed since ``before``: their message may be
    lost, so the reconciler sends it again."""
    stmt = select(Job.id).where(
        Job.status == JobStatus.QUEUED.value,
        Job.lease_owner.is_(None),
        Job.updated_at < before,
    )
    return list(session.scalars(stmt.order_by(Job.id)))
