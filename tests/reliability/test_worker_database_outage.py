"""Fault 4, worker side: the database is cut for a few seconds while a job trains. The worker
keeps training, keeps its progress in memory, writes it once the database is back, and
finishes the same run (one attempt, no re-delivery needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from service.store import LocalStore
from service.tables import Job, JobEvent
from tests.reliability.jobs import queued_job
from tests.reliability.proxied_db import ProxiedDatabase
from tests.worker.service_fixtures import save_tiny_bert
from worker.callbacks import JobCallbacks
from worker.runner import run_job

STEPS = 300
OUTAGE_STEPS = 40  # the database stays cut while the trainer makes this many steps


def _step(db: ProxiedDatabase, job_id: str) -> int:
    with db.sessions() as session:
        job = session.get(Job, job_id)
        return int((job.progress or {}).get("step", 0)) if job else 0


def test_worker_survives_a_database_outage_mid_training(
    proxied_db: ProxiedDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    trained = {"step": 0}  # the trainer's own step, seen without the database
    on_progress = JobCallbacks.on_progress

    def spy(self: JobCallbacks, event: Any) -> None:
        trained["step"] = int(event.step)
        on_progress(self, event)

    monkeypatch.setattr(JobCallbacks, "on_progress", spy)
    settings = Settings(
        home=tmp_path / "home",
        database_url=proxied_db.proxied_url,
        base_models={"tiny": str(save_tiny_bert(tmp_path / "tiny"))},
        progress_write_interval_s=0.0,
        heartbeat_interval_s=0.2,
        lease_seconds=30.0,  # longer than the outage: the lease survives it
    )
    store = LocalStore(settings.store_dir)
    job_id = queued_job(proxied_db.sessions, store, tmp_path, settings, max_steps=STEPS)
    engine = make_engine(settings.database_url)
    outcome: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=run_job(job_id, settings, make_sessionmaker(engine), store)
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while _step(proxied_db, job_id) < 3:
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.05)
        proxied_db.proxy.cut()
        cut_at = trained["step"]
        while trained["step"] < cut_at + OUTAGE_STEPS:
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.01)
        written_during_outage = _step(proxied_db, job_id)
        proxied_db.proxy.restore()
        worker.join(timeout=180)
    finally:
        proxied_db.proxy.restore()
        worker.join(timeout=180)
        engine.dispose()
    assert not worker.is_alive()
    assert outcome["result"].status == "succeeded", outcome
    with proxied_db.sessions() as session:
        job = session.get(Job, job_id)
        assert job.status == "succeeded" and job.attempts == 1 and job.adapter_id
        assert job.progress["step"] == STEPS
        steps = [
            e.data["step"]
            for e in session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "progress")
                .order_by(JobEvent.id)
            )
        ]
    # Training went on during the outage, and the steps it made then were written afterwards.
    assert written_during_outage <= cut_at + 1 < STEPS
    assert steps == sorted(steps) and steps[-1] == STEPS
    assert set(range(1, STEPS + 1)) == set(steps), sorted(set(range(1, STEPS + 1)) - set(steps))
