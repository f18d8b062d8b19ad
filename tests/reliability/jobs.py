"""A queued training job on the tiny BERT, written into the database as POST /jobs writes it,
for the tests that run the worker's ``run_job`` in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from service.store.base import ArtifactStore
from tests.worker.service_fixtures import store_sentiment_dataset, submit_job


def queued_job(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    tmp_path: Path,
    settings: Settings,
    **training: Any,
) -> str:
    """A tenant, a 48-row sentiment CSV in the store, and a queued job on it; the job id."""
    tenant_id, dataset_id = store_sentiment_dataset(sessions, store, tmp_path)
    return submit_job(sessions, settings, tenant_id, dataset_id, **training)
