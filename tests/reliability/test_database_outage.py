"""Fault 4: the database goes away for a few seconds (a proxy in front of the shared
PostgreSQL is cut). Requests fail with 503 and a clear message, nothing half-written appears,
and the API recovers by itself once the database is back (no restart)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from service import tenants
from service.settings import Settings
from service.tables import Dataset, Job
from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TEST_BASE_MODEL
from tests.reliability.conftest import stored_state
from tests.reliability.proxied_db import ProxiedDatabase

LIVENESS_GUARD_S = 120


def _settings(tmp_path: Path, database_url: str) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{home / 'broker.sqlite'}",
        store_dir=home / "artifacts",
        base_models={TEST_BASE_MODEL: str(tmp_path / "tiny-test-model")},
        jobs_rate_per_s=1000.0,
        jobs_burst=1000,
    )


def _tenant_headers(proxied_db: ProxiedDatabase) -> dict[str, str]:
    """A tenant with one key, written before any fault; its Authorization header."""
    with proxied_db.sessions() as session:
        tenant = tenants.create_tenant(session, "acme")
        _, secret = tenants.create_api_key(session, tenant.id, "test")
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


def _unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "database is unavailable" in error["message"]


def test_api_answers_503_while_the_database_is_cut_and_recovers(
    proxied_db: ProxiedDatabase, tmp_path: Path
) -> None:
    headers = _tenant_headers(proxied_db)
    settings = _settings(tmp_path, proxied_db.proxied_url)

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        dataset = client.post(
            "/datasets", headers=headers, files={"file": ("t.jsonl", jsonl(SST_ROWS))}
        )
        assert dataset.status_code == 201, dataset.text
        assert client.get("/jobs", headers=headers).status_code == 200  # pool holds connections
        before = stored_state(proxied_db.sessions, settings)

        proxied_db.proxy.cut()
        _unavailable(client.get("/jobs", headers=headers))
        _unavailable(client.post("/jobs", json=job_body(dataset.json()["id"]), headers=headers))
        _unavailable(
            client.post("/datasets", headers=headers, files={"file": ("u.jsonl", jsonl(SST_ROWS))})
        )
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "database" in ready.json()["error"]["message"]
        assert stored_state(proxied_db.sessions, settings) == before

        proxied_db.proxy.restore()
        assert client.get("/readyz").status_code == 200
        listed = client.get("/datasets", headers=headers)
        assert listed.status_code == 200 and len(listed.json()["items"]) == 1
        job = client.post("/jobs", json=job_body(dataset.json()["id"]), headers=headers)
        assert job.status_code == 202, job.text

    with proxied_db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1


def test_a_database_that_accepts_and_never_answers_gives_503s_within_a_bound(
    proxied_db: ProxiedDatabase, tmp_path: Path
) -> None:
    """A hung database (connections accepted, never answered) must not hang requests: the
    connect timeout turns each into a 503, and the API recovers by itself."""
    headers = _tenant_headers(proxied_db)
    settings = _settings(tmp_path, proxied_db.proxied_url).model_copy(
        update={"db_connect_timeout_s": 2.0, "db_pool_timeout_s": 3.0}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/jobs", headers=headers).status_code == 200
        proxied_db.proxy.hang()
        # Without a connect timeout these requests never return; run them where a hang can be
        # seen (a liveness guard far above the 2 s timeout, not a speed check).
        answers: list[Any] = []
        asking = threading.Thread(
            target=lambda: answers.extend(
                client.get(path, headers=headers) for path in ("/jobs", "/datasets")
            ),
            daemon=True,
        )
        asking.start()
        asking.join(LIVENESS_GUARD_S)
        assert not asking.is_alive(), "requests hung on a database that never answers"
        for response in answers:
            _unavailable(response)
        assert client.get("/readyz").status_code == 503
        proxied_db.proxy.restore()
        assert client.get("/jobs", headers=headers).status_code == 200


def test_an_outage_after_authentication_leaves_nothing_half_written(
    proxied_db: ProxiedDatabase, tmp_path: Path, monkeypatch: Any
) -> None:
    """The database goes away after a request has authenticated: between storing an upload's
    file and inserting its row, and just before a job's insert. Both answer 503 and nothing
    stays behind: no row, no file, no staging file."""
    from service import jobs as job_rows
    from service.store import LocalStore

    headers = _tenant_headers(proxied_db)
    settings = _settings(tmp_path, proxied_db.proxied_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        dataset = client.post(
            "/datasets", headers=headers, files={"file": ("t.jsonl", jsonl(SST_ROWS))}
        )
        assert dataset.status_code == 201, dataset.text
        before = stored_state(proxied_db.sessions, settings)

        real_put = LocalStore.put_file

        def put_then_cut(self: LocalStore, key: str, path: Any) -> Any:
            stored = real_put(self, key, path)
            proxied_db.proxy.cut()  # the file is in the store; its row is not yet written
            return stored

        monkeypatch.setattr(LocalStore, "put_file", put_then_cut)
        files = {"file": ("u.jsonl", jsonl(SST_ROWS))}
        _unavailable(client.post("/datasets", headers=headers, files=files))
        monkeypatch.setattr(LocalStore, "put_file", real_put)
        proxied_db.proxy.restore()
        assert stored_state(proxied_db.sessions, settings) == before

        real_create = job_rows.create_job

        def cut_then_create(*args: Any, **kwargs: Any) -> Any:
            proxied_db.proxy.cut()  # authenticated and validated; the insert meets the outage
            return real_create(*args, **kwargs)

        monkeypatch.setattr(job_rows, "create_job", cut_then_create)
        _unavailable(client.post("/jobs", json=job_body(dataset.json()["id"]), headers=headers))
        monkeypatch.setattr(job_rows, "create_job", real_create)
        proxied_db.proxy.restore()
        assert stored_state(proxied_db.sessions, settings) == before
