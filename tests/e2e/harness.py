"""Run the real service as processes (`adalora serve`, `adalora worker`) and drive it over HTTP."""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_api_key() -> str:
    return "ak_" + secrets.token_urlsafe(24)


class Proc:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.left_children = False
        self._handle = log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no cleanup."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process itself (as Ctrl-C/docker stop would); it must take its own
        children down. Anything left in its process group afterwards is recorded and killed."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        deadline = time.monotonic() + 10
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.left_children = self.group_alive()
        if self.left_children:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._handle.close()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        return True


def adalora(args: list[str], env: dict[str, str], log: Path) -> Proc:
    return Proc([sys.executable, "-m", "cli.main", *args], env, log)


def service_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADALORA_")}
    env.update(
        {
            "ADALORA_PROGRESS_WRITE_INTERVAL_S": "0",
            "ADALORA_HEARTBEAT_INTERVAL_S": "0.5",
            "ADALORA_LEASE_SECONDS": "4",
            "ADALORA_RECONCILE_INTERVAL_S": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
        }
    )
    env.update(extra)
    return env


def wait_until(
    check: Callable[[], Any], what: str, procs: list[Proc], timeout: float = WAIT_S
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for proc in procs:
            if proc.popen.poll() is not None:
                pytest.fail(f"{proc.log.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in procs)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.2)


class Client:
    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def job(self, job_id: str) -> dict[str, Any]:
        return self.ok("GET", f"/jobs/{job_id}")

    def wait_ready(self, procs: list[Proc]) -> None:
        def ready() -> bool:
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, "the API to answer /healthz", procs)

    def wait_status(self, job_id: str, statuses: set[str], procs: list[Proc]) -> dict[str, Any]:
        return wait_until(
            lambda: (job := self.job(job_id))["status"] in statuses and job,
            f"job {job_id} to reach {statuses}",
            procs,
        )


def upload(client: Client, path: Path) -> str:
    with path.open("rb") as handle:
        return client.ok("POST", "/datasets", files={"file": (path.name, handle)})["id"]


def check_succeeded_job(client: Client, job_id: str) -> dict[str, Any]:
    """Ranks add up to the final budget; every format downloads intact and loads; the
    adapter answers /infer."""
    job = client.job(job_id)
    assert job["status"] == "succeeded", job
    adapter_id = job["adapter_id"]
    adapter = client.ok("GET", f"/adapters/{adapter_id}")
    assert sorted(adapter["formats"]) == ["lora", "merged", "peft"]
    ranks = client.ok("GET", f"/adapters/{adapter_id}/ranks")
    total = sum(m["rank"] for m in ranks["modules"])
    assert total == ranks["budget"]["final"] == adapter["total_rank"]
    assert total <= ranks["budget"]["target"] < ranks["budget"]["initial"]
    assert ranks["history"], "the rank history is empty"
    for fmt, member in (
        ("peft", "adalora.json"),
        ("lora", "adapter_config.json"),
        ("merged", "config.json"),
    ):
        response = client.http.get(f"/adapters/{adapter_id}/download", params={"format": fmt})
        assert response.status_code == 200, response.text
        import hashlib

        assert hashlib.sha256(response.content).hexdigest() == response.headers["x-checksum-sha256"]
        names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
        assert member in names, (fmt, names)
    from adalora_core.formats.bundle import read_adapter

    peft = client.http.get(f"/adapters/{adapter_id}/download", params={"format": "peft"})
    assert read_adapter(peft.content).total_rank == total
    check_infer(client, adapter)
    return adapter


def check_infer(client: Client, adapter: dict[str, Any]) -> None:
    """The trained adapter answers /infer: one labelled row per input, scores summing to 1."""
    answer = client.ok(
        "POST", "/infer", json={"adapter_id": adapter["id"], "inputs": ["a good film", "bad plot"]}
    )
    assert answer["adapter_id"] == adapter["id"] and len(answer["outputs"]) == 2
    for row in answer["outputs"]:
        assert row["label"] in adapter["labels"], row
        scores = row["scores"]
        values = scores.values() if isinstance(scores, dict) else scores
        assert abs(sum(values) - 1) < 1e-4, row


def cancel_mid_run(
    client: Client, dataset_id: str, body: dict[str, Any], procs: list[Proc]
) -> None:
    """A long job is cancelled once it has made progress; it stops within a step or two."""
    job_id = client.ok("POST", "/jobs", json=body)["id"]
    wait_until(
        lambda: client.job(job_id)["progress"]["step"] >= 2, f"job {job_id} to make progress", procs
    )
    cancelled = client.ok("POST", f"/jobs/{job_id}/cancel")
    assert cancelled["status"] in ("cancelling", "cancelled")
    step_at_cancel = cancelled["progress"]["step"]
    job = client.wait_status(job_id, {"cancelled", "failed", "succeeded"}, procs)
    assert job["status"] == "cancelled", job
    assert job["adapter_id"] is None
    assert job["progress"]["step"] <= step_at_cancel + 2, (step_at_cancel, job["progress"])
