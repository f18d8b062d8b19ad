"""Adapters: metadata, ranks (JSON and heatmap), checked downloads, deletion with eviction."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from application.heatmap import draw_rank_heatmap, rank_grid
from service import adapters as adapter_rows
from service import jobs as job_rows
from service.settings import Settings
from tests.api.conftest import RANK_INFO
from tests.conftest import TenantKey


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_get_and_list(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict], db_backend: str
) -> None:
    first = make_adapter(tenant)
    second = make_adapter(tenant, formats=("peft", "lora", "merged"))
    listed = client.get("/adapters", headers=tenant.headers).json()
    assert [a["id"] for a in listed["items"]] == [second["id"], first["id"]]
    body = client.get(f"/adapters/{first['id']}", headers=tenant.headers).json()
    assert body["formats"] == ["peft", "lora"]
    assert body["labels"] == ["negative", "positive"]
    assert body["job_id"] == first["job_id"] and body["status"] == "ready"
    assert body["size_bytes"] == len(first["zips"]["peft"])
    job = client.get(f"/jobs/{first['job_id']}", headers=tenant.headers).json()
    assert job["adapter_id"] == first["id"] and job["status"] == "succeeded"


def test_ranks_json_sums_to_final_budget(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict]
) -> None:
    adapter = make_adapter(tenant)
    ranks = client.get(f"/adapters/{adapter['id']}/ranks", headers=tenant.headers).json()
    assert ranks["init_r"] == 6 and ranks["target_r"] == 4
    assert ranks["budget"] == {"initial": 24, "target": 16, "final": 16}
    assert sum(m["rank"] for m in ranks["modules"]) == ranks["budget"]["final"]
    assert ranks["modules"] == RANK_INFO["modules"]
    assert [h["step"] for h in ranks["history"]] == [10, 20]


def test_ranks_heatmap_png_and_svg(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict]
) -> None:
    adapter = make_adapter(tenant)
    png = client.get(f"/adapters/{adapter['id']}/ranks?format=png", headers=tenant.headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = client.get(f"/adapters/{adapter['id']}/ranks?format=svg", headers=tenant.headers)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    bad = client.get(f"/adapters/{adapter['id']}/ranks?format=gif", headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "format"


def test_rank_grid_layout() -> None:
    layers, kinds, grid = rank_grid(RANK_INFO["modules"])
    assert layers == [0, 1] and kinds == ["query", "value"]
    assert grid == [[5, 3], [2, 6]]


@pytest.mark.parametrize("fmt", ["peft", "lora"])
def test_download_streams_the_stored_zip(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict], fmt: str
) -> None:
    adapter = make_adapter(tenant)
    response = client.get(
        f"/adapters/{adapter['id']}/download?format={fmt}", headers=tenant.headers
    )
    assert response.status_code == 200
    assert response.content == adapter["zips"][fmt]
    assert response.headers["content-type"] == "application/zip"
    assert f"{adapter['id']}-{fmt}.zip" in response.headers["content-disposition"]
    assert zipfile.ZipFile(io.BytesIO(response.content)).namelist() == ["adalora.json"]


def test_download_missing_format_and_bad_format(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict]
) -> None:
    adapter = make_adapter(tenant)
    merged = client.get(f"/adapters/{adapter['id']}/download?format=merged", headers=tenant.headers)
    assert merged.status_code == 404 and "merged" in merged.json()["error"]["message"]
    bad = client.get(f"/adapters/{adapter['id']}/download?format=onnx", headers=tenant.headers)
    assert bad.status_code == 422


def test_download_with_tampered_artifact_never_completes(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict], settings: Settings
) -> None:
    adapter = make_adapter(tenant)
    path = Path(settings.store_dir or "") / f"adapters/{tenant.id}/{adapter['id']}/peft.zip"
    path.write_bytes(b"X" * len(adapter["zips"]["peft"]))
    size = len(adapter["zips"]["peft"])
    try:
        response = client.get(f"/adapters/{adapter['id']}/download", headers=tenant.headers)
        received = len(response.content)
    except Exception:  # a real HTTP client sees the connection cut short
        received = -1
    assert received < size  # the last chunk is held back until the digest checks out
    info = client.get(f"/adapters/{adapter['id']}", headers=tenant.headers).json()
    assert info["status"] == "corrupt"


def test_download_with_missing_artifact_is_503_and_not_condemned(
    client: TestClient, tenant: TenantKey, make_adapter: Callable[..., dict], settings: Settings
) -> None:
    adapter = make_adapter(tenant)
    path = Path(settings.store_dir or "") / f"adapters/{tenant.id}/{adapter['id']}/lora.zip"
    aside = path.with_suffix(".aside")
    path.rename(aside)
    url = f"/adapters/{adapter['id']}/download?format=lora"
    response = client.get(url, headers=tenant.headers)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "artifact_missing"
    info = client.get(f"/adapters/{adapter['id']}", headers=tenant.headers).json()
    assert info["status"] == "ready"  # a missing file may come back; it is not corruption
    aside.rename(path)
    again = client.get(url, headers=tenant.headers)
    assert again.status_code == 200 and again.content == adapter["zips"]["lora"]


class RecordingEngine:
    def __init__(self) -> None:
        self.evicted: list[str] = []

    def evict(self, adapter_id: str) -> None:
        self.evicted.append(adapter_id)

    def close(self) -> None:  # the app closes its engine at shutdown
        pass


def test_delete_removes_row_files_and_cache_entry(
    client: TestClient,
    app: Any,
    tenant: TenantKey,
    make_adapter: Callable[..., dict],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    engine = RecordingEngine()
    app.state.serving.engine = engine
    adapter = make_adapter(tenant)
    folder = Path(settings.store_dir or "") / f"adapters/{tenant.id}/{adapter['id']}"
    assert len(list(folder.iterdir())) == 2
    assert client.delete(f"/adapters/{adapter['id']}", headers=tenant.headers).status_code == 204
    assert engine.evicted == [adapter["id"]]
    assert list(folder.iterdir()) == []
    assert client.get(f"/adapters/{adapter['id']}", headers=tenant.headers).status_code == 404
    assert client.delete(f"/adapters/{adapter['id']}", headers=tenant.headers).status_code == 404
    with sessions() as session:
        job = job_rows.get_job_by_id(session, adapter["job_id"])
        assert job is not None and job.adapter_id is None
        assert adapter_rows.get_adapter(session, tenant.id, adapter["id"]) is None


def test_tampered_download_over_real_http_is_incomplete(
    live_server: Any, tenant: TenantKey, make_adapter: Callable[..., dict], settings: Settings
) -> None:
    import httpx

    adapter = make_adapter(tenant)
    path = Path(settings.store_dir or "") / f"adapters/{tenant.id}/{adapter['id']}/peft.zip"
    path.write_bytes(b"X" * len(adapter["zips"]["peft"]))
    url = f"{live_server.url}/adapters/{adapter['id']}/download"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=tenant.headers, timeout=30)


@pytest.mark.parametrize("name", ["cost $5 and $x^$", r"$\frac{", "50% $$"])
def test_heatmap_titles_with_dollar_signs_are_plain_text(name: str) -> None:
    """A job or adapter name is user text; matplotlib would parse "$...$" as math and fail."""
    modules = RANK_INFO["modules"]
    for fmt in ("png", "svg"):
        assert draw_rank_heatmap(modules, 8, title=f"{name}: final ranks", fmt=fmt)
