"""GET /jobs/{id}/events as server-sent events: live delivery, Last-Event-ID, keep-alives, the
end of the stream, and the same authentication and tenant isolation as the JSON answer."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from cli.client import iter_sse
from service import leases
from service.lifecycle import JobStatus, transition
from service.settings import Settings
from service.tables import Job
from tests.api.conftest import job_body
from tests.conftest import LiveServer, TenantKey

STREAM = {"Accept": "text/event-stream"}


@pytest.fixture(autouse=True)
def quick_stream(settings: Settings) -> None:
    settings.events_poll_interval_s = 0.05
    settings.events_keepalive_s = 0.2


def _running_job(client: TestClient, tenant: TenantKey, dataset: dict, sessions) -> str:
    job_id = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()["id"]
    with sessions() as session:
        assert leases.lease_job(session, job_id, "worker-1", 60) is not None
    return job_id


def _progress(sessions: sessionmaker[Session], job_id: str, step: int) -> None:
    with sessions() as session:
        values = {"progress": {"step": step}, "budget": {"current": 40 - step}}
        data = {"step": step, "loss": 0.5, "budget": 40 - step}
        assert leases.write_progress(session, job_id, "worker-1", values, [("progress", data)])


def _finish(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as session:
        job = session.get(Job, job_id)
        transition(job, JobStatus.UPLOADING)
        transition(job, JobStatus.SUCCEEDED)
        session.commit()


def _messages(text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, json.loads(data)) for kind, data in iter_sse(text.splitlines())]


@pytest.fixture
def finished_job(
    client: TestClient, tenant: TenantKey, dataset: dict, sessions: sessionmaker[Session]
) -> str:
    """A job that reported three updates and succeeded: its whole log is already written."""
    job_id = _running_job(client, tenant, dataset, sessions)
    for step in (1, 2, 3):
        _progress(sessions, job_id, step)
    _finish(sessions, job_id)
    return job_id


def test_the_stream_sends_every_event_with_its_id_then_ends_with_the_job(
    client: TestClient, tenant: TenantKey, finished_job: str
) -> None:
    job_id = finished_job
    response = client.get(f"/jobs/{job_id}/events", headers={**tenant.headers, **STREAM})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    messages = _messages(response.text)
    listed = client.get(f"/jobs/{job_id}/events", headers=tenant.headers).json()["items"]
    # The same events, in the same order, as the JSON answer, then the end of the stream.
    assert [m for _, m in messages[:-1]] == listed
    assert [kind for kind, _ in messages[:-1]] == [e["kind"] for e in listed]
    assert messages[-1] == ("end", {"status": "succeeded"})
    ids = [line for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == [f"id: {e['id']}" for e in listed]


def test_last_event_id_resumes_after_the_last_event_seen(
    client: TestClient, tenant: TenantKey, finished_job: str
) -> None:
    job_id = finished_job
    listed = client.get(f"/jobs/{job_id}/events", headers=tenant.headers).json()["items"]
    seen = next(e for e in listed if e["kind"] == "progress" and e["data"]["step"] == 2)
    headers = {**tenant.headers, **STREAM, "Last-Event-ID": str(seen["id"])}
    messages = _messages(client.get(f"/jobs/{job_id}/events", headers=headers).text)
    assert [m["id"] for _, m in messages[:-1]] == [e["id"] for e in listed if e["id"] > seen["id"]]
    bad = client.get(
        f"/jobs/{job_id}/events", headers={**tenant.headers, **STREAM, "Last-Event-ID": "x"}
    )
    assert bad.status_code == 422 and "last-event-id" in bad.text.lower()


def test_events_arrive_while_the_job_runs_with_keep_alives_between(
    app: Any,
    live_server: LiveServer,
    tenant: TenantKey,
    dataset: dict,
    sessions: sessionmaker[Session],
    client: TestClient,
) -> None:
    """Against a real server: an event written after the stream opened is read from the open
    stream before the job ends; silence in between carries keep-alive comments."""
    job_id = _running_job(client, tenant, dataset, sessions)
    url = f"{live_server.url}/jobs/{job_id}/events"
    lines: list[str] = []
    with httpx.stream("GET", url, headers={**tenant.headers, **STREAM}, timeout=30) as response:
        assert response.status_code == 200
        reader = response.iter_lines()
        for line in reader:  # everything up to now: the status events, then silence
            lines.append(line)
            if line == ": keep-alive":
                break
        _progress(sessions, job_id, 7)
        for line in reader:
            lines.append(line)
            if line.startswith("data: ") and '"step":7' in line:
                break
        _finish(sessions, job_id)
        lines += list(reader)
    messages = [(k, json.loads(d)) for k, d in iter_sse(lines)]
    kinds = [k for k, _ in messages]
    assert kinds.index("progress") < kinds.index("end") == len(kinds) - 1
    assert messages[-1][1] == {"status": "succeeded"}
    assert [m["data"]["to"] for k, m in messages if k == "status"][-2:] == [
        "uploading",
        "succeeded",
    ]


def test_the_stream_keeps_tenants_apart_and_needs_a_key(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    dataset: dict,
    sessions: sessionmaker[Session],
) -> None:
    job_id = _running_job(client, tenant, dataset, sessions)
    foreign = client.get(f"/jobs/{job_id}/events", headers={**other_tenant.headers, **STREAM})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
    anonymous = client.get(f"/jobs/{job_id}/events", headers=STREAM)
    assert anonymous.status_code == 401
