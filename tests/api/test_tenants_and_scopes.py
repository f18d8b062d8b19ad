"""Tenants (operator only) and key scopes: what each key may do, checked on every route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.tables import Dataset
from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TenantKey


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def scoped_key(client: TestClient, admin: TenantKey, scope: str) -> str:
    created = client.post("/keys", json={"scope": scope}, headers=admin.headers)
    assert created.status_code == 201, created.text
    assert created.json()["scope"] == scope
    return created.json()["key"]


def test_the_operator_creates_lists_and_disables_tenants_whose_data_stays(
    client: TestClient, operator: TenantKey, sessions: sessionmaker[Session]
) -> None:
    created = client.post("/tenants", json={"name": "initech"}, headers=operator.headers)
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["name"] == "initech" and not new["operator"] and new["disabled_at"] is None
    first_key = bearer(new["key"])
    upload = client.post(
        "/datasets", headers=first_key, files={"file": ("t.jsonl", jsonl(SST_ROWS))}
    )
    assert upload.status_code == 201
    keys = client.get("/keys", headers=first_key).json()["items"]
    assert [(k["id"], k["scope"]) for k in keys] == [(new["key_id"], "admin")]

    listed = client.get("/tenants", headers=operator.headers).json()["items"]
    assert {t["name"] for t in listed} == {"default", "initech"}

    disabled = client.post(f"/tenants/{new['id']}/disable", headers=operator.headers)
    assert disabled.status_code == 200 and disabled.json()["disabled_at"]
    assert client.get("/datasets", headers=first_key).status_code == 401  # at once
    with sessions() as session:
        assert session.get(Dataset, upload.json()["id"]) is not None  # the data stays
    itself = client.post(f"/tenants/{operator.id}/disable", headers=operator.headers)
    assert itself.status_code == 409
    assert client.post("/tenants/ten_nope/disable", headers=operator.headers).status_code == 404


def test_only_the_operators_admin_keys_manage_tenants(
    client: TestClient, operator: TenantKey, tenant: TenantKey
) -> None:
    # An admin key of an ordinary tenant, and a train key of the operator tenant.
    for headers in (tenant.headers, bearer(scoped_key(client, operator, "train"))):
        assert client.get("/tenants", headers=headers).status_code == 403
        refused = client.post("/tenants", json={"name": "x"}, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
    assert client.get("/tenants").status_code == 401


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("infer", {"infer", "adapters", "models"}),
        ("train", {"infer", "adapters", "models", "datasets", "jobs", "download"}),
        ("admin", {"infer", "adapters", "models", "datasets", "jobs", "download", "keys"}),
    ],
)
def test_each_scope_reaches_exactly_its_routes(
    client: TestClient,
    tenant: TenantKey,
    make_adapter: Callable[..., dict[str, Any]],
    dataset: dict[str, Any],
    scope: str,
    allowed: set[str],
) -> None:
    adapter = make_adapter(tenant)
    headers = bearer(scoped_key(client, tenant, scope))
    calls = {
        "infer": ("POST", "/infer", {"adapter_id": "ad_missing", "inputs": ["w1"]}),
        "adapters": ("GET", "/adapters", None),
        "models": ("GET", "/models", None),
        "datasets": ("GET", "/datasets", None),
        "jobs": ("POST", "/jobs", job_body(dataset["id"])),
        "download": ("GET", f"/adapters/{adapter['id']}/download", None),
        "keys": ("GET", "/keys", None),
    }
    for name, (method, path, body) in calls.items():
        response = client.request(method, path, json=body, headers=headers)
        if name in allowed:
            assert response.status_code != 403, (name, response.text)
        else:
            assert response.status_code == 403, (name, response.text)
            assert scope in response.json()["error"]["message"]


def test_only_admin_keys_manage_keys_and_new_keys_get_the_least_power(
    client: TestClient, tenant: TenantKey
) -> None:
    admin_key = bearer(scoped_key(client, tenant, "admin"))
    train_secret = scoped_key(client, tenant, "train")
    made_by_train = client.post("/keys", json={"scope": "infer"}, headers=bearer(train_secret))
    assert made_by_train.status_code == 403
    revoked_by_train = client.delete(f"/keys/{tenant.key_id}", headers=bearer(train_secret))
    assert revoked_by_train.status_code == 403
    assert client.get("/models", headers=tenant.headers).status_code == 200
    default = client.post("/keys", json={}, headers=admin_key)
    assert default.status_code == 201 and default.json()["scope"] == "train"
    bad = client.post("/keys", json={"scope": "root"}, headers=admin_key)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "scope"
