"""Shared by the worker, reliability, e2e and CLI tests: a tiny BERT on disk, sentiment rows for
it, and queued jobs written to the database exactly as POST /jobs writes them."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from application.job_request import JobCreate
from application.submission import resolve_hyperparameters
from service.datasets import create_dataset
from service.datasets_io import scan
from service.ids import new_id
from service.jobs import create_job
from service.settings import Settings
from service.store.base import ArtifactStore
from service.tables import Dataset
from service.tenants import create_tenant
from tests.core.tiny_trainer_model import FILLER, NEGATIVE, POSITIVE
from tests.core.tiny_trainer_model import save_tiny_bert as _save_tiny_bert


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """The trainer tests' tiny BERT with transformers' default initialisation, saved like a hub
    model so the worker loads it by path (max_position_embeddings 128: the default
    training.max_length fits)."""
    return _save_tiny_bert(directory, seed=seed, initializer_range=0.02)


def write_sentiment_csv(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(count):
            label = rng.randrange(2)
            words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), ["negative", "positive"][label]])
    return path


def job_body(
    dataset_id: str,
    base_model: str = "tiny",
    resources: dict[str, object] | None = None,
    checkpoints: dict[str, object] | None = None,
    **training: object,
) -> dict[str, object]:
    """A POST /jobs body (also stored as jobs.request by the in-process tests)."""
    body: dict[str, object] = {
        "base_model": base_model,
        "task": "classification",
        "dataset_id": dataset_id,
        "columns": {"text": "text", "label": "label"},
        "adalora": {"init_r": 4, "target_r": 2, "t_init": 2, "t_final": 2, "delta_t": 1},
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "max_length": 32,
            **training,
        },
        "output": "merged",
    }
    if resources is not None:
        body["resources"] = resources
    if checkpoints is not None:
        body["checkpoints"] = checkpoints
    return body


def store_sentiment_dataset(
    sessions: sessionmaker[Session], store: ArtifactStore, tmp: Path, rows: int = 48
) -> tuple[str, str]:
    """A new tenant with an uploaded sentiment CSV; (tenant id, dataset id)."""
    csv_path = write_sentiment_csv(tmp / "train.csv", rows)
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
        session.commit()
    return tenant_id, dataset_id


def submit_job(
    sessions: sessionmaker[Session],
    settings: Settings,
    tenant_id: str,
    dataset_id: str,
    resources: dict[str, object] | None = None,
    validate: bool = False,
    checkpoints: dict[str, object] | None = None,
    extra: dict[str, object] | None = None,
    **training: object,
) -> str:
    """A queued job as POST /jobs stores it (settings resolved by the API's own function); its
    id. ``settings.base_models`` must name the tiny model "tiny"; ``extra`` adds top-level
    fields."""
    raw = {
        **job_body(dataset_id, resources=resources, checkpoints=checkpoints, **training),
        **(extra or {}),
    }
    if validate:  # evaluate on the training rows themselves: enough to read what was learned
        raw["validation_dataset_id"] = dataset_id
    body = JobCreate.model_validate(raw)
    with sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        job = create_job(
            session,
            tenant_id=tenant_id,
            base_model=body.base_model,
            task=body.task,
            dataset_id=dataset_id,
            validation_dataset_id=dataset_id if validate else None,
            request=body.model_dump(mode="json"),
            hyperparameters=resolve_hyperparameters(
                body, dataset, dataset if validate else None, settings
            ),
            request_hash=new_id("h"),
            name=body.name,
        )
        session.commit()
        return job.id
