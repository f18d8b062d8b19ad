"""Every bad input of issue 5 in one sweep: each gets a clear 4xx naming the problem, and the
stored state (row counts of every table, every file in the store, the upload staging area) is
exactly what it was before the request."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TenantKey

MIB = 1024 * 1024
UPLOAD_LIMIT = 12 * MIB  # above the 10 MB single-line file, below the oversized one


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": UPLOAD_LIMIT})


@dataclass(frozen=True)
class World:
    client: TestClient
    tenant: TenantKey
    train: str
    validation_with_new_labels: str
    integer_labels_not_indices: str
    adapter: str

    def upload(self, filename: str, content: bytes, name: str | None = None) -> Any:
        data = {"name": name} if name is not None else None
        return self.client.post(
            "/datasets",
            headers=self.tenant.headers,
            files={"file": (filename, content)},
            data=data,
        )

    def submit(self, **overrides: Any) -> Any:
        return self.client.post(
            "/jobs", json=job_body(self.train, **overrides), headers=self.tenant.headers
        )

    def raw(self, path: str, content: bytes, content_type: str) -> Any:
        headers = {**self.tenant.headers, "Content-Type": content_type}
        return self.client.post(path, content=content, headers=headers)

    def infer(self, **body: Any) -> Any:
        return self.client.post(
            "/infer", json={"adapter_id": self.adapter, **body}, headers=self.tenant.headers
        )


@dataclass(frozen=True)
class Case:
    send: Callable[[World], Any]
    status: int
    field: str | None
    fragment: str  # must appear in the message (case-insensitive)


def _columns(n: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(n))
    return f"{header}\n{','.join('x' for _ in range(n))}\n".encode()


CASES: dict[str, Case] = {
    # --- dataset uploads
    "empty file": Case(lambda w: w.upload("t.csv", b""), 422, "file", "empty"),
    "header only": Case(lambda w: w.upload("t.csv", b"text,label\n"), 422, "file", "no data"),
    "non-UTF-8 bytes": Case(
        lambda w: w.upload("t.csv", b"text,label\ncaf\xe9 \xff,1\n"), 422, "file", "utf-8"
    ),
    "binary file named .csv": Case(
        lambda w: w.upload("t.csv", bytes(range(256)) * 64), 422, "file", "line"
    ),
    "10 MB single line": Case(
        lambda w: w.upload("t.csv", b"text\n" + b"a" * (10 * MIB)), 422, "file", "line 2"
    ),
    "10,000 columns": Case(lambda w: w.upload("t.csv", _columns(10_000)), 422, "file", "column"),
    "file over the size limit": Case(
        lambda w: w.upload("t.csv", b"text\n" + b"row\n" * (UPLOAD_LIMIT // 4 + MIB)),
        413,
        None,
        "max_upload_bytes",
    ),
    "malformed JSON line": Case(
        lambda w: w.upload("t.jsonl", b'{"text": "a"}\n{"text": \n'), 422, "file", "line 2"
    ),
    "JSON line that is not an object": Case(
        lambda w: w.upload("t.jsonl", b'{"text": "a"}\n[1, 2]\n'), 422, "file", "line 2"
    ),
    "ragged CSV row": Case(
        lambda w: w.upload("t.csv", b"text,label\na,1\nb,1,extra\n"), 422, "file", "line 3"
    ),
    "upload not multipart (JSON)": Case(
        lambda w: w.raw("/datasets", b'{"file": "x"}', "application/json"), 415, None, "multipart"
    ),
    "unsupported file type": Case(lambda w: w.upload("t.exe", b"MZ\x90\x00"), 415, "file", "type"),
    "filename with ..": Case(lambda w: w.upload("../up.csv", b"t\nx\n"), 422, "file", "path"),
    "filename with /": Case(lambda w: w.upload("a/b.csv", b"t\nx\n"), 422, "file", "path"),
    "filename with \\": Case(lambda w: w.upload("a\\b.csv", b"t\nx\n"), 422, "file", "path"),
    "name with ..": Case(lambda w: w.upload("t.csv", b"t\nx\n", "../etc"), 422, "name", "path"),
    "name with /": Case(lambda w: w.upload("t.csv", b"t\nx\n", "a/b"), 422, "name", "path"),
    # --- job submissions
    "missing text column": Case(
        lambda w: w.submit(columns__text=...), 422, "columns.text", "field required"
    ),
    "misspelled label column": Case(
        lambda w: w.submit(columns__label="lable"), 422, "columns.label", "'lable' is not in"
    ),
    "labels of the wrong type (regression on text)": Case(
        lambda w: w.submit(task="regression", columns__label="sentence"),
        422,
        "columns.label",
        "numeric",
    ),
    "integer labels that are not class indices": Case(
        lambda w: w.submit(dataset_id=w.integer_labels_not_indices),
        422,
        "columns.label",
        "class indices",
    ),
    "validation labels the training set lacks": Case(
        lambda w: w.submit(validation_dataset_id=w.validation_with_new_labels),
        422,
        "validation_dataset_id",
        "not in the training data",
    ),
    "unknown base model": Case(
        lambda w: w.submit(base_model="gpt-17"), 422, "base_model", "unknown base model"
    ),
    "target_r > init_r": Case(
        lambda w: w.submit(adalora__target_r=9), 422, "adalora.target_r", "init_r"
    ),
    "zero learning rate": Case(
        lambda w: w.submit(training__learning_rate=0), 422, "training.learning_rate", "> 0"
    ),
    "negative learning rate": Case(
        lambda w: w.submit(training__learning_rate=-1e-3), 422, "training.learning_rate", "> 0"
    ),
    "infeasible schedule": Case(
        lambda w: w.submit(adalora__t_init=6, adalora__t_final=6),
        422,
        "adalora.t_init",
        "total_steps",
    ),
    "unknown job field": Case(lambda w: w.submit(training__lr=1e-3), 422, "training.lr", "extra"),
    "malformed JSON job body": Case(
        lambda w: w.raw("/jobs", b'{"base_model": ', "application/json"), 422, None, "json"
    ),
    "job body with wrong content type": Case(
        lambda w: w.raw("/jobs", json.dumps(job_body(w.train)).encode(), "text/plain"),
        422,
        None,
        "must be a JSON object",
    ),
    "infer body that is a JSON list": Case(
        lambda w: w.raw("/infer", b'["w1"]', "application/json"),
        422,
        None,
        "must be a JSON object",
    ),
    # --- inference
    "huge max_new_tokens": Case(
        lambda w: w.infer(inputs=["w1"], parameters={"max_new_tokens": 10**9}),
        422,
        "parameters.max_new_tokens",
        "from 1 to 256",
    ),
    "10,000 inputs in one /infer call": Case(
        lambda w: w.infer(inputs=["w1"] * 10_000), 422, "inputs", "at most"
    ),
    "malformed JSON infer body": Case(
        lambda w: w.raw("/infer", b'{"inputs": [', "application/json"), 422, None, "json"
    ),
    "unknown base model on /infer": Case(
        lambda w: w.client.post(
            "/infer",
            json={"adapter_id": None, "base_model": "gpt-17", "inputs": ["w1"]},
            headers=w.tenant.headers,
        ),
        422,
        "base_model",
        "unknown base model",
    ),
}


@pytest.fixture
def world(
    client: TestClient,
    tenant: TenantKey,
    upload: Callable[..., Any],
    stored_adapter: Callable[..., tuple[str, Any]],
) -> World:
    def uploaded(filename: str, content: bytes) -> str:
        response = upload(tenant, filename, content)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    new_labels = [{"sentence": "s", "label": 7}, {"sentence": "t", "label": 0}]
    not_indices = [{"sentence": f"s{i}", "label": 1 + i % 2} for i in range(8)]
    adapter_id, _ = stored_adapter(tenant, seed=3)
    return World(
        client=client,
        tenant=tenant,
        train=uploaded("train.jsonl", jsonl(SST_ROWS)),
        validation_with_new_labels=uploaded("val.jsonl", jsonl(new_labels)),
        integer_labels_not_indices=uploaded("idx.jsonl", jsonl(not_indices)),
        adapter=adapter_id,
    )


@pytest.mark.parametrize("db_backend", ["postgres"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    world: World, snapshot: Callable[[], dict[str, Any]], name: str
) -> None:
    case = CASES[name]
    before = snapshot()
    response = case.send(world)
    assert response.status_code == case.status, (name, response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] and error["message"], error
    assert case.fragment.lower() in error["message"].lower(), (name, error)
    if case.field is not None:
        assert error["field"] == case.field, (name, error)
    assert snapshot() == before, name
