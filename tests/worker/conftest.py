from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from service_fixtures import job_body, save_tiny_bert, write_sentiment_csv
from sqlalchemy.orm import Session, sessionmaker

from registry.datasets import create_dataset
from registry.datasets_io import scan
from registry.db import make_engine, make_sessionmaker, upgrade_to_head
from registry.ids import new_id
from registry.jobs import create_job
from registry.models import Job
from registry.settings import Settings
from registry.store import LocalStore
from registry.tenants import create_tenant


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        base_models={"tiny": str(tiny_model)},
        progress_write_interval_s=0.0,
        heartbeat_interval_s=0.2,
        lease_seconds=3.0,
        reconcile_interval_s=0.5,
    )


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    upgrade_to_head(settings.database_url)
    engine = make_engine(settings.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def store(settings: Settings) -> LocalStore:
    return LocalStore(settings.store_dir)


class World:
    """A tenant with one uploaded data set; ``submit`` creates queued jobs on it."""

    def __init__(self, sessions: sessionmaker[Session], store: LocalStore, tmp: Path) -> None:
        self.sessions = sessions
        csv_path = write_sentiment_csv(tmp / "train.csv", 48)
        with sessions() as session:
            self.tenant_id = create_tenant(session, "t").id
            dataset_id = new_id("ds")
            key = f"datasets/{self.tenant_id}/{dataset_id}/data.csv"
            sha256, size = store.put_file(key, csv_path)
            create_dataset(
                session,
                dataset_id=dataset_id,
                tenant_id=self.tenant_id,
                name="train.csv",
                summary=scan(csv_path, "csv"),
                sha256=sha256,
                size_bytes=size,
                storage_key=key,
            )
            session.commit()
        self.dataset_id = dataset_id
        self.dataset_key = key

    def submit(self, **training: object) -> str:
        body = job_body(self.dataset_id, **training)
        with self.sessions() as session:
            job = create_job(
                session,
                tenant_id=self.tenant_id,
                base_model="tiny",
                task="classification",
                dataset_id=self.dataset_id,
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

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job


@pytest.fixture
def world(sessions: sessionmaker[Session], store: LocalStore, tmp_path: Path) -> World:
    return World(sessions, store, tmp_path)
