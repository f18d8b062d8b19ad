"""Dataset upload: streamed, validated, nothing stored on failure; list, get, delete."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from service.settings import Settings
from service.tables import Dataset
from tests.api.conftest import SST_ROWS, job_body, jsonl
from tests.conftest import TenantKey, data_lines, glue_file


def stored_files(settings: Settings) -> list[Path]:
    root = Path(settings.store_dir or "") / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def dataset_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Dataset)) or 0)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
@pytest.mark.parametrize(
    ("filename", "content", "fmt", "columns"),
    [
        ("train.jsonl", jsonl(SST_ROWS), "jsonl", ["sentence", "label", "score"]),
        ("train.csv", b"text,label\nhello,pos\nbye,neg\n", "csv", ["text", "label"]),
        ("train.tsv", b"text\tlabel\nhello\t1\nbye\t0\n", "tsv", ["text", "label"]),
    ],
)
def test_upload_ok(
    client: TestClient,
    upload: Callable[..., Any],
    tenant: TenantKey,
    store: Any,
    filename: str,
    content: bytes,
    fmt: str,
    columns: list[str],
    db_backend: str,
) -> None:
    response = upload(tenant, filename, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == filename and body["format"] == fmt and body["columns"] == columns
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert body["num_rows"] == content.count(b"\n") - (0 if fmt == "jsonl" else 1)
    key = f"datasets/{tenant.id}/{body['id']}/data.{fmt}"
    assert store.open_read(key, body["sha256"]) == content
    assert client.get(f"/datasets/{body['id']}", headers=tenant.headers).json() == body


BAD_FILES = [
    ("empty.csv", b"", 422, "empty"),
    ("header.csv", b"text,label\n", 422, "no data rows"),
    ("latin.csv", "text\ncaf\xe9\n".encode("latin-1"), 422, "line 2"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", 422, "line 1"),
    ("ragged.csv", b"text,label\na,1\nb\n", 422, "line 3, column 'label'"),
    ("bad.jsonl", b'{"text": "a"}\n{"text": ]\n', 422, "line 2"),
    ("long.jsonl", b'{"t": "' + b"x" * 300 + b'"}\n', 422, "longer than 200 bytes"),
    ("wide.csv", b"a,b,c,d,e\n1,2,3,4,5\n", 422, "max_columns"),
    ("notes.txt", b"text\nhello\n", 415, "unsupported file type"),
    ("../escape.csv", b"text\nhello\n", 422, "no paths"),
    ("dir/inner.csv", b"text\nhello\n", 422, "no paths"),
]


@pytest.mark.parametrize(("filename", "content", "status", "fragment"), BAD_FILES)
def test_bad_files_are_rejected_and_nothing_is_stored(
    settings: Settings,
    tenant: TenantKey,
    sessions: sessionmaker[Session],
    filename: str,
    content: bytes,
    status: int,
    fragment: str,
) -> None:
    strict = settings.model_copy(update={"max_line_bytes": 200, "max_columns": 4})
    with TestClient(create_app(strict), raise_server_exceptions=False) as client:
        response = client.post(
            "/datasets", headers=tenant.headers, files={"file": (filename, content)}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == "file"
    assert fragment in error["message"]
    assert stored_files(strict) == []
    assert dataset_count(sessions) == 0
    assert list((Path(strict.home) / "uploads").glob("*")) == []


def test_bad_form_fields(client: TestClient, tenant: TenantKey) -> None:
    no_file = client.post("/datasets", headers=tenant.headers, files={"name": (None, "x")})
    assert (no_file.status_code, no_file.json()["error"]["field"]) == (422, "file")
    form_encoded = client.post("/datasets", headers=tenant.headers, data={"name": "x"})
    assert form_encoded.status_code == 415
    bad_name = client.post(
        "/datasets",
        headers=tenant.headers,
        files={"file": ("a.csv", b"t\nx\n")},
        data={"name": "../../etc"},
    )
    assert (bad_name.status_code, bad_name.json()["error"]["field"]) == (422, "name")
    as_json = client.post("/datasets", headers=tenant.headers, json={"file": "x"})
    assert as_json.status_code == 415


def test_over_max_upload_bytes_is_413(
    settings: Settings, tenant: TenantKey, sessions: sessionmaker[Session]
) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 1000})
    content = b"text\n" + b"row\n" * 2000  # ~8 KB: over the limit, under the multipart slack
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        response = client.post(
            "/datasets", headers=tenant.headers, files={"file": ("big.csv", content)}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        # Streamed without Content-Length: refused while reading, before it all arrives.
        boundary = uuid.uuid4().hex
        sent = {"bytes": 0}

        def chunked() -> Iterator[bytes]:
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="huge.csv"\r\nContent-Type: text/csv\r\n\r\ntext\n'
            ).encode()
            yield head
            for _ in range(200):
                chunk = b"x" * 1023 + b"\n"
                sent["bytes"] += len(chunk)
                yield chunk * 64
            yield f"\r\n--{boundary}--\r\n".encode()

        streamed = client.post(
            "/datasets",
            headers={
                **tenant.headers,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            content=chunked(),
        )
    assert streamed.status_code == 413
    assert stored_files(small) == [] and dataset_count(sessions) == 0


def test_list_pagination_and_delete(
    client: TestClient,
    upload: Callable[..., Any],
    tenant: TenantKey,
    settings: Settings,
) -> None:
    ids = [upload(tenant, f"d{i}.csv", b"text,label\na,1\nb,0\n").json()["id"] for i in range(3)]
    first = client.get("/datasets?limit=2", headers=tenant.headers).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    rest = client.get(f"/datasets?limit=2&cursor={first['next_cursor']}", headers=tenant.headers)
    assert [d["id"] for d in rest.json()["items"]] == [ids[0]]
    assert rest.json()["next_cursor"] is None
    assert client.get("/datasets?limit=0", headers=tenant.headers).status_code == 422

    job = client.post(
        "/jobs",
        json=job_body(ids[0], columns={"text": "text", "label": "label"}),
        headers=tenant.headers,
    )
    assert job.status_code == 202, job.text
    busy = client.delete(f"/datasets/{ids[0]}", headers=tenant.headers)
    assert busy.status_code == 409
    client.post(f"/jobs/{job.json()['id']}/cancel", headers=tenant.headers)
    assert client.delete(f"/datasets/{ids[0]}", headers=tenant.headers).status_code == 204
    assert client.get(f"/datasets/{ids[0]}", headers=tenant.headers).status_code == 404
    assert client.delete(f"/datasets/{ids[0]}", headers=tenant.headers).status_code == 404
    assert len(stored_files(settings)) == 2
    # The finished job outlives its dataset.
    kept = client.get(f"/jobs/{job.json()['id']}", headers=tenant.headers).json()
    assert kept["dataset_id"] is None and kept["status"] == "cancelled"


@pytest.mark.parametrize(
    "name",
    [
        "RTE/train.tsv",
        "RTE/dev.tsv",
        "MRPC/train.tsv",
        "MRPC/dev.tsv",
        "SST-2/train.tsv",
        "SST-2/dev.tsv",
    ],
)
def test_glue_files_upload_as_published(
    upload: Callable[..., Any], tenant: TenantKey, name: str
) -> None:
    path = glue_file(name)
    response = upload(tenant, name.replace("/", "-"), path.read_bytes())
    assert response.status_code == 201, response.text
    assert response.json()["num_rows"] == data_lines(path)


@pytest.mark.parametrize("name", ["CoLA/train.tsv", "CoLA/dev.tsv"])
def test_headerless_glue_files_upload_with_header_false(
    client: TestClient, tenant: TenantKey, name: str
) -> None:
    """GLUE's CoLA files have no header row: as published they are refused with a hint, and
    with header=false every line is a row, in columns column_1..column_4."""
    path = glue_file(name)
    files = {"file": (name.replace("/", "-"), path.read_bytes())}
    refused = client.post("/datasets", headers=tenant.headers, files=files)
    assert refused.status_code == 422
    assert "header=false" in refused.json()["error"]["message"]
    response = client.post(
        "/datasets", headers=tenant.headers, files=files, data={"header": "false"}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    lines = len([line for line in path.read_bytes().split(b"\n") if line.strip()])
    assert dataset["num_rows"] == lines and dataset["header"] is False
    assert dataset["columns"] == ["column_1", "column_2", "column_3", "column_4"]


def test_header_must_be_a_boolean_for_a_delimited_file(
    client: TestClient, tenant: TenantKey
) -> None:
    csv_file = {"file": ("t.csv", b"a,b\n1,2\n")}
    bad = client.post("/datasets", headers=tenant.headers, files=csv_file, data={"header": "maybe"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "header"
    jsonl_file = {"file": ("t.jsonl", jsonl(SST_ROWS))}
    bad = client.post(
        "/datasets", headers=tenant.headers, files=jsonl_file, data={"header": "false"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "header"


@pytest.mark.parametrize("db_backend", ["postgres", "sqlite"])
def test_upload_idempotency_key_replays_conflicts_and_wins_races_once(
    live_server: Any, tenant: TenantKey, sessions: sessionmaker[Session], settings: Settings
) -> None:
    import concurrent.futures
    import threading

    import httpx

    content = jsonl(SST_ROWS)
    headers = {**tenant.headers, "Idempotency-Key": "upload-1"}
    start = threading.Barrier(6)

    def send(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            start.wait()
            response = http.post("/datasets", headers=headers, files={"file": ("t.jsonl", content)})
            return response.status_code, response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(6)))
    assert len({dataset_id for _, dataset_id in results}) == 1
    assert sorted(code for code, _ in results) == [200] * 5 + [201]
    assert dataset_count(sessions) == 1
    assert len(stored_files(settings)) == 1  # the losers' files were removed

    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        other = jsonl(SST_ROWS[:-1])
        changed = http.post("/datasets", headers=headers, files={"file": ("t.jsonl", other)})
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_conflict"
    assert changed.json()["error"]["field"] == "Idempotency-Key"
    assert dataset_count(sessions) == 1 and len(stored_files(settings)) == 1
