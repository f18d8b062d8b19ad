"""Fault 1 at process level: a celery worker SIGKILLed mid-training. The reconciler of the next
worker re-queues the job once its lease expires, the run resumes from the last checkpoint, and
the adapter it publishes is exactly the adapter of an uninterrupted run of the same job. The
store and the rows agree afterwards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from adalora_core.formats.bundle import read_adapter, weights_to_state_dict
from tests.e2e.harness import Client, adalora, free_port, new_api_key, upload, wait_until
from tests.reliability.consistency import assert_store_matches_rows
from tests.reliability.services import PrivateRedis, reliability_env
from tests.worker.service_fixtures import job_body, save_tiny_bert, write_sentiment_csv

WAIT_S = 120.0


def _events(client: Client, job_id: str) -> list[dict[str, Any]]:
    """All of the job's events, following the pages to the end."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.ok("GET", f"/jobs/{job_id}/events", params={"after": after, "limit": 1000})
        if not page["items"]:
            return found
        found += page["items"]
        after = page["next_after"]


def _last_checkpoint_step(client: Client, job_id: str) -> int:
    steps = [
        e["data"]["step"]
        for e in _events(client, job_id)
        if e["data"].get("message") == "checkpoint saved"
    ]
    return max(steps, default=0)


def _tensors(client: Client, job_id: str) -> dict[str, torch.Tensor]:
    adapter_id = client.job(job_id)["adapter_id"]
    peft = client.http.get(f"/adapters/{adapter_id}/download", params={"format": "peft"})
    assert peft.status_code == 200, peft.text
    weights = read_adapter(peft.content)
    return weights_to_state_dict(weights.modules, weights.head)


@pytest.mark.slow
def test_killed_worker_resumes_to_the_uninterrupted_adapter(
    tmp_path: Path, make_pg_database: Callable[[], str]
) -> None:
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    key, port, database_url = new_api_key(), free_port(), make_pg_database()
    home = tmp_path / "home"
    env = reliability_env(
        home, database_url, redis_server.url, key, save_tiny_bert(tmp_path / "tiny")
    )
    api = adalora(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log")
    worker = adalora(["worker", "--hostname", "w1@rel"], env, tmp_path / "worker1.log")
    procs = [api, worker]
    client = Client(f"http://127.0.0.1:{port}", key)
    try:
        client.wait_ready(procs)
        dataset_id = upload(client, write_sentiment_csv(tmp_path / "train.csv", 48))
        body = job_body(dataset_id, max_steps=400, checkpoint_every=5)
        reference = client.ok("POST", "/jobs", json=body)["id"]
        assert client.wait_status(reference, {"succeeded", "failed"}, procs)["status"] == (
            "succeeded"
        )

        interrupted = client.ok("POST", "/jobs", json=body)["id"]
        # Kill it between checkpoints, so some steps are lost and must be redone.
        wait_until(
            lambda: (
                5
                <= _last_checkpoint_step(client, interrupted)
                < client.job(interrupted)["progress"]["step"]
            ),
            "a checkpoint and progress past it",
            procs,
            WAIT_S,
        )
        worker.kill()
        procs.remove(worker)
        assert client.job(interrupted)["status"] == "running"
        worker = adalora(["worker", "--hostname", "w2@rel"], env, tmp_path / "worker2.log")
        procs.append(worker)
        job = client.wait_status(interrupted, {"succeeded", "failed", "cancelled"}, procs)
        assert job["status"] == "succeeded", job

        kinds = [
            (e["kind"], e["data"].get("to") or e["data"].get("message"))
            for e in _events(client, interrupted)
        ]
        assert ("status", "queued") in kinds[1:], kinds  # re-queued by the reconciler
        assert ("log", "resumed") in kinds, kinds
        want, got = _tensors(client, reference), _tensors(client, interrupted)
        assert sorted(want) == sorted(got)
        for name, tensor in want.items():
            assert torch.equal(tensor, got[name]), name
        assert_store_matches_rows(database_url, home / "artifacts")
    finally:
        for proc in procs:
            proc.stop()
        redis_server.kill()
