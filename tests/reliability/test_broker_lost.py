"""Fault 2: Redis restarts with its queue emptied while one job runs and another waits queued.
The running job finishes once (its worker holds the lease); the queued job, whose message is
gone, is found by the reconciler and sent again; nothing stays stuck and nothing runs twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Client,
    adalora,
    check_succeeded_job,
    free_port,
    new_api_key,
    upload,
    wait_until,
)
from tests.reliability.consistency import assert_store_matches_rows
from tests.reliability.services import PrivateRedis, reliability_env
from tests.worker.service_fixtures import job_body, save_tiny_bert, write_sentiment_csv

WAIT_S = 120.0


def statuses(client: Client, job_id: str) -> list[str]:
    """Every status transition of the job, following the event pages to the end."""
    found, after = [], 0
    while True:
        page = client.ok("GET", f"/jobs/{job_id}/events", params={"after": after, "limit": 1000})
        found += [e["data"]["to"] for e in page["items"] if e["kind"] == "status"]
        if not page["items"]:
            return found
        after = page["next_after"]


@pytest.mark.slow
def test_jobs_survive_a_broker_restart_with_an_empty_queue(
    tmp_path: Path, make_pg_database: Callable[[], str]
) -> None:
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    key, port, database_url = new_api_key(), free_port(), make_pg_database()
    env = reliability_env(
        tmp_path / "home",
        database_url,
        redis_server.url,
        key,
        save_tiny_bert(tmp_path / "tiny"),
    )
    api = adalora(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log")
    worker = adalora(["worker", "--hostname", "w1@rel"], env, tmp_path / "worker.log")
    procs = [api, worker]
    client = Client(f"http://127.0.0.1:{port}", key)
    try:
        client.wait_ready(procs)
        dataset_id = upload(client, write_sentiment_csv(tmp_path / "train.csv", 48))
        running = client.ok("POST", "/jobs", json=job_body(dataset_id, max_steps=1000))["id"]
        wait_until(
            lambda: client.job(running)["progress"]["step"] >= 2, "job 1 to train", procs, WAIT_S
        )
        waiting = client.ok("POST", "/jobs", json=job_body(dataset_id, max_steps=6))["id"]
        wait_until(
            lambda: redis_server.queue_length("training") == 1, "job 2's message", procs, WAIT_S
        )
        assert client.job(running)["status"] == "running"
        assert client.job(waiting)["status"] == "queued"

        redis_server.kill()
        redis_server.start()
        assert redis_server.queue_length("training") == 0  # the message is gone

        for job_id in (running, waiting):
            job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
            assert job["status"] == "succeeded", job
            check_succeeded_job(client, job_id)
        # Each ran exactly once: one lease, one "running" transition, never re-queued.
        for job_id in (running, waiting):
            assert statuses(client, job_id) == ["queued", "running", "uploading", "succeeded"]
        assert_store_matches_rows(database_url, tmp_path / "home" / "artifacts")
    finally:
        for proc in procs:
            proc.stop()
        redis_server.kill()
