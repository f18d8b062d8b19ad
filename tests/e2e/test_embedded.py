"""The embedded default: `adalora serve` alone (SQLite, local store, SQLite broker, its own
worker subprocess and reconciler), exactly as `scripts/dev serve` runs it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import psutil
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


def event_messages(client: Client, job_id: str) -> set[str]:
    events = client.ok("GET", f"/jobs/{job_id}/events", params={"limit": 1000})["items"]
    return {e["data"].get("message") or e["data"].get("to") for e in events}


def test_embedded_serve_trains_cancels_and_serves_downloads(
    tmp_path: Path, tiny_model: Path, train_csv: Path
) -> None:
    key, port = new_api_key(), free_port()
    home = tmp_path / "home"
    env = service_env(
        {
            "ADALORA_HOME": str(home),
            "ADALORA_API_KEY": key,
            "ADALORA_BASE_MODELS": json.dumps({"tiny": str(tiny_model)}),
        }
    )
    serve = adalora(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    procs = [serve]
    client = Client(f"http://127.0.0.1:{port}", key)
    try:
        client.wait_ready(procs)
        dataset_id = upload(client, train_csv)
        job_id = client.ok("POST", "/jobs", json=job_body(dataset_id))["id"]
        job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
        assert job["status"] == "succeeded", (job, serve.tail())
        check_succeeded_job(client, job_id)
        check_required_fields_only(client, dataset_id, procs)
        cancel_mid_run(client, dataset_id, job_body(dataset_id, max_steps=3000), procs)

        # The worker child is SIGKILLed mid-job: serve starts a new one, the reconciler
        # re-queues the job once its lease expires, and it resumes from its checkpoint.
        body = job_body(dataset_id, max_steps=400, checkpoint_every=5)
        job_id = client.ok("POST", "/jobs", json=body)["id"]
        wait_until(
            lambda: event_messages(client, job_id) & {"checkpoint saved"}, "a checkpoint", procs
        )
        (child,) = [
            c for c in psutil.Process(serve.popen.pid).children() if "worker" in c.cmdline()
        ]
        child.kill()
        job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
        assert job["status"] == "succeeded", (job, serve.tail())
        assert "resumed" in event_messages(client, job_id)
        check_succeeded_job(client, job_id)
    finally:
        serve.stop()
    assert serve.popen.returncode == 0, serve.tail()
    assert not serve.left_children, "adalora serve left its worker running"
    assert (home / "adalora.db").is_file() and (home / "broker.sqlite").is_file()
    assert "Bootstrap API key" not in serve.tail(100_000)  # ADALORA_API_KEY was given


def check_required_fields_only(client: Client, dataset_id: str, procs: list) -> None:
    """A job with only the required fields trains with the service's settings, shows them on
    the job, and the adapter records exactly those settings."""
    body = {key: job_body(dataset_id)[key] for key in ("base_model", "task", "dataset_id")}
    body["columns"] = {"text": "text", "label": "label"}
    job_id = client.ok("POST", "/jobs", json=body)["id"]
    job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, procs)
    assert job["status"] == "succeeded", job
    hp = job["hyperparameters"]
    # 48 rows at the recipe's batch of 16: 3 updates an epoch, at most 20 epochs.
    assert hp["total_steps"] == job["progress"]["step"] == 60
    assert {"training.max_steps", "training.learning_rate", "adalora.init_r"} <= set(
        hp["chosen_by_service"]
    )
    adapter_id = job["adapter_id"]
    archive = client.http.get(f"/adapters/{adapter_id}/download", params={"format": "peft"})
    meta = json.loads(zipfile.ZipFile(io.BytesIO(archive.content)).read("adalora.json"))
    assert hp["training"]["checkpoint_every"] == 6  # chosen at submission: ten a run
    assert meta["training"] == hp["training"]  # what ran is what the job shows
    assert meta["adalora"] == hp["adalora"]


def test_first_start_prints_a_bootstrap_key_once(tmp_path: Path) -> None:
    """Without ADALORA_API_KEY the first start creates a key and prints it; later starts don't."""
    env = service_env({"ADALORA_HOME": str(tmp_path / "home")})
    outputs = []
    for attempt in range(2):
        port = free_port()
        serve = adalora(
            ["serve", "--no-worker", "--port", str(port)], env, tmp_path / f"serve{attempt}.log"
        )
        try:
            Client(f"http://127.0.0.1:{port}", "unused").wait_ready([serve])
        finally:
            serve.stop()
        outputs.append(serve.tail(100_000))
    printed = [line for line in outputs[0].splitlines() if "Bootstrap API key" in line]
    assert len(printed) == 1
    secret = printed[0].rsplit(" ", 1)[-1]
    assert secret.startswith("ak_")
    assert "Bootstrap API key" not in outputs[1]
