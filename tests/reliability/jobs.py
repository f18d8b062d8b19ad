"""A queued training job on the tiny BERT, written straight into the registry (no API), for the
tests that run the worker's ``run_job`` in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from registry.datasets import create_dataset
from registry.datasets_io import scan
from registry.ids import new_id
from registry.jobs import create_job
from registry.store.base import ArtifactStore
from registry.tenants import create_tenant
from tests.worker.service_fixtures import job_body, write_sentiment_csv


def queued_job(
    sessions: sessionmaker[Session], store: ArtifactStore, tmp_path: Path, **training: Any
) -> str:
    """A tenant, a 48-row sentiment CSV in the store, and a queued job on it; the job id."""
    csv_path = write_sentiment_csv(tmp_path / "train.csv", 48)
    with sessions() as session:
        tenant_id = create_tenant(session, "t").id
        dataset_id = new_id("ds")
        key = f"datasets/{tenant_id}/{dataset_id}/data.csv"
        sha256, size = store.put_file(key, csv_path)
        create_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=tenant_id,
            name="train.csv",
            summary=scan(csv_path, "csv"),
            sha256=sha256,
            size_bytes=size,
            storage_key=key,
        )
        body = job_body(dataset_id, **training)
        job = create_job(
            session,
            tenant_id=tenant_id,
            base_model="tiny",
            task="classification",
            dataset_id=dataset_id,
            validation_dataset_id=None,
            request=body,
            hyperparameters={
                "labels": ["negative", "positive"],
                "total_steps": body["training"]["max_steps"],
            },
            request_hash=new_id("h"),
        )
        session.commit()
        return job.id
