"""Job submission: checked up front (422 naming the field), idempotent, enqueued by name."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from service import jobs as job_rows
from service import leases
from service.settings import Settings
from service.tables import Job
from service.vocabulary import TRAIN_TASK
from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TEST_BASE_MODEL, LiveServer, TenantKey
from tests.service.test_settings_queue import _drain


def job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_submit_resolves_and_enqueues(
    client: TestClient, tenant: TenantKey, dataset: dict[str, Any], settings: Settings
) -> None:
    response = client.post(
        "/jobs",
        json=job_body(dataset["id"], name="first", metadata={"team": "nlp"}),
        headers=tenant.headers,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["name"] == "first"
    assert job["metadata"] == {"team": "nlp"}
    hp = job["hyperparameters"]
    assert hp["total_steps"] == 10  # ceil(40 rows / 8) * 2 epochs
    assert hp["schedule"] == {"total_steps": 10, "t_init": 1, "t_final": 4, "delta_t": 1}
    assert hp["labels"] == ["0", "1"]
    assert hp["columns"] == {"text": "sentence", "label": "label"}
    assert hp["adalora"]["init_r"] == 6 and hp["training"]["learning_rate"] == 1e-3
    assert job["progress"] == {"step": 0, "total_steps": 10, "epoch": 0.0}
    assert _drain(settings.broker_url) == [(TRAIN_TASK, [job["id"]])]
    assert client.get(f"/jobs/{job['id']}", headers=tenant.headers).json() == job


def test_broker_down_keeps_the_job_queued(
    settings: Settings, tenant: TenantKey, upload: Callable[..., Any]
) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        ds = client.post(
            "/datasets", headers=tenant.headers, files={"file": ("t.jsonl", jsonl(SST_ROWS))}
        ).json()
        response = client.post("/jobs", json=job_body(ds["id"]), headers=tenant.headers)
        assert response.status_code == 202
        job = client.get(f"/jobs/{response.json()['id']}", headers=tenant.headers).json()
        assert job["status"] == "queued"
        assert client.get("/readyz").status_code == 503


def test_required_fields_only_get_the_services_settings(
    client: TestClient, tenant: TenantKey, dataset: dict[str, Any]
) -> None:
    body = job_body(dataset["id"], adalora=..., training=...)
    response = client.post("/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text
    job = client.get(f"/jobs/{response.json()['id']}", headers=tenant.headers).json()
    hp = job["hyperparameters"]
    # 40 rows at batch 16 = 3 updates an epoch: the recipe's 600-update floor is capped at 20
    # passes over such a small data set.
    assert hp["training"]["batch_size"] == 16 and hp["total_steps"] == 60
    assert hp["training"]["max_steps"] == 60 and hp["training"]["epochs"] is None
    assert hp["training"]["max_grad_norm"] == 1.0
    assert hp["training"]["learning_rate"] > 0 and hp["training"]["eval_every"] == 15
    assert hp["adalora"]["init_r"] == 12 and hp["adalora"]["target_r"] == 8
    assert hp["schedule"] == {"total_steps": 60, "t_init": 7, "t_final": 27, "delta_t": 1}
    assert {k: hp["adalora"][k] for k in ("t_init", "t_final", "delta_t")} == {
        "t_init": 7,
        "t_final": 27,
        "delta_t": 1,
    }
    assert "training.max_steps" in hp["chosen_by_service"]
    assert "adalora.lora_alpha" in hp["chosen_by_service"]
    # The schedule is too short for the allocator to act, and the job says so.
    events = client.get(f"/jobs/{job['id']}/events", headers=tenant.headers).json()["items"]
    warnings = [e["data"]["message"] for e in events if e["kind"] == "warning"]
    assert len(warnings) == 1 and "over only 26 updates" in warnings[0]
    assert hp["warnings"] == warnings


def test_given_fields_are_kept_and_not_listed_as_chosen(
    client: TestClient, tenant: TenantKey, dataset: dict[str, Any]
) -> None:
    body = job_body(dataset["id"], training__max_grad_norm=0, adalora__lora_alpha=8)
    response = client.post("/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text
    hp = response.json()["hyperparameters"]
    assert hp["training"]["max_grad_norm"] == 0 and hp["adalora"]["lora_alpha"] == 8
    assert hp["training"]["epochs"] == 2 and hp["training"]["batch_size"] == 8
    chosen = set(hp["chosen_by_service"])
    assert not chosen & {"training.max_grad_norm", "adalora.lora_alpha", "training.epochs"}
    assert {"adalora.t_init", "training.max_length"} <= chosen


@pytest.fixture
def regression_and_text(upload: Callable[..., Any], tenant: TenantKey) -> dict[str, str]:
    rows = [{"text": f"t{i}", "tag": "a" if i % 2 else "b", "one": "x"} for i in range(10)]
    val = [{"sentence": "s", "label": 7, "score": 0.1}]
    return {
        "text": upload(tenant, "text.jsonl", jsonl(rows)).json()["id"],
        "val_bad_labels": upload(tenant, "val.jsonl", jsonl(val)).json()["id"],
    }


INVALID = [
    ({"base_model": "gpt-17"}, "base_model", "unknown base model"),
    ({"task": "translation"}, "task", None),
    ({"resources": {"precision": "int4"}}, "resources.precision", None),
    ({"columns__text": "nope"}, "columns.text", "not in dataset"),
    ({"columns__label": "nope"}, "columns.label", "not in dataset"),
    ({"columns__label": ...}, "columns.label", "needs a label"),
    ({"task": "seq2seq"}, "columns.target", "needs a target"),
    ({"task": "regression", "columns__label": "sentence"}, "columns.label", "numeric"),
    ({"columns__text_pair": "missing"}, "columns.text_pair", "not in dataset"),
    ({"adalora__target_r": 9}, "adalora.target_r", "init_r"),
    ({"adalora__init_r": "many"}, "adalora.init_r", None),
    ({"adalora__beta1": 1.5}, "adalora.beta1", None),
    ({"adalora__t_final": 50}, "adalora.t_final", "t_final"),
    ({"adalora__t_init": 9}, "adalora.t_init", None),
    ({"adalora__bogus": 1}, "adalora.bogus", None),
    ({"training__learning_rate": 0}, "training.learning_rate", "> 0"),
    ({"training__learning_rate": -1e-3}, "training.learning_rate", None),
    ({"training__learning_rate": "fast"}, "training.learning_rate", None),
    ({"training__batch_size": 0}, "training.batch_size", None),
    ({"training__max_grad_norm": -1}, "training.max_grad_norm", ">= 0"),
    ({"training__max_steps": 5}, "training.epochs", "exactly one"),
    ({"dataset_id": "ds_missing"}, "dataset_id", "not found"),
    ({"validation_dataset_id": "ds_missing"}, "validation_dataset_id", "not found"),
    ({"output": "zip"}, "output", None),
    ({"columns": "text"}, "columns", None),
    ({"metadata": [1, 2]}, "metadata", None),
]


@pytest.mark.parametrize(("overrides", "field", "fragment"), INVALID)
def test_invalid_submissions_name_the_field(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
    overrides: dict[str, Any],
    field: str,
    fragment: str | None,
) -> None:
    response = client.post(
        "/jobs", json=job_body(dataset["id"], **overrides), headers=tenant.headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    if fragment:
        assert fragment in error["message"]
    assert job_count(sessions) == 0


def test_a_sequence_longer_than_the_base_takes_is_refused_at_submission(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """The run is planned at submission against the base's config.json, so the job is a 422
    now rather than a failed run later."""
    base = Path(settings.base_models[TEST_BASE_MODEL])
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    too_long = job_body(dataset["id"], training__max_length=65)
    response = client.post("/jobs", json=too_long, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "training.max_length" and "64 positions" in error["message"]
    assert job_count(sessions) == 0
    fits = job_body(dataset["id"], training__max_length=64)
    assert client.post("/jobs", json=fits, headers=tenant.headers).status_code == 202


@pytest.mark.parametrize(
    ("limit", "overrides", "field"),
    [
        ("job_max_rank", {"adalora": {"init_r": 12, "target_r": 8}}, "adalora.init_r"),
        (
            "job_max_batch_size",
            {"training": {"max_steps": 10, "batch_size": 16}},
            "training.batch_size",
        ),
        (
            "job_max_length",
            {"training": {"max_steps": 10, "max_length": 64}},
            "training.max_length",
        ),
        ("job_max_updates", {"training": {"max_steps": 50}}, "training.max_steps"),
        ("job_max_updates", {"training": {"epochs": 50}}, "training.epochs"),
        ("job_max_train_rows", {}, "dataset_id"),
        ("job_max_devices", {"resources": {"devices": 9}}, "resources.devices"),
    ],
)
def test_resource_limits_are_422_naming_the_field_and_the_limit(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
    settings: Settings,
    limit: str,
    overrides: dict[str, Any],
    field: str,
) -> None:
    setattr(settings, limit, 8)
    body = {**job_body(dataset["id"]), **overrides}
    response = client.post("/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "limit of 8" in error["message"], error
    assert job_count(sessions) == 0


def test_label_checks(
    client: TestClient, tenant: TenantKey, dataset: dict, regression_and_text: dict[str, str]
) -> None:
    one_class = job_body(regression_and_text["text"], columns={"text": "text", "label": "one"})
    response = client.post("/jobs", json=one_class, headers=tenant.headers)
    assert response.json()["error"]["field"] == "columns.label"
    assert ">= 2" in response.json()["error"]["message"]

    unseen = job_body(dataset["id"], validation_dataset_id=regression_and_text["val_bad_labels"])
    response = client.post("/jobs", json=unseen, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "validation_dataset_id"
    assert "7" in response.json()["error"]["message"]

    regression = job_body(
        dataset["id"], task="regression", columns={"text": "sentence", "target": "score"}
    )
    accepted = client.post("/jobs", json=regression, headers=tenant.headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["hyperparameters"]["labels"] is None

    lm = job_body(
        dataset["id"],
        task="causal-lm",
        columns={"text": "sentence"},
        training={"max_steps": 12, "learning_rate": 1e-3},
    )
    accepted = client.post("/jobs", json=lm, headers=tenant.headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["hyperparameters"]["total_steps"] == 12


def test_malformed_json_body(client: TestClient, tenant: TenantKey) -> None:
    response = client.post(
        "/jobs",
        content=b"{not json",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_json"


def test_idempotency_key(
    client: TestClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    dataset: dict,
    sessions: sessionmaker[Session],
) -> None:
    body = job_body(dataset["id"])
    headers = {**tenant.headers, "Idempotency-Key": "abc-1"}
    first = client.post("/jobs", json=body, headers=headers)
    again = client.post("/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    changed = client.post("/jobs", json=job_body(dataset["id"], name="other"), headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_conflict"
    # Keys are per tenant: the same key elsewhere is unrelated (and here fails validation).
    foreign = client.post(
        "/jobs", json=body, headers={**other_tenant.headers, "Idempotency-Key": "abc-1"}
    )
    assert foreign.status_code == 422
    assert job_count(sessions) == 1


@pytest.mark.parametrize("db_backend", ["postgres", "sqlite"])
def test_concurrent_identical_submissions_make_one_job(
    live_server: LiveServer,
    tenant: TenantKey,
    dataset: dict[str, Any],
    sessions: sessionmaker[Session],
) -> None:
    body = job_body(dataset["id"])
    headers = {**tenant.headers, "Idempotency-Key": "race-1"}
    start = threading.Barrier(8)

    def submit(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            start.wait()
            response = http.post("/jobs", json=body, headers=headers)
            return response.status_code, response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(8)))
    assert {job_id for _, job_id in results} and len({job_id for _, job_id in results}) == 1
    assert sorted(code for code, _ in results) == [200] * 7 + [202]
    assert job_count(sessions) == 1


def test_list_filter_and_pages(
    client: TestClient, tenant: TenantKey, dataset: dict, sessions: sessionmaker[Session]
) -> None:
    ids = [
        client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()["id"]
        for _ in range(3)
    ]
    client.post(f"/jobs/{ids[0]}/cancel", headers=tenant.headers)
    queued = client.get("/jobs?status=queued", headers=tenant.headers).json()
    assert [j["id"] for j in queued["items"]] == [ids[2], ids[1]]
    page = client.get("/jobs?limit=2", headers=tenant.headers).json()
    assert [j["id"] for j in page["items"]] == [ids[2], ids[1]]
    page = client.get(f"/jobs?limit=2&cursor={page['next_cursor']}", headers=tenant.headers).json()
    assert [j["id"] for j in page["items"]] == [ids[0]] and page["next_cursor"] is None
    for bad in ("status=bogus", "limit=0", "limit=1000"):
        assert client.get(f"/jobs?{bad}", headers=tenant.headers).status_code == 422


def test_events_and_cancel(
    client: TestClient, tenant: TenantKey, dataset: dict, sessions: sessionmaker[Session]
) -> None:
    queued = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()
    cancelled = client.post(f"/jobs/{queued['id']}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    again = client.post(f"/jobs/{queued['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 409

    running = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()
    with sessions() as session:
        assert leases.lease_job(session, running["id"], "worker-1", 60) is not None
        for step in (1, 2, 3):
            progress = {"step": step, "epoch": 0.1 * step}
            values = {"progress": progress, "budget": {"current": 20}}
            events = [("progress", {**progress, "budget": 20})]
            assert leases.write_progress(session, running["id"], "worker-1", values, events)
    response = client.post(f"/jobs/{running['id']}/cancel", headers=tenant.headers)
    assert response.json()["status"] == "cancelling"

    events = client.get(f"/jobs/{running['id']}/events", headers=tenant.headers).json()
    kinds = [(e["kind"], e["data"].get("to", e["data"].get("step"))) for e in events["items"]]
    assert kinds == [
        ("status", "queued"),
        ("warning", None),  # 10 updates leave the allocator no room
        ("status", "running"),
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("status", "cancelling"),
    ]
    tail = client.get(
        f"/jobs/{running['id']}/events?after={events['items'][3]['id']}&limit=2",
        headers=tenant.headers,
    ).json()
    assert [e["data"]["step"] for e in tail["items"]] == [2, 3]
    assert tail["next_after"] == events["items"][5]["id"]
    empty = client.get(
        f"/jobs/{running['id']}/events?after={events['next_after']}", headers=tenant.headers
    ).json()
    assert empty == {"items": [], "next_after": events["next_after"]}
    progress = client.get(f"/jobs/{running['id']}", headers=tenant.headers).json()
    assert progress["progress"]["step"] == 3 and progress["budget"]["current"] == 20

    with sessions() as session:
        job = job_rows.get_job_by_id(session, running["id"])
        assert job is not None
        job.status = "succeeded"
        session.commit()
    finished = client.post(f"/jobs/{running['id']}/cancel", headers=tenant.headers)
    assert finished.status_code == 409 and "succeeded" in finished.json()["error"]["message"]


def test_jsonl_value_types_are_checked(
    client: TestClient, tenant: TenantKey, upload: Callable[..., Any]
) -> None:
    stars = [{"text": f"review {i}", "stars": 1 + i % 5, "n": i} for i in range(20)]
    ds = upload(tenant, "stars.jsonl", jsonl(stars)).json()["id"]
    response = client.post(
        "/jobs",
        json=job_body(ds, columns={"text": "text", "label": "stars"}),
        headers=tenant.headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "columns.label"
    assert "0..4" in response.json()["error"]["message"]
    numeric_text = client.post(
        "/jobs", json=job_body(ds, columns={"text": "n", "label": "stars"}), headers=tenant.headers
    )
    assert numeric_text.json()["error"]["field"] == "columns.text"
    assert "strings" in numeric_text.json()["error"]["message"]
    regression = client.post(
        "/jobs",
        json=job_body(ds, task="regression", columns={"text": "text", "label": "stars"}),
        headers=tenant.headers,
    )
    assert regression.status_code == 202, regression.text


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_lost_race_on_the_unique_constraint_replays(
    client: TestClient,
    tenant: TenantKey,
    dataset: dict,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pre-check misses (another request commits in between): the INSERT hits the unique
    constraint, and the request answers with the job that won."""
    body = job_body(dataset["id"])
    headers = {**tenant.headers, "Idempotency-Key": "race-2"}
    winner = client.post("/jobs", json=body, headers=headers).json()
    real = job_rows.find_by_idempotency_key
    calls = {"n": 0}

    def first_call_misses(*args: Any) -> Any:
        calls["n"] += 1
        return None if calls["n"] == 1 else real(*args)

    monkeypatch.setattr(job_rows, "find_by_idempotency_key", first_call_misses)
    replay = client.post("/jobs", json=body, headers=headers)
    assert (replay.status_code, replay.json()["id"]) == (200, winner["id"])
    calls["n"] = 0
    conflict = client.post("/jobs", json=job_body(dataset["id"], name="x"), headers=headers)
    assert conflict.status_code == 409
    assert calls["n"] == 2 and job_count(sessions) == 1


def test_the_schedule_route_draws_the_cubic_budget_once_training_reports_its_ends(
    client: TestClient, tenant: TenantKey, dataset: dict, sessions: sessionmaker[Session]
) -> None:
    body = job_body(dataset["id"], training__epochs=..., training__max_steps=100)
    job = client.post("/jobs", json=body, headers=tenant.headers).json()
    before = client.get(f"/jobs/{job['id']}/schedule", headers=tenant.headers).json()
    assert before["points"] == [] and before["initial"] is None
    schedule = job["hyperparameters"]["schedule"]
    with sessions() as session:
        assert leases.lease_job(session, job["id"], "worker-1", 60) is not None
        values = {"budget": {"initial": 36, "target": 24, "current": 36}}
        assert leases.write_progress(session, job["id"], "worker-1", values, [])
    drawn = client.get(f"/jobs/{job['id']}/schedule", headers=tenant.headers).json()
    points = {p["step"]: p["budget"] for p in drawn["points"]}
    final = schedule["total_steps"] - schedule["t_final"]
    assert drawn["final_mask_step"] == final and drawn["t_init"] == schedule["t_init"]
    assert points[0] == points[schedule["t_init"]] == 36
    assert points[final] == points[100] == 24
    budgets = [p["budget"] for p in drawn["points"]]
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets)) > 5
    other = client.get(f"/jobs/{job['id']}/schedule", headers={"Authorization": "Bearer nope"})
    assert other.status_code == 401


def test_a_causal_lm_job_reads_its_columns_from_the_row_shape(
    client: TestClient, tenant: TenantKey, upload: Callable[..., Any]
) -> None:
    """Chat rows ('messages') and prompt/completion rows need no columns mapping; other data
    and other tasks still do, and the 422 says so."""
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    datasets = {
        "chat": [{"messages": chat}] * 4,
        "pairs": [{"prompt": "2+2=", "completion": "4"}] * 4,
        "plain": [{"sentence": "just text"}] * 4,
    }
    ids = {}
    for name, rows in datasets.items():
        response = upload(tenant, f"{name}.jsonl", jsonl(rows))
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    assert client.get(f"/datasets/{ids['chat']}", headers=tenant.headers).json()[
        "column_types"
    ] == {"messages": "chat"}

    def submit(dataset_id: str, task: str = "causal-lm") -> Any:
        body = {"base_model": TEST_BASE_MODEL, "task": task, "dataset_id": dataset_id}
        body["training"] = {"max_steps": 4, "batch_size": 2}
        return client.post("/jobs", json=body, headers=tenant.headers)

    chat_job = submit(ids["chat"])
    assert chat_job.status_code == 202, chat_job.text
    assert chat_job.json()["hyperparameters"]["columns"] == {"text": "messages"}
    pairs_job = submit(ids["pairs"])
    assert pairs_job.json()["hyperparameters"]["columns"] == {
        "text": "prompt",
        "target": "completion",
    }
    for dataset_id, task in ((ids["plain"], "causal-lm"), (ids["chat"], "classification")):
        refused = submit(dataset_id, task)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "columns"
    # A chat column is text only to a causal-LM job.
    body = job_body(ids["chat"], columns={"text": "messages", "label": "messages"})
    wrong = client.post("/jobs", json=body, headers=tenant.headers)
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "columns.text"


def test_the_resolved_settings_say_what_the_job_is_scored_on(
    client, tenant, dataset, upload
) -> None:
    alone = client.post("/jobs", json=job_body(dataset["id"]), headers=tenant.headers).json()
    note = alone["hyperparameters"]["validation"]
    assert note.startswith("no validation data set") and "does not split" in note
    validated = client.post(
        "/jobs",
        json=job_body(dataset["id"], validation_dataset_id=dataset["id"]),
        headers=tenant.headers,
    ).json()
    assert validated["hyperparameters"]["validation"].startswith(f"{dataset['num_rows']} rows")
