"""Job queries: conditional state changes hold under races; worker helpers keep the row true."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry import jobs, tenants
from registry.models import Job, utcnow
from registry.states import IllegalTransition, transition


def make_job(session: Session, tenant_id: str | None = None) -> Job:
    if tenant_id is None:
        tenant_id = tenants.create_tenant(session, "t").id
    job = jobs.create_job(
        session,
        tenant_id=tenant_id,
        base_model="m",
        task="classification",
        dataset_id=None,  # type: ignore[arg-type]
        validation_dataset_id=None,
        request={},
        hyperparameters={"total_steps": 9},
        request_hash="h",
    )
    session.commit()
    return job


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_only_one_claim_wins(sessions: sessionmaker[Session]) -> None:
    with sessions() as first, sessions() as second:
        job = make_job(first)
        same = second.get(Job, job.id)
        assert same is not None
        assert jobs.claim_job(first, job, "w1", 60)
        first.commit()
        assert not jobs.claim_job(second, same, "w2", 60)
        second.commit()
        second.refresh(same)
        assert (same.status, same.lease_owner, same.attempts) == ("running", "w1", 1)
        assert not jobs.renew_lease(second, same, "w2", 60)
        assert jobs.renew_lease(second, same, "w1", 60)


def test_cancel_queued_running_and_finished(db_session: Session) -> None:
    queued = make_job(db_session)
    jobs.request_cancel(db_session, queued)
    assert (queued.status, queued.cancel_requested) == ("cancelled", True)
    assert queued.finished_at is not None

    running = make_job(db_session, queued.tenant_id)
    assert jobs.claim_job(db_session, running, "w", 60)
    jobs.request_cancel(db_session, running)
    assert running.status == "cancelling"
    jobs.request_cancel(db_session, running)  # idempotent while cancelling
    assert running.status == "cancelling"
    with pytest.raises(IllegalTransition):
        jobs.request_cancel(db_session, queued)


def test_progress_events_and_paging(db_session: Session) -> None:
    job = make_job(db_session)
    for step in range(1, 6):
        jobs.record_progress(db_session, job, step=step, epoch=step / 5, budget_current=20 - step)
    db_session.commit()
    assert job.progress == {"step": 5, "total_steps": 9, "epoch": 1.0}
    assert job.budget == {"current": 15}
    events = jobs.list_events(db_session, job)
    assert [e.kind for e in events] == ["status"] + ["progress"] * 5
    after = jobs.list_events(db_session, job, after=events[2].id, limit=2)
    assert [e.data["step"] for e in after] == [3, 4]
    with pytest.raises(ValueError, match="unknown event kind"):
        jobs.add_event(db_session, job, "gossip", {})


def test_reconciler_queries(db_session: Session) -> None:
    job = make_job(db_session)
    assert jobs.claim_job(db_session, job, "w", lease_seconds=-1)
    stale = make_job(db_session, job.tenant_id)
    db_session.commit()
    assert [j.id for j in jobs.expired_leases(db_session)] == [job.id]
    later = utcnow() + timedelta(seconds=1)
    assert [j.id for j in jobs.queued_before(db_session, later)] == [stale.id]
    transition(job, "failed")
    db_session.commit()
    counts = jobs.count_by_status(db_session)
    assert counts["failed"] == 1 and counts["queued"] == 1 and counts["running"] == 0


def test_list_jobs_pages_newest_first(db_session: Session) -> None:
    first = make_job(db_session)
    ids = [first.id] + [make_job(db_session, first.tenant_id).id for _ in range(4)]
    page = jobs.list_jobs(db_session, first.tenant_id, limit=2)
    seen = [j.id for j in page.items]
    while page.next_cursor:
        page = jobs.list_jobs(db_session, first.tenant_id, limit=2, cursor=page.next_cursor)
        seen += [j.id for j in page.items]
    assert seen == sorted(ids, reverse=True)
    assert len(set(seen)) == 5
    assert jobs.list_jobs(db_session, first.tenant_id, status="running").items == []
