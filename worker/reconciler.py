"""Repairs jobs whose worker or queue message was lost; the job row decides what happens next.

- ``running``/``cancelling``/``uploading`` with an expired lease: the worker died.
  running → queued and sent again (or failed after ``max_attempts``); cancelling → cancelled;
  uploading → failed (artifacts may be half written; the job is not retried).
- ``queued`` for longer than ``queued_resend_s`` since its last change and never leased since:
  the message may be gone (broker restart, SQLite broker lost an unacked message with a killed
  worker), so the task is sent again. A duplicate message is harmless: the lease lets only one
  delivery run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.leases import lost_lease_ids, stale_queued_ids
from service.lifecycle import JobStatus, transition
from service.settings import Settings
from service.tables import Job, utcnow

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.resent or self.cancelled or self.failed)


def queued_resend_after(settings: Settings) -> float:
    """A queued job waits behind others on a busy worker; only resend once it is clearly stale."""
    return max(10 * settings.reconcile_interval_s, 4 * settings.lease_seconds)


def reconcile_once(session: Session, settings: Settings, enqueue: Enqueue) -> ReconcileReport:
    """One pass over the active jobs; commits each repair on its own."""
    report = ReconcileReport()
    now = utcnow()
    for job_id in lost_lease_ids(session, now):
        _repair_lost_worker(session, job_id, settings, enqueue, report)

    resend_before = now - timedelta(seconds=queued_resend_after(settings))
    for job_id in stale_queued_ids(session, resend_before):
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.status != JobStatus.QUEUED.value:
            continue
        job.updated_at = utcnow()  # restarts the clock, so one resend per interval
        session.commit()
        enqueue(job_id)
        report.resent.append(job_id)
    session.rollback()
    return report


def _repair_lost_worker(
    session: Session, job_id: str, settings: Settings, enqueue: Enqueue, report: ReconcileReport
) -> None:
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    now = utcnow()
    if job is None or (job.lease_expires_at is not None and job.lease_expires_at >= now):
        session.rollback()
        return
    lost = {"reason": "worker_lost", "worker": job.lease_owner}
    status = JobStatus(job.status)
    if status is JobStatus.CANCELLING:
        transition(job, JobStatus.CANCELLED, **lost)
        report.cancelled.append(job_id)
    elif status is JobStatus.UPLOADING or job.attempts >= settings.max_attempts:
        job.error = {
            "code": "worker_lost",
            "message": f"the worker running this job stopped responding (attempt {job.attempts})",
        }
        transition(job, JobStatus.FAILED, **lost)
        report.failed.append(job_id)
    elif job.cancel_requested:
        transition(job, JobStatus.CANCELLING, **lost)
        transition(job, JobStatus.CANCELLED, **lost)
        report.cancelled.append(job_id)
    else:
        transition(job, JobStatus.QUEUED, **lost)
        report.requeued.append(job_id)
    session.commit()
    if job_id in report.requeued:
        enqueue(job_id)
    log.warning("reconciled job %s (%s): %s", job_id, status.value, lost)


class ReconcilerThread(threading.Thread):
    """Runs :func:`reconcile_once` at start-up and then every ``reconcile_interval_s``."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, enqueue: Enqueue
    ) -> None:
        super().__init__(name="adalora-reconciler", daemon=True)
        self._sessions = sessions
        self._settings = settings
        self._enqueue = enqueue
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._sessions() as session:
                    report = reconcile_once(session, self._settings, self._enqueue)
                if report:
                    log.info("reconciler: %s", report)
            except Exception:  # a database hiccup must not end the thread
                log.exception("reconciler pass failed")
            self._stop.wait(self._settings.reconcile_interval_s)

    def stop(self) -> None:
        self._stop.set()
