"""The Celery task the API sends by name; the work itself is in :mod:`worker.runner`."""

from __future__ import annotations

from service.vocabulary import TRAIN_TASK
from worker.celery_app import app
from worker.runner import run_job


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_job(job_id: str) -> str:
    return run_job(job_id).status
