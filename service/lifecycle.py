"""The job lifecycle: the one table of allowed status moves, and the two ways to make one.

Every status change of a job row goes through this module.

- :func:`transition` moves a row the caller already holds (it has the lease, or locked the row)
  and checks the move against ``ALLOWED``.
- :func:`guarded_transition` is a conditional UPDATE for moves that race with other actors
  (cancel against a worker, two workers taking one job): ``WHERE status IN (...)`` plus any
  extra condition, so exactly one actor wins. It checks the same table; the one move outside
  it, a worker taking over a ``running`` job whose lease expired, is spelled ``TAKEOVER``.

Both record a ``status`` event with the move, stamp started/finished times, and clear the
lease when the job leaves the worker's hands.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, object_session

from adalora_core.state_machine import IllegalTransition, check_transition
from service.tables import Job, JobEvent, utcnow
from service.vocabulary import ACTIVE, TERMINAL, EventKind, JobStatus

__all__ = [
    "ACTIVE",
    "ALLOWED",
    "TAKEOVER",
    "TERMINAL",
    "JobStatus",
    "guarded_transition",
    "transition",
]


ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.UPLOADING, JobStatus.FAILED, JobStatus.CANCELLING, JobStatus.QUEUED}
    ),
    JobStatus.UPLOADING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# A new worker takes a running job whose holder stopped renewing its lease: running -> running
# under a new owner. Only guarded_transition makes it, and only with the expiry in its WHERE.
TAKEOVER = (JobStatus.RUNNING, JobStatus.RUNNING)


def can_transition(current: str, new: str) -> bool:
    return JobStatus(new) in ALLOWED[JobStatus(current)]


def transition(job: Job, new_status: JobStatus | str, **event_data: Any) -> JobEvent:
    """Move ``job`` to ``new_status`` (raising on an illegal move) and record a status event.

    Sets started_at on the first ``running``, finished_at on a terminal state, and clears the
    lease when the job leaves ``running``/``uploading``. The caller commits.
    """
    new = JobStatus(new_status)
    current = JobStatus(job.status)
    check_transition("job", ALLOWED, current, new)
    now = utcnow()
    job.status = new.value
    job.updated_at = now
    if new is JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if new in TERMINAL:
        job.finished_at = now
    if new in TERMINAL or new is JobStatus.QUEUED:
        job.lease_owner = None
        job.lease_expires_at = None
    session = object_session(job)
    if session is None:
        raise RuntimeError("transition() needs a job attached to a session")
    return _record(session, job.id, job.tenant_id, current, new, event_data, now)


def guarded_transition(
    session: Session,
    job_id: str,
    new_status: JobStatus | str,
    *,
    expected: Iterable[JobStatus | str],
    where: Iterable[ColumnElement[bool]] = (),
    values: dict[str, Any] | None = None,
    event_data: dict[str, Any] | None = None,
) -> Job | None:
    """Move the job to ``new_status`` only if its status is one of ``expected`` and every
    ``where`` holds, in one UPDATE; None when another actor changed it first. Flushes and
    returns the fresh row; the caller commits."""
    new = JobStatus(new_status)
    froms = [JobStatus(s) for s in expected]
    for current in froms:
        if new not in ALLOWED[current] and (current, new) != TAKEOVER:
            raise IllegalTransition("job", current, new)
    now = utcnow()
    columns: dict[str, Any] = {"status": new.value, "updated_at": now, **(values or {})}
    if new in TERMINAL or new is JobStatus.QUEUED:
        columns.setdefault("lease_owner", None)
        columns.setdefault("lease_expires_at", None)
    if new in TERMINAL:
        columns.setdefault("finished_at", now)
    previous: JobStatus | str | None = froms[0]
    if len(froms) > 1:  # the event names the status the row really had
        previous = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in froms]), *where)
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    if new is JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    _record(session, job.id, job.tenant_id, previous, new, event_data or {}, now)
    session.flush()
    return job


def _record(
    session: Session,
    job_id: str,
    tenant_id: str,
    current: JobStatus | str | None,
    new: JobStatus,
    data: dict[str, Any],
    now: Any,
) -> JobEvent:
    event = JobEvent(
        job_id=job_id,
        tenant_id=tenant_id,
        kind=EventKind.STATUS.value,
        data={"from": None if current is None else str(current), "to": new.value, **data},
        created_at=now,
    )
    session.add(event)
    return event
