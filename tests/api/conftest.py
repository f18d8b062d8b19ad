"""API test helpers: upload a dataset, build a valid job body, insert a finished adapter."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import adapters as adapter_rows
from service import jobs as job_rows
from service.ids import new_id
from service.store import adapter_key
from tests.conftest import TEST_BASE_MODEL, TenantKey

SST_ROWS = [
    {"sentence": f"sample sentence number {i}", "label": i % 2, "score": i / 10} for i in range(40)
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def operator(sessions: sessionmaker[Session]) -> TenantKey:
    """The operator tenant (it manages the others) with an admin key."""
    from service import tenants

    with sessions() as session:
        tenant = tenants.create_tenant(session, "default", operator=True)
        key, secret = tenants.create_api_key(session, tenant.id, "bootstrap")
        session.commit()
        return TenantKey(tenant.id, key.id, secret)


@pytest.fixture
def store_bundle(sessions: sessionmaker[Session], store: Any, tmp_path: Any) -> Callable[..., str]:
    """store_bundle(tenant, weights, base_model) publishes the adapter weights as the worker
    does (its artifacts in the store, then its row); returns the adapter id."""
    from adalora_core.formats.bundle import write_bundle
    from application.publishing import publish_adapter

    def store_one(tenant: TenantKey, weights: Any, base_model: str) -> str:
        work = tmp_path / "bundles" / new_id("b")
        bundle = write_bundle(weights, work / "bundle")
        with sessions() as session:
            return publish_adapter(session, store, tenant.id, bundle, work, base_model=base_model)

    return store_one


@pytest.fixture
def upload(client: Any) -> Callable[..., Any]:
    """upload(tenant, filename, content, name=None) -> the httpx response."""

    def do(tenant: TenantKey, filename: str, content: bytes, name: str | None = None) -> Any:
        data = {"name": name} if name is not None else None
        return client.post(
            "/datasets", headers=tenant.headers, files={"file": (filename, content)}, data=data
        )

    return do


@pytest.fixture
def dataset(upload: Callable[..., Any], tenant: TenantKey) -> dict[str, Any]:
    response = upload(tenant, "train.jsonl", jsonl(SST_ROWS), "sst-sample")
    assert response.status_code == 201, response.text
    return response.json()


def job_body(dataset: str, /, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "base_model": TEST_BASE_MODEL,
        "task": "classification",
        "dataset_id": dataset,
        "columns": {"text": "sentence", "label": "label"},
        "adalora": {"init_r": 6, "target_r": 4},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
    }
    for dotted, value in overrides.items():
        target = body
        *parents, leaf = dotted.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return body


RANK_INFO = {
    "budget": {"initial": 24, "target": 16, "final": 16},
    "modules": [
        {"name": "encoder.layer.0.attention.self.query", "layer": 0, "kind": "query", "rank": 5},
        {"name": "encoder.layer.0.attention.self.value", "layer": 0, "kind": "value", "rank": 3},
        {"name": "encoder.layer.1.attention.self.query", "layer": 1, "kind": "query", "rank": 2},
        {"name": "encoder.layer.1.attention.self.value", "layer": 1, "kind": "value", "rank": 6},
    ],
    "history": [
        {"step": 10, "budget": 20, "ranks": {"encoder.layer.0.attention.self.query": 6}},
        {"step": 20, "budget": 16, "ranks": {"encoder.layer.0.attention.self.query": 5}},
    ],
}


def fake_zip(marker: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("adalora.json", json.dumps({"marker": marker, **RANK_INFO}))
    return buffer.getvalue()


@pytest.fixture
def make_adapter(sessions: sessionmaker[Session], store: Any) -> Callable[..., dict[str, Any]]:
    """Store zips for the given formats and insert a succeeded job + adapter row, as the worker
    does at the end of a run. Returns {"id", "job_id", "zips": {format: bytes}}."""

    def make(tenant: TenantKey, formats: tuple[str, ...] = ("peft", "lora")) -> dict[str, Any]:
        adapter_id = new_id("ad")
        zips = {fmt: fake_zip(f"{adapter_id}-{fmt}") for fmt in formats}
        stored = {}
        for fmt, data in zips.items():
            key = adapter_key(tenant.id, adapter_id, fmt)
            sha, size = store.put_stream(key, [data])
            stored[fmt] = {"storage_key": key, "sha256": sha, "size_bytes": size}
        with sessions() as session:
            job = job_rows.create_job(
                session,
                tenant_id=tenant.id,
                base_model=TEST_BASE_MODEL,
                task="classification",
                dataset_id=None,  # type: ignore[arg-type]
                validation_dataset_id=None,
                request={},
                hyperparameters={"total_steps": 30},
                request_hash="0" * 64,
            )
            adapter_rows.create_adapter(
                session,
                adapter_id=adapter_id,
                tenant_id=tenant.id,
                job_id=job.id,
                name=f"demo-{adapter_id}",
                base_model=TEST_BASE_MODEL,
                task="classification",
                labels=["negative", "positive"],
                init_r=6,
                target_r=4,
                total_rank=16,
                trainable_params=1234,
                formats=stored,
                rank_info=RANK_INFO,
                metrics={"accuracy": 0.9},
            )
            job.status = "succeeded"
            job.adapter_id = adapter_id
            session.commit()
            return {"id": adapter_id, "job_id": job.id, "zips": zips}

    return make
