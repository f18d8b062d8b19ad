from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from service_fixtures import save_tiny_bert, store_sentiment_dataset, submit_job
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, upgrade_to_head
from service.settings import Settings
from service.store import LocalStore
from service.tables import Dataset, Job


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

    def __init__(
        self, sessions: sessionmaker[Session], store: LocalStore, tmp: Path, settings: Settings
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.tenant_id, self.dataset_id = store_sentiment_dataset(sessions, store, tmp)
        with sessions() as session:
            dataset = session.get(Dataset, self.dataset_id)
            assert dataset is not None
            self.dataset_key = dataset.storage_key

    def submit(
        self,
        resources: dict[str, object] | None = None,
        validate: bool = False,
        checkpoints: dict[str, object] | None = None,
        body: dict[str, object] | None = None,
        **training: object,
    ) -> str:
        return submit_job(
            self.sessions,
            self.settings,
            self.tenant_id,
            self.dataset_id,
            resources,
            validate,
            checkpoints,
            body,
            **training,
        )

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job


@pytest.fixture
def world(
    sessions: sessionmaker[Session], store: LocalStore, tmp_path: Path, settings: Settings
) -> World:
    return World(sessions, store, tmp_path, settings)
