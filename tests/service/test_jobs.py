"""Job queries: conditional state changes hold under races; worker helpers keep the row true."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.state_machine import IllegalTransition
from service import jobs, leases, tenants
from service.lifecycle import guarded_transition, transition
from service.tables import Job, utcnow


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
def test_only_one_lease_wins(sessions: sessionmaker[Session]) -> None:
    with sessions() as first, sessions() as second:
        job = make_job(first)
        assert leases.lease_job(first, job.id, "w1", 60) is not None
        assert leases.lease_job(second, job.id, "w2", 60) is None
        same = second.get(Job, job.id, populate_existing=True)
        assert same is not None
        assert (same.status, same.lease_owner, same.attempts) == ("running", "w1", 1)
        assert not leases.renew_lease(second, job.id, "w2", 60)
        assert leases.renew_lease(second, job.id, "w1", 60)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_an_expired_lease_is_taken_over_by_the_next_worker(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        job = make_job(session)
        assert leases.lease_job(session, job.id, "w1", -1) is not None  # expired at once
        taken = leases.lease_job(session, job.id, "w2", 60)
        assert taken is not None and (taken.lease_owner, taken.attempts) == ("w2", 2)
        moves = [e.data for e in jobs.list_events(session, taken) if e.kind == "status"]
        assert moves[-1] == {"from": "running", "to": "running", "attempt": 2, "worker": "w2"}
        assert leases.lease_job(session, job.id, "w3", 60) is None  # w2's lease is live
        assert not leases.write_progress(session, job.id, "w1", {"progress": {"step": 9}}, [])


def test_guarded_moves_obey_the_table(db_session: Session) -> None:
    job = make_job(db_session)
    with pytest.raises(IllegalTransition):
        guarded_transition(db_session, job.id, "running", expected=["succeeded"])
    with pytest.raises(IllegalTransition):  # takeover is running -> running only
        guarded_transition(db_session, job.id, "queued", expected=["queued"])
    assert guarded_transition(db_session, job.id, "uploading", expected=["running"]) is None
    assert job.status == "queued"


def test_cancel_queued_running_and_finished(db_session: Session) -> None:
    queued = make_job(db_session)
    jobs.request_cancel(db_session, queued)
    db_session.refresh(queued)
    assert (queued.status, queued.cancel_requested) == ("cancelled", True)
    assert queued.finished_at is not None

    running = make_job(db_session, queued.tenant_id)
    assert leases.lease_job(db_session, running.id, "w", 60) is not None
    jobs.request_cancel(db_session, running)
    assert running.status == "cancelling"
    assert leases.cancel_requested(db_session, running.id)
    jobs.request_cancel(db_session, running)  # idempotent while cancelling
    assert running.status == "cancelling"
    with pytest.raises(IllegalTransition):
        jobs.request_cancel(db_session, queued)


def test_progress_events_and_paging(db_session: Session) -> None:
    job = make_job(db_session)
    assert leases.lease_job(db_session, job.id, "w", 60) is not None
    for step in range(1, 6):
        values = {"progress": {"step": step, "total_steps": 9}, "budget": {"current": 20 - step}}
        events = [("progress", {"step": step})]
        assert leases.write_progress(db_session, job.id, "w", values, events)
    db_session.refresh(job)
    assert job.progress == {"step": 5, "total_steps": 9}
    assert job.budget == {"current": 15}
    events = jobs.list_events(db_session, job)
    assert [e.kind for e in events] == ["status", "status"] + ["progress"] * 5
    after = jobs.list_events(db_session, job, after=events[3].id, limit=2)
    assert [e.data["step"] for e in after] == [3, 4]
    with pytest.raises(ValueError, match="unknown event kind"):
        jobs.add_event(db_session, job, "gossip", {})


def test_reconciler_queries(db_session: Session) -> None:
    job = make_job(db_session)
    assert leases.lease_job(db_session, job.id, "w", lease_seconds=-1) is not None
    stale = make_job(db_session, job.tenant_id)
    db_session.commit()
    now = utcnow()
    assert leases.lost_lease_ids(db_session, now) == [job.id]
    later = now + timedelta(seconds=1)
    assert leases.stale_queued_ids(db_session, later) == [stale.id]
    assert leases.stale_queued_ids(db_session, now - timedelta(seconds=60)) == []
    transition(job, "failed")
    db_session.commit()
    assert leases.lost_lease_ids(db_session, utcnow()) == []
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


@pytest.mark.parametrize("db_backend", ["postgres", "sqlite"])
def test_many_workers_racing_for_one_job_through_the_worker_code_one_wins(
    sessions: sessionmaker[Session],
) -> None:
    """The queue may deliver one job to several workers at once; each runs lease_job with its
    own connection, and exactly one ends up running it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with sessions() as session:
        job_id = make_job(session).id
    start = threading.Barrier(8)

    def claim(worker: int) -> bool:
        with sessions() as session:
            start.wait()
            return leases.lease_job(session, job_id, f"w{worker}", 60) is not None

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, range(8)))
    assert won.count(True) == 1
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.attempts == 1
        assert job.lease_owner == f"w{won.index(True)}"
        moves = [e for e in jobs.list_events(session, job) if e.kind == "status"]
        assert [(e.data["from"], e.data["to"]) for e in moves] == [
            (None, "queued"),
            ("queued", "running"),
        ]
