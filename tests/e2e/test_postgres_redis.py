"""The production shape: PostgreSQL + Redis, the API and a separate real `celery worker`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import (
    Client,
    adalora,
    cancel_mid_run,
    check_succeeded_job,
    free_port,
    new_api_key,
    service_env,
    upload,
    wait_until,
)
from service_fixtures import job_body

pytestmark = pytest.mark.slow


def checkpoint_saved(client: Client, job_id: str) -> bool:
    events = client.ok("GET", f"/jobs/{job_id}/events", params={"limit": 1000})["items"]
    return any(e["data"].get("message") == "checkpoint saved" for e in events)


def test_jobs_on_postgres_and_redis_with_a_real_worker(
    tmp_path: Path, postgres_url: str, redis_url: str, tiny_model: Path, train_csv: Path
) -> None:
    key, port = new_api_key(), free_port()
    env = service_env(
        {
            "ADALORA_HOME": str(tmp_path / "home"),
            "ADALORA_DATABASE_URL": postgres_url,
            "ADALORA_BROKER_URL": redis_url,
            "ADALORA_API_KEY": key,
            "ADALORA_BASE_MODELS": json.dumps({"tiny": str(tiny_model)}),
        }
    )
    api = adalora(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log")
    worker = adalora(["worker", "--hostname", "w1@e2e"], env, tmp_path / "worker1.log")
    procs = [api, worker]
    client = Client(f"http://127.0.0.1:{port}", key)
    try:
        client.wait_ready(procs)
        dataset_id = upload(client, train_csv)

        job_id = client.ok("POST", "/jobs", json=job_body(dataset_id))["id"]
        job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
        assert job["status"] == "succeeded", job
        check_succeeded_job(client, job_id)

        cancel_mid_run(client, dataset_id, job_body(dataset_id, max_steps=3000), procs)

        # A worker killed mid-job: its lease expires, the next worker's reconciler re-queues
        # the job and it finishes from its last checkpoint.
        body = job_body(dataset_id, max_steps=400, checkpoint_every=5)
        job_id = client.ok("POST", "/jobs", json=body)["id"]
        wait_until(lambda: checkpoint_saved(client, job_id), "a checkpoint", procs)
        worker.kill()
        procs.remove(worker)
        assert client.job(job_id)["status"] == "running"
        worker = adalora(["worker", "--hostname", "w2@e2e"], env, tmp_path / "worker2.log")
        procs.append(worker)
        job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
        assert job["status"] == "succeeded", (job, worker.tail())
        events = client.ok("GET", f"/jobs/{job_id}/events", params={"limit": 1000})["items"]
        kinds = [(e["kind"], e["data"].get("to") or e["data"].get("message")) for e in events]
        assert ("status", "queued") in kinds[1:], kinds  # re-queued by the reconciler
        assert ("log", "resumed") in kinds, kinds
        check_succeeded_job(client, job_id)
    finally:
        for proc in procs:
            proc.stop()
