"""POST /datasets honours Idempotency-Key like POST /jobs: a retried upload (the client never saw
the answer) gets the same dataset and stores nothing twice; the same key with another file is a
409; concurrent retries make exactly one dataset."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import SST_ROWS, jsonl
from tests.conftest import LiveServer, TenantKey

CONTENT = jsonl(SST_ROWS)


def _upload(client: Any, tenant: TenantKey, key: str, content: bytes = CONTENT) -> Any:
    return client.post(
        "/datasets",
        headers={**tenant.headers, "Idempotency-Key": key},
        files={"file": ("train.jsonl", content)},
    )


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_retried_upload_gives_the_same_dataset(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    snapshot: Callable[[], dict[str, Any]],
) -> None:
    first = _upload(client, tenant, "up-1")
    assert first.status_code == 201, first.text
    after_first = snapshot()
    again = _upload(client, tenant, "up-1")
    assert again.status_code == 200 and again.json() == first.json()
    assert snapshot() == after_first  # no second row, no second file

    other_file = _upload(client, tenant, "up-1", CONTENT + b'{"sentence": "x", "label": 0}\n')
    assert other_file.status_code == 409, other_file.text
    assert other_file.json()["error"]["field"] == "Idempotency-Key"
    assert snapshot() == after_first

    # Keys are per tenant: another tenant's identical key is a new dataset of its own.
    foreign = _upload(client, other_tenant, "up-1")
    assert foreign.status_code == 201 and foreign.json()["id"] != first.json()["id"]
    # Without a key every upload is new.
    assert client.post(
        "/datasets", headers=tenant.headers, files={"file": ("train.jsonl", CONTENT)}
    ).json()["id"] not in (first.json()["id"], foreign.json()["id"])


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_concurrent_retries_make_one_dataset_and_one_file(
    live_server: LiveServer, tenant: TenantKey, snapshot: Callable[[], dict[str, Any]]
) -> None:
    start = threading.Barrier(8)

    def send(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            start.wait()
            response = _upload(http, tenant, "race-1")
            return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert len({dataset_id for _, dataset_id in results}) == 1, results
    assert sorted(code for code, _ in results) == [200] * 7 + [201]
    state = snapshot()
    assert state["rows"]["datasets"] == 1
    assert len([name for name in state["files"] if name.startswith("datasets/")]) == 1
    assert state["staging"] == []
