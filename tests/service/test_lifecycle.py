"""The job state machine: one table of allowed moves, each recorded as a status event."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from adalora_core.state_machine import IllegalTransition
from service import jobs, tenants
from service.lifecycle import ALLOWED, TERMINAL, JobStatus, transition
from service.tables import Job

EXPECTED = {
    ("queued", "running"),
    ("queued", "cancelling"),
    ("queued", "cancelled"),
    ("running", "uploading"),
    ("running", "failed"),
    ("running", "cancelling"),
    ("running", "queued"),
    ("uploading", "succeeded"),
    ("uploading", "failed"),
    ("cancelling", "cancelled"),
}


def test_table_is_exactly_the_contract() -> None:
    allowed = {(a.value, b.value) for a, targets in ALLOWED.items() for b in targets}
    assert allowed == EXPECTED
    assert all(not ALLOWED[s] for s in TERMINAL)


def new_job(session: Session) -> Job:
    tenant = tenants.create_tenant(session, "t")
    job = jobs.create_job(
        session,
        tenant_id=tenant.id,
        base_model="m",
        task="classification",
        dataset_id=None,  # type: ignore[arg-type]
        validation_dataset_id=None,
        request={},
        hyperparameters={"total_steps": 3},
        request_hash="h",
    )
    session.commit()
    return job


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_transition_enforces_table(db_session: Session, current: JobStatus, new: JobStatus) -> None:
    job = new_job(db_session)
    job.status = current.value
    if (current.value, new.value) in EXPECTED:
        event = transition(job, new, reason="test")
        db_session.commit()
        assert job.status == new.value
        assert event.kind == "status"
        assert event.data == {"from": current.value, "to": new.value, "reason": "test"}
        assert (job.finished_at is not None) == (new in TERMINAL)
    else:
        with pytest.raises(IllegalTransition):
            transition(job, new)
        assert job.status == current.value


def test_running_sets_started_once_and_requeue_clears_lease(db_session: Session) -> None:
    job = new_job(db_session)
    transition(job, "running")
    first = job.started_at
    job.lease_owner = "w1"
    transition(job, "queued")
    assert job.lease_owner is None and job.lease_expires_at is None
    transition(job, "running")
    assert job.started_at == first
    db_session.commit()
    kinds = [(e.data["from"], e.data["to"]) for e in jobs.list_events(db_session, job)]
    assert kinds == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
    ]


def test_detached_job_cannot_transition() -> None:
    with pytest.raises(RuntimeError, match="session"):
        transition(Job(id="job_x", tenant_id="t", status="queued"), "running")
