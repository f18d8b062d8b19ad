"""Tenant isolation: another tenant's ids answer 404 on every route and never show in lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TenantKey


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_other_tenant_sees_nothing(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    dataset: dict[str, Any],
    make_adapter: Callable[..., dict],
) -> None:
    job = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()
    adapter = make_adapter(tenant)
    owned = {
        ("GET", f"/datasets/{dataset['id']}"),
        ("DELETE", f"/datasets/{dataset['id']}"),
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}/events"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("GET", f"/adapters/{adapter['id']}"),
        ("GET", f"/adapters/{adapter['id']}/ranks"),
        ("GET", f"/adapters/{adapter['id']}/ranks?format=png"),
        ("GET", f"/adapters/{adapter['id']}/download"),
        ("DELETE", f"/adapters/{adapter['id']}"),
        ("DELETE", f"/keys/{tenant.key_id}"),
    }
    for method, path in sorted(owned):
        response = client.request(method, path, headers=other_tenant.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    # Lists hold exactly the caller's own things: the other tenant gets its own data set,
    # adapter and key back, and none of ours.
    theirs_dataset = client.post(
        "/datasets", headers=other_tenant.headers, files={"file": ("o.jsonl", jsonl(SST_ROWS))}
    ).json()
    theirs_adapter = make_adapter(other_tenant)
    expected = {
        "/datasets": {theirs_dataset["id"]},
        "/jobs": {theirs_adapter["job_id"]},
        "/adapters": {theirs_adapter["id"]},
        "/keys": {other_tenant.key_id},
    }
    for path, ids in expected.items():
        items = client.get(path, headers=other_tenant.headers).json()["items"]
        assert {item["id"] for item in items} == ids, path
    ours = {
        "/datasets": dataset["id"],
        "/jobs": job["id"],  # and the job behind our adapter
        "/adapters": adapter["id"],
        "/keys": tenant.key_id,
    }
    for path, own_id in ours.items():
        items = client.get(path, headers=tenant.headers).json()["items"]
        assert own_id in {item["id"] for item in items}, path
        assert not {item["id"] for item in items} & expected[path], path
    # A job cannot be built on someone else's dataset either.
    foreign = client.post("/jobs", json=job_body(dataset["id"]), headers=other_tenant.headers)
    assert foreign.status_code == 422 and foreign.json()["error"]["field"] == "dataset_id"
    # ...and the owner still has everything, untouched.
    assert client.get(f"/jobs/{job['id']}", headers=tenant.headers).json()["status"] == "queued"
    assert client.get(f"/adapters/{adapter['id']}", headers=tenant.headers).status_code == 200
    assert client.get(f"/datasets/{dataset['id']}", headers=tenant.headers).status_code == 200
    assert client.get("/models", headers=tenant.headers).status_code == 200
