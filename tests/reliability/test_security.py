"""Security items of issue 5 not covered elsewhere: /infer's per-key rate limit, constant-time
key comparison on every authentication, and archives holding only the adapter's own files."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import tenants
from service.settings import Settings
from service.store import LocalStore
from service.tables import Adapter
from tests.conftest import TenantKey
from tests.reliability.jobs import queued_job
from tests.worker.service_fixtures import save_tiny_bert
from worker.runner import run_job

# What a download of each format may hold: the bundle, never training state or foreign paths.
PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "adalora.json"}
LORA_FILES = {"adapter_config.json", "adapter_model.safetensors", "adalora.json"}
MERGED_REQUIRED = {"config.json", "model.safetensors"}
FORBIDDEN_FRAGMENTS = ("optimizer", "scheduler", "rng", "ckpt", "checkpoint", "trainer_state")


def test_infer_rate_limit_is_per_key_with_retry_after(
    settings: Settings,
    tenant: TenantKey,
    other_tenant: TenantKey,
    stored_adapter: Callable[..., tuple[str, Any]],
) -> None:
    from api.main import create_app

    strict = settings.model_copy(update={"infer_rate_per_s": 0.001, "infer_burst": 2})
    adapter_id, _ = stored_adapter(tenant, seed=1)
    body = {"adapter_id": adapter_id, "inputs": ["w1"]}
    with TestClient(create_app(strict), raise_server_exceptions=False) as client:
        codes = [client.post("/infer", json=body, headers=tenant.headers) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429], codes[-1].text
        limited = codes[-1]
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Another key has its own bucket: its request is judged on its merits (404: not its
        # adapter), not refused by the first key's limit.
        other = client.post("/infer", json=body, headers=other_tenant.headers)
        assert other.status_code == 404


def test_authentication_sends_only_the_secrets_hash_to_the_database(
    client: TestClient, tenant: TenantKey
) -> None:
    """A key is found by the sha256 of the presented secret (a unique index), so no part of a
    secret is stored, sent to the database or compared byte by byte: an attacker who times the
    lookup learns about a hash they cannot steer, not about the secret."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append(f"{statement} {parameters!r}")

    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert client.get("/datasets", headers=tenant.headers).status_code == 200
        wrong = tenant.secret[:-4] + ("AAAA" if not tenant.secret.endswith("AAAA") else "BBBB")
        denied = client.get("/datasets", headers={"Authorization": f"Bearer {wrong}"})
        assert denied.status_code == 401
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    everything = "\n".join(sent)
    for secret in (tenant.secret, wrong):
        assert secret[3:11] not in everything  # not the secret, not even a prefix of it
        assert tenants.hash_secret(secret) in everything


def test_downloads_hold_only_the_adapters_files(
    tmp_path: Path, sessions: sessionmaker[Session], store: LocalStore, settings: Settings
) -> None:
    torch.set_num_threads(1)
    worker_settings = settings.model_copy(
        update={
            "base_models": {"tiny": str(save_tiny_bert(tmp_path / "tiny"))},
            "progress_write_interval_s": 0.0,
        }
    )
    job_id = queued_job(sessions, store, tmp_path, worker_settings, max_steps=6, checkpoint_every=2)
    outcome = run_job(job_id, worker_settings, sessions, store)
    assert outcome.status == "succeeded"
    with sessions() as session:
        adapter = session.get(Adapter, outcome.adapter_id)
        formats = dict(adapter.formats)
    assert set(formats) == {"peft", "lora", "merged"}
    for fmt, info in formats.items():
        names = zipfile.ZipFile(io.BytesIO(store.open_read(info["storage_key"]))).namelist()
        for name in names:
            assert not name.startswith(("/", "\\")) and ".." not in name.split("/"), (fmt, name)
            assert "\\" not in name and ":" not in name, (fmt, name)
            assert not any(bad in name.lower() for bad in FORBIDDEN_FRAGMENTS), (fmt, name)
        if fmt == "peft":
            assert set(names) == PEFT_FILES, names
        elif fmt == "lora":
            assert set(names) <= LORA_FILES | {"README.md"} and "adapter_model.safetensors" in names
        else:
            assert set(names) >= MERGED_REQUIRED, names
            assert all("/" not in name for name in names), names  # flat: one model directory
