"""Submitting a training job: checked and resolved up front, stored once per Idempotency-Key,
then sent to the workers by name (the queue never carries settings, only the job's id)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from application.adapter_import import name_taken
from application.continuation import check_labels, resolve_init_from
from application.idempotency import create_once, same_request
from application.job_request import JobCreate
from application.submission import invalid, request_hash, resolve_hyperparameters
from service import adapters as adapter_rows
from service import datasets as dataset_rows
from service import jobs as job_rows
from service.queue import TaskProducer
from service.settings import Settings
from service.tables import Dataset, Job
from service.vocabulary import EventKind

log = logging.getLogger("adalora.jobs")

BODY = "request body"


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: the job an earlier identical request with the same key created


def submit_job(
    session: Session,
    settings: Settings,
    tenant_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    enqueue: Callable[[str], None],
) -> Submission:
    """Validate and resolve ``body``, store the queued job with its warnings, and hand its id
    to ``enqueue`` (the caller decides when it is sent: the API sends after answering). A key
    seen before answers with its job, without enqueueing it again."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = job_rows.find_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return Submission(same_request(existing, digest, BODY), created=False)

    if body.name is not None and adapter_rows.find_by_name(session, tenant_id, body.name):
        raise name_taken(body.name)
    train = _load_dataset(session, tenant_id, body.dataset_id, "dataset_id")
    validation = None
    if body.validation_dataset_id is not None:
        validation = _load_dataset(
            session, tenant_id, body.validation_dataset_id, "validation_dataset_id"
        )
    resolved_body, source_job, source = resolve_init_from(session, tenant_id, body)
    hyperparameters = resolve_hyperparameters(resolved_body, train, validation, settings)
    if source is not None:
        check_labels(hyperparameters, source_job)
        hyperparameters["init_from"] = source

    def insert() -> Job:
        job = job_rows.create_job(
            session,
            tenant_id=tenant_id,
            base_model=body.base_model,
            task=body.task,
            dataset_id=train.id,
            validation_dataset_id=validation.id if validation is not None else None,
            request=body.model_dump(mode="json"),
            hyperparameters=hyperparameters,
            request_hash=digest,
            idempotency_key=idempotency_key,
            name=body.name,
            metadata=body.metadata,
        )
        for message in hyperparameters["warnings"]:
            job_rows.add_event(session, job, EventKind.WARNING, {"message": message})
        session.commit()
        return job

    def find() -> Job | None:
        assert idempotency_key is not None
        return job_rows.find_by_idempotency_key(session, tenant_id, idempotency_key)

    job, created = create_once(session, idempotency_key, insert, find)
    if not created:
        return Submission(same_request(job, digest, BODY), created=False)
    enqueue(job.id)
    return Submission(job, created=True)


def enqueue_job(producer: TaskProducer, job_id: str) -> None:
    """Send the job to the workers; if the broker is down the job row stays queued and the
    reconciler re-sends it."""
    try:
        producer.send_train_job(job_id)
    except Exception:
        log.warning("could not enqueue %s; the reconciler will retry", job_id, exc_info=True)


def _load_dataset(session: Session, tenant_id: str, dataset_id: str, field: str) -> Dataset:
    """A data set of the tenant, share-locked so it cannot be deleted under the new job."""
    dataset = dataset_rows.get_dataset(session, tenant_id, dataset_id, lock="share")
    if dataset is None:
        raise invalid(field, f"dataset {dataset_id!r} not found")
    return dataset
