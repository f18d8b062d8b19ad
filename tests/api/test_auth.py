"""Authentication on every route, key management, and per-key rate limits."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.ratelimit import TokenBuckets
from service.settings import Settings
from tests.api.conftest import job_body
from tests.conftest import TenantKey

PROTECTED = [
    ("GET", "/models"),
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("DELETE", "/keys/key_x"),
    ("GET", "/datasets"),
    ("POST", "/datasets"),
    ("GET", "/datasets/ds_x"),
    ("DELETE", "/datasets/ds_x"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/job_x"),
    ("GET", "/jobs/job_x/events"),
    ("POST", "/jobs/job_x/cancel"),
    ("GET", "/adapters"),
    ("GET", "/adapters/ad_x"),
    ("DELETE", "/adapters/ad_x"),
    ("GET", "/adapters/ad_x/ranks"),
    ("GET", "/adapters/ad_x/download"),
    ("POST", "/infer"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["missing", "wrong", "basic"],
)
def test_protected_routes_need_a_valid_key(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_open_routes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_need_the_metrics_token_or_a_loopback_client(
    client: TestClient, settings: Any, live_server: Any
) -> None:
    import httpx

    # TestClient's peer is not loopback: with no token configured, metrics are refused.
    refused = client.get("/metrics")
    assert refused.status_code == 403 and "ADALORA_METRICS_TOKEN" in refused.text
    assert httpx.get(f"{live_server.url}/metrics").status_code == 200  # a local scraper
    settings.metrics_token = "scrape-secret-1"
    assert client.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer scrape-secret-2"}
    assert client.get("/metrics", headers=wrong).status_code == 401
    assert httpx.get(f"{live_server.url}/metrics").status_code == 401  # loopback needs it too
    right = {"Authorization": "Bearer scrape-secret-1"}
    assert client.get("/metrics", headers=right).status_code == 200


def test_key_lifecycle(client: TestClient, tenant: TenantKey, other_tenant: TenantKey) -> None:
    created = client.post("/keys", json={"name": "laptop"}, headers=tenant.headers)
    assert created.status_code == 201
    secret = created.json()["key"]
    new_headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/models", headers=new_headers).status_code == 200
    listed = client.get("/keys", headers=tenant.headers).json()["items"]
    assert {k["id"] for k in listed} == {tenant.key_id, created.json()["id"]}
    assert secret not in str(listed)
    # Another tenant can neither see nor revoke it.
    assert created.json()["id"] not in str(client.get("/keys", headers=other_tenant.headers).json())
    gone = client.delete(f"/keys/{created.json()['id']}", headers=other_tenant.headers)
    assert gone.status_code == 404
    assert client.delete(f"/keys/{created.json()['id']}", headers=tenant.headers).status_code == 204
    assert client.get("/models", headers=new_headers).status_code == 401
    assert client.get("/models", headers=tenant.headers).status_code == 200


def test_bootstrap_key_from_settings(settings: Settings) -> None:
    secret = "bootstrap-secret-for-tests-0123456789"
    app = create_app(settings.model_copy(update={"api_key": secret}))
    with TestClient(app) as client:
        response = client.get("/models", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    assert "tiny-test-model" in [m["name"] for m in response.json()["items"]]


def test_a_short_bootstrap_key_stops_the_app_from_starting(settings: Settings) -> None:
    from service.tenants import WeakKey

    app = create_app(settings.model_copy(update={"api_key": "changeme"}))
    with pytest.raises(WeakKey), TestClient(app):
        pass


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [buckets.acquire("k") for _ in range(2)] == [0.0, 0.0]
    assert buckets.acquire("k") == pytest.approx(0.5)
    assert buckets.acquire("other") == 0.0  # buckets are per key
    now[0] = 0.5
    assert buckets.acquire("k") == 0.0
    assert TokenBuckets(rate=0, burst=1).acquire("k") == 0.0  # rate 0: unlimited


def test_jobs_rate_limit_answers_429(
    client: TestClient, app: Any, tenant: TenantKey, other_tenant: TenantKey, dataset: dict
) -> None:
    app.state.rate_limits["jobs"] = TokenBuckets(rate=0.001, burst=2, clock=lambda: 0.0)
    body = job_body(dataset["id"])
    codes = [client.post("/jobs", json=body, headers=tenant.headers).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    limited = client.post("/jobs", json=body, headers=tenant.headers)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    # Another key has its own bucket (its request fails validation, not the limit).
    other = client.post("/jobs", json=body, headers=other_tenant.headers)
    assert other.status_code == 422


def test_wrong_keys_from_one_address_are_slowed_and_right_keys_still_work(
    settings: Settings, tenant: TenantKey
) -> None:
    limited = settings.model_copy(update={"auth_failures_burst": 3, "auth_failures_per_s": 0.001})
    with TestClient(create_app(limited)) as client:
        wrong = {"Authorization": "Bearer ak_" + "x" * 43}
        codes = [client.get("/models", headers=wrong).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        refused = client.get("/models", headers=wrong)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert client.get("/models", headers=tenant.headers).status_code == 200
        assert client.get("/models").status_code == 401  # no key at all is not a guess
    buckets = TokenBuckets(rate=0.001, burst=1)
    assert buckets.acquire("10.0.0.1") == 0.0 and buckets.acquire("10.0.0.2") == 0.0


@pytest.mark.parametrize("shared", [True, False])
def test_two_replicas_share_one_limit_through_redis(
    settings: Settings, tenant: TenantKey, redis_url: str, shared: bool
) -> None:
    """With Redis configured, two API processes count against one bucket per key; each on its
    own would let twice the burst through."""
    update: dict[str, Any] = {"infer_burst": 4, "infer_rate_per_s": 0.001}
    if shared:
        update["rate_limit_redis_url"] = redis_url
    replicas = [TestClient(create_app(settings.model_copy(update=update))) for _ in range(2)]
    with replicas[0] as first, replicas[1] as second:
        body = {"adapter_id": "ad_missing", "inputs": ["w1"]}
        codes = [
            (first, second)[i % 2].post("/infer", json=body, headers=tenant.headers).status_code
            for i in range(9)
        ]
    allowed = 4 if shared else 8
    assert codes.count(429) == 9 - allowed, codes
    assert codes[:allowed].count(429) == 0
