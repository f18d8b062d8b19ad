"""One error shape everywhere, no stack traces, 503 for a database outage, an exact OpenAPI."""

from __future__ import annotations

import json
import random
import string
from typing import Any

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from service.settings import Settings
from tests.api.conftest import job_body
from tests.conftest import TenantKey


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert "Traceback" not in response.text
    return body["error"]


def test_unknown_route_and_method(client: TestClient, tenant: TenantKey) -> None:
    assert assert_error_shape(client.get("/nope"), 404)["code"] == "not_found"
    assert assert_error_shape(client.put("/jobs", headers=tenant.headers), 405)["code"] == (
        "method_not_allowed"
    )


def test_validation_error_uses_dotted_field(
    client: TestClient, tenant: TenantKey, dataset: dict
) -> None:
    response = client.post(
        "/jobs", json=job_body(dataset["id"], adalora__init_r=[1]), headers=tenant.headers
    )
    assert assert_error_shape(response, 422)["field"] == "adalora.init_r"
    response = client.get("/jobs/job_x/events?after=-1", headers=tenant.headers)
    assert assert_error_shape(response, 422)["field"] == "after"


def test_database_down_is_503(settings: Settings) -> None:
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    )
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        response = client.get("/jobs", headers={"Authorization": "Bearer whatever"})
        error = assert_error_shape(response, 503)
        assert error["code"] == "database_unavailable"
        assert "database" in error["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "database" in ready.json()["error"]["message"]


def test_exhausted_pool_is_503_with_retry_after(app: Any, client: TestClient) -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    @app.get("/busy")
    def busy() -> None:
        raise PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached")

    response = client.get("/busy")
    error = assert_error_shape(response, 503)
    assert error["code"] == "database_busy" and "retry" in error["message"]
    assert response.headers["Retry-After"] == "1"
    assert "QueuePool" not in response.text


def test_unexpected_error_is_a_generic_500(app: Any, client: TestClient) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    response = client.get("/boom")
    error = assert_error_shape(response, 500)
    assert error == {"code": "internal_error", "message": "internal server error", "field": None}
    assert "secret" not in response.text


def test_readyz_ok(client: TestClient) -> None:
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok"},
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": "float32",
    }


def _junk(rng: random.Random) -> Any:
    choice = rng.randrange(7)
    if choice == 0:
        return "".join(rng.choice(string.printable + "éß∑\u0000") for _ in range(rng.randrange(30)))
    if choice == 1:
        return rng.choice([0, -1, 2**70, -(2**70), 1e308, -0.0])
    if choice == 2:
        return None
    if choice == 3:
        return [rng.randrange(5)]
    if choice == 4:
        return {"x": {"y": []}}
    if choice == 5:
        return rng.choice([True, False])
    return "../" * rng.randrange(5)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_no_5xx_on_junk_input(client: TestClient, tenant: TenantKey, dataset: dict) -> None:
    rng = random.Random(1234)
    fields = [
        "base_model",
        "task",
        "dataset_id",
        "validation_dataset_id",
        "columns__text",
        "columns__label",
        "adalora__init_r",
        "adalora__target_r",
        "adalora__t_final",
        "adalora__delta_t",
        "adalora__target_modules",
        "adalora__lora_alpha",
        "training__epochs",
        "training__max_steps",
        "training__batch_size",
        "training__learning_rate",
        "training__seed",
        "output",
        "name",
        "metadata",
    ]
    for _ in range(150):
        overrides = {f: _junk(rng) for f in rng.sample(fields, rng.randrange(1, 4))}
        response = client.post(
            "/jobs", json=job_body(dataset["id"], **overrides), headers=tenant.headers
        )
        assert response.status_code < 500, (overrides, response.text)
    paths = [
        "/jobs/{}",
        "/jobs/{}/events",
        "/adapters/{}",
        "/adapters/{}/ranks",
        "/adapters/{}/download",
        "/datasets/{}",
    ]
    for _ in range(60):
        ident = "".join(
            rng.choice(string.ascii_letters + "%._-~") for _ in range(rng.randrange(1, 80))
        )
        query = rng.choice(["", "?after=abc", "?limit=-5", "?format=zip", "?cursor=" + "z" * 100])
        response = client.get(rng.choice(paths).format(ident) + query, headers=tenant.headers)
        assert response.status_code < 500, response.text
    for body in (b"", b"null", b"[]", b"\xff\xfe", b'{"task": ' * 50):
        response = client.post(
            "/jobs", content=body, headers={**tenant.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, body


def test_openapi_declares_models_and_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/datasets",
        "/jobs",
        "/jobs/{job_id}/events",
        "/adapters/{adapter_id}/ranks",
        "/adapters/{adapter_id}/download",
        "/models",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
    submit = paths["/jobs"]["post"]
    assert "202" in submit["responses"] and "409" in submit["responses"]
    assert submit["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    upload = paths["/datasets"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "JobOut" in schema["components"]["schemas"]


def test_metrics_count_routes_and_jobs(
    client: TestClient, tenant: TenantKey, dataset: dict, settings: Any
) -> None:
    client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers)
    client.get("/jobs/job_missing", headers=tenant.headers)
    settings.metrics_token = "scrape-secret"
    text = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
    assert 'adalora_http_requests_total{method="POST",route="/jobs",status="202"} 1.0' in text
    assert 'route="/jobs/{job_id}",status="404"' in text
    assert 'adalora_jobs{status="queued"} 1.0' in text
    assert "adalora_queue_depth 1.0" in text
    assert "adalora_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_postgres_backed_app_round_trip(
    client: TestClient, tenant: TenantKey, dataset: dict
) -> None:
    job = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers)
    assert job.status_code == 202
    assert client.get(f"/jobs/{job.json()['id']}", headers=tenant.headers).status_code == 200


def test_unknown_query_parameter_is_rejected(client: TestClient, tenant: TenantKey) -> None:
    response = client.get("/jobs?stauts=queued", headers=tenant.headers)
    error = assert_error_shape(response, 422)
    assert error["field"] == "stauts" and "status" in error["message"]
    assert client.get("/jobs?status=queued&limit=5", headers=tenant.headers).status_code == 200


def test_oversized_json_body_is_413(settings: Settings, tenant: TenantKey) -> None:
    small = settings.model_copy(update={"max_request_bytes": 2000})
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        big = {"name": "x" * 5000}
        response = client.post("/keys", json=big, headers=tenant.headers)
        assert assert_error_shape(response, 413)["code"] == "payload_too_large"

        def chunks() -> Any:
            yield b'{"name": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = client.post(
            "/keys",
            content=chunks(),
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert assert_error_shape(streamed, 413)["code"] == "payload_too_large"
        assert client.post("/keys", json={"name": "ok"}, headers=tenant.headers).status_code == 201


def test_a_fine_tuning_file_is_not_held_to_the_json_body_limit(
    settings: Settings, tenant: TenantKey
) -> None:
    """/v1/files is an upload like POST /datasets: its own size limit, not the 8 MiB JSON cap."""
    small = settings.model_copy(update={"max_request_bytes": 2000})
    with TestClient(create_app(small), raise_server_exceptions=False) as http:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key=tenant.secret, http_client=http, max_retries=0
        )
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
            for i in range(100)
        ]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        assert len(data) > 2000
        uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        assert uploaded.bytes == len(data)
        assert client.files.content(uploaded.id).content == data
        chat = {"model": "x", "messages": [{"role": "user", "content": "y" * 5000}]}
        response = http.post("/v1/chat/completions", json=chat, headers=tenant.headers)
        assert response.status_code == 413
