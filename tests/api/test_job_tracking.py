"""A job's report_to at submission: a missing library is a 422 naming report_to, settings the
operator's environment fills are listed as chosen, no secret is stored, nothing is stored on a
refusal; and OpenAI's integrations map onto the same fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from application import tracking_request
from application.errors import RequestError
from application.tracking_request import report_to_from_integrations
from service.tables import Job
from tests.api.conftest import job_body
from tests.conftest import TenantKey


def job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def refused(response: Any, field: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    return error["message"]


def test_a_tracker_whose_library_is_missing_is_a_422_naming_report_to(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(tracking_request.TRACKER_MODULES, "wandb", "no_such_wandb_module")
    body = {**job_body(dataset["id"]), "report_to": ["tensorboard", "wandb"]}
    response = client.post("/jobs", json=body, headers=tenant.headers)
    assert "wandb" in refused(response, "report_to")
    assert "tensorboard" not in response.json()["error"]["message"]
    assert job_count(sessions) == 0


def test_settings_come_from_the_operators_environment_and_no_secret_is_stored(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ops:hunter2@mlflow.example")
    monkeypatch.setenv("WANDB_PROJECT", "team-runs")
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef")
    body = {
        **job_body(dataset["id"]),
        "report_to": ["tensorboard", "mlflow", "wandb"],
        "wandb": {"tags": ["nightly"], "mode": "offline"},
    }
    response = client.post("/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text
    job = response.json()
    tracking = job["hyperparameters"]["tracking"]
    assert tracking["report_to"] == ["tensorboard", "mlflow", "wandb"]
    assert tracking["mlflow"] == {
        "tracking_uri": None,  # the worker's own MLFLOW_TRACKING_URI
        "experiment": "adalora-service",
        "run_name": None,
    }
    assert tracking["wandb"]["project"] == "team-runs" and tracking["wandb"]["mode"] == "offline"
    chosen = job["hyperparameters"]["chosen_by_service"]
    assert {"mlflow.tracking_uri", "mlflow.experiment", "wandb.project"} <= set(chosen)
    assert "wandb.mode" not in chosen
    answers = json.dumps(job) + client.get(f"/jobs/{job['id']}/events", headers=tenant.headers).text
    for secret in ("hunter2", "local-0123456789abcdef", "mlflow.example"):
        assert secret not in answers


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            {"report_to": ["mlflow"], "mlflow": {"tracking_uri": "http://u:pw@host:5000"}},
            "mlflow.tracking_uri",
        ),
        ({"report_to": ["mlflow"]}, "mlflow.tracking_uri"),  # no URI and no environment
        ({"report_to": ["tensorboard"], "wandb": {"project": "p"}}, "wandb"),
        ({"report_to": ["wandb", "wandb"]}, "report_to"),
        ({"report_to": ["comet"]}, "report_to.0"),
        ({"report_to": ["wandb"], "wandb": {"api_key": "k"}}, "wandb.api_key"),
    ],
)
def test_bad_tracking_settings_name_their_field_and_store_nothing(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, Any],
    field: str,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    response = client.post(
        "/jobs", json={**job_body(dataset["id"]), **extra}, headers=tenant.headers
    )
    message = refused(response, field)
    assert "pw" not in message
    assert job_count(sessions) == 0


def test_a_job_without_tensorboard_has_no_event_files_to_download(
    client: TestClient, tenant: TenantKey, dataset: dict[str, Any]
) -> None:
    job = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()
    response = client.get(f"/jobs/{job['id']}/tensorboard", headers=tenant.headers)
    assert response.status_code == 404 and "tensorboard" in response.json()["error"]["message"]


def test_openai_integrations_map_onto_report_to() -> None:
    mapped = report_to_from_integrations(
        [{"type": "wandb", "wandb": {"project": "ft", "name": "run", "tags": ["a"]}}]
    )
    assert mapped["report_to"] == ["wandb"]
    assert mapped["wandb"].model_dump(exclude_defaults=True) == {
        "project": "ft",
        "name": "run",
        "tags": ["a"],
    }
    assert report_to_from_integrations([]) == {}
    for bad, field in (
        ([{"type": "comet"}], "integrations[0].type"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "x"}}], "integrations[0].wandb.tags"),
        (
            [{"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}],
            "integrations[0].wandb.api_key",
        ),
    ):
        with pytest.raises(RequestError) as caught:
            report_to_from_integrations(bad)
        assert caught.value.field == field
