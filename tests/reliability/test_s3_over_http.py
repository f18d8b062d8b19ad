"""The S3 store over real HTTP: the API and a real worker process with
ADALORA_STORE_BACKEND=s3, pointed at an S3 server on loopback (moto's standalone server; see
s3_server.py). A data set is uploaded, a tiny job trains and publishes its adapter, every
download matches the bucket's bytes, a delete empties its prefix; then the server is stopped in
the middle of a large upload and started again: nothing stored is lost, the upload gets a clear
503, and `adalora store gc` leaves the bucket holding exactly what the rows name."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.consistency import referenced_keys
from service.db import make_engine, make_sessionmaker
from tests.e2e.harness import Client, adalora, free_port, new_api_key, upload, wait_until
from tests.reliability.s3_server import LoopbackS3
from tests.reliability.services import reliability_env
from tests.worker.service_fixtures import job_body, save_tiny_bert, write_sentiment_csv

LARGE_ROWS = 300_000  # about 10 MB: above boto3's 8 MiB multipart threshold, under the limit
SLOW_S3_BYTES_PER_S = 2_000_000  # the large upload's parts take seconds, to be cut mid-way


def rows_name(database_url: str) -> set[str]:
    """Every storage key a row points to (service.consistency's own definition)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return referenced_keys(session)
    finally:
        engine.dispose()


def adalora_store(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "store", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_s3_over_http_through_a_job_a_delete_and_a_restart_mid_upload(
    tmp_path: Path, make_pg_database: Callable[[], str]
) -> None:
    key, port, database_url = new_api_key(), free_port(), make_pg_database()
    home = tmp_path / "home"
    with LoopbackS3() as s3:
        env = reliability_env(
            home,
            database_url,
            f"sqla+sqlite:///{home / 'broker.sqlite'}",
            key,
            save_tiny_bert(tmp_path / "tiny"),
        )
        env.update(s3.env())
        api = adalora(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log")
        worker = adalora(["worker", "--hostname", "w1@s3"], env, tmp_path / "worker.log")
        procs = [api, worker]
        client = Client(f"http://127.0.0.1:{port}", key)
        try:
            client.wait_ready(procs)

            # 1. Upload: the bytes land in the bucket under the row's key with its digest.
            train_csv = write_sentiment_csv(tmp_path / "train.csv", 48)
            dataset = client.ok("GET", f"/datasets/{upload(client, train_csv)}")
            stored = s3.objects()
            assert len(stored) == 1 and list(stored.values()) == [dataset["sha256"]], stored

            # 2. A tiny job reads it from S3, checkpoints there, and publishes its adapter.
            body = job_body(dataset["id"], max_steps=6, checkpoint_every=2)
            job_id = client.ok("POST", "/jobs", json=body)["id"]
            job = client.wait_status(job_id, {"succeeded", "failed"}, procs)
            assert job["status"] == "succeeded", job
            adapter = client.ok("GET", f"/adapters/{job['adapter_id']}")
            stored = s3.objects()
            # The training state went with the job's end; what stays of its checkpoints is each
            # step's adapter, which a checkpoint row names.
            in_checkpoints = [k for k in stored if k.startswith("checkpoints/")]
            assert in_checkpoints and all(k.endswith("/peft.zip") for k in in_checkpoints), stored
            for fmt in adapter["formats"]:
                got = client.http.get(f"/adapters/{adapter['id']}/download", params={"format": fmt})
                assert got.status_code == 200, got.text
                digest = hashlib.sha256(got.content).hexdigest()
                in_bucket = [k for k in stored if k.endswith(f"/{adapter['id']}/{fmt}.zip")]
                assert len(in_bucket) == 1, (fmt, sorted(stored))
                assert digest == got.headers["x-checksum-sha256"] == stored[in_bucket[0]]
            assert set(stored) == rows_name(database_url)
            before_restart = stored

            # 3. The server stops while a large upload's parts are on their way.
            large = write_sentiment_csv(tmp_path / "large.csv", LARGE_ROWS, seed=1)
            assert large.stat().st_size > 8 * 1024 * 1024
            outcome: dict[str, Any] = {}

            def send() -> None:
                with large.open("rb") as handle:
                    outcome["response"] = client.http.post(
                        "/datasets", files={"file": (large.name, handle)}, timeout=120
                    )

            s3.proxy.bytes_per_s = SLOW_S3_BYTES_PER_S
            sender = threading.Thread(target=send)
            sender.start()
            wait_until(s3.unfinished_uploads, "the API to begin its multipart upload", procs)
            time.sleep(0.5)  # parts in flight
            s3.stop()
            sender.join(120)
            response: httpx.Response = outcome["response"]
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "store_unavailable", error
            assert error["message"] == "the artifact store is unavailable; try again shortly"
            assert "Traceback" not in response.text and s3.url not in response.text
            assert response.headers["retry-after"] == "5"
            s3.proxy.bytes_per_s = None
            s3.start()

            # Nothing stored is lost; the failed upload made no row and no object, only an
            # unfinished multipart upload the server holds for it.
            listed = client.ok("GET", "/datasets")["items"]
            assert [d["id"] for d in listed] == [dataset["id"]]
            assert s3.objects() == before_restart
            assert len(s3.unfinished_uploads()) == 1
            peft = client.http.get(f"/adapters/{adapter['id']}/download", params={"format": "peft"})
            assert hashlib.sha256(peft.content).hexdigest() == peft.headers["x-checksum-sha256"]

            # 4. Garbage collection: the unfinished upload goes, every object a row names stays.
            gc = adalora_store(["gc", "--grace-s", "0"], env)
            assert gc.returncode == 0, gc.stderr
            assert "1 unfinished write(s) removed" in gc.stdout, gc.stdout
            assert s3.unfinished_uploads() == []
            assert s3.objects() == before_restart
            check = adalora_store(["check", "--json"], env)
            assert check.returncode == 0, check.stdout + check.stderr
            assert json.loads(check.stdout) == {"orphans": [], "missing": []}

            # 5. Deleting the adapter empties its prefix in the bucket.
            deleted = client.http.delete(f"/adapters/{adapter['id']}")
            assert deleted.status_code == 204, deleted.text
            left = s3.objects()
            assert not [k for k in left if f"/{adapter['id']}/" in k], sorted(left)
            # The job's checkpoints are the job's, not the adapter's: they stay.
            kept = {k for k in before_restart if k.startswith(("datasets/", "checkpoints/"))}
            assert set(left) == kept == rows_name(database_url)
            # Nothing went to the local store: S3 held everything.
            local = home / "artifacts"
            assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()]
        finally:
            for proc in procs:
                proc.stop()
