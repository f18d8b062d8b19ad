"""Job states and the one table of allowed moves between them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import object_session

from registry.models import Job, JobEvent, utcnow
from registry.vocabulary import ACTIVE, TERMINAL, JobStatus

__all__ = ["ACTIVE", "ALLOWED", "TERMINAL", "IllegalTransition", "JobStatus", "transition"]


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


class IllegalTransition(ValueError):
    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"job cannot move from {current!r} to {new!r}")
        self.current = current
        self.new = new


def can_transition(current: str, new: str) -> bool:
    return JobStatus(new) in ALLOWED[JobStatus(current)]


def transition(job: Job, new_status: JobStatus | str, **event_data: Any) -> JobEvent:
    """Move ``job`` to ``new_status`` (raising on an illegal move) and record a status event.

    Sets started_at on the first ``running``, finished_at on a terminal state, and clears the
    lease when the job leaves ``running``/``uploading``. The caller commits.
    """
    new = JobStatus(new_status)
    current = JobStatus(job.status)
    if new not in ALLOWED[current]:
        raise IllegalTransition(current, new)
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
    event = JobEvent(
        job_id=job.id,
        tenant_id=job.tenant_id,
        kind="status",
        data={"from": current.value, "to": new.value, **event_data},
        created_at=now,
    )
    session = object_session(job)
    if session is None:
        raise RuntimeError("transition() needs a job attached to a session")
    session.add(event)
    return event
