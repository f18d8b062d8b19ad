"""100 concurrent POST /jobs against a live server on PostgreSQL: distinct Idempotency-Keys make
exactly 100 jobs; one shared key makes exactly one (the rest replay it)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.tables import Job, JobEvent
from tests.api.conftest import job_body
from tests.conftest import LiveServer, TenantKey

CLIENTS = 100


def _submit_all(url: str, body: dict[str, Any], headers: list[dict[str, str]]) -> list[Any]:
    """Send every request at once (a barrier releases them together); (status, job id)."""
    start = threading.Barrier(len(headers))

    def submit(extra: dict[str, str]) -> tuple[int, str]:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            response = http.post("/jobs", json=body, headers=extra)
            assert response.status_code in (200, 202), response.text
            return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(len(headers)) as pool:
        return list(pool.map(submit, headers))


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_100_distinct_keys_make_100_jobs_and_one_key_makes_one(
    live_server: LiveServer,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
) -> None:
    body = job_body(dataset["id"])
    distinct = [{**tenant.headers, "Idempotency-Key": f"k-{i}"} for i in range(CLIENTS)]
    results = _submit_all(live_server.url, body, distinct)
    assert [code for code, _ in results] == [202] * CLIENTS
    assert len({job_id for _, job_id in results}) == CLIENTS
    assert _count(sessions, Job) == CLIENTS

    shared = [{**tenant.headers, "Idempotency-Key": "one-for-all"}] * CLIENTS
    results = _submit_all(live_server.url, body, shared)
    assert len({job_id for _, job_id in results}) == 1
    assert sorted(code for code, _ in results) == [200] * (CLIENTS - 1) + [202]
    assert _count(sessions, Job) == CLIENTS + 1
    # Per job one "queued" status event and one warning (6 updates are too few for the
    # allocator): the losers of the race left nothing behind.
    assert _count(sessions, JobEvent) == 2 * (CLIENTS + 1)
