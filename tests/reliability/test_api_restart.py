"""Fault 3: the API process is SIGKILLed during uploads and submissions and started again.
Nothing half-written is visible afterwards, and retrying with the same Idempotency-Key gives
the same resource (a new one only where the first attempt never landed)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Client, Proc, adalora, free_port, new_api_key, upload
from tests.reliability.consistency import assert_store_matches_rows
from tests.reliability.services import reliability_env
from tests.worker.service_fixtures import job_body, save_tiny_bert, write_sentiment_csv

CHUNK = b"x" * 1023 + b"\n"
SUBMISSIONS = 40


class Api:
    """`adalora serve --no-worker` that the test can SIGKILL and start again on the same port."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.port = env, logs, free_port()
        self.starts = 0
        self.proc: Proc | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, client: Client) -> None:
        self.starts += 1
        argv = ["serve", "--no-worker", "--port", str(self.port)]
        self.proc = adalora(argv, self.env, self.logs / f"api-{self.starts}.log")
        client.wait_ready([self.proc])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.stop()


def _slow_multipart(boundary: str, sent: threading.Event) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\ntext\n'
    ).encode()
    for _ in range(4000):  # ~4 MB, slowly: the API dies long before the end
        yield CHUNK * 8
        sent.set()
        time.sleep(0.01)
    yield f"\r\n--{boundary}--\r\n".encode()


def _store_files(home: Path) -> list[str]:
    root = home / "artifacts" / "datasets"
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.slow
def test_api_killed_during_uploads_and_submissions(
    tmp_path: Path, make_pg_database: Callable[[], str]
) -> None:
    home = tmp_path / "home"
    key, database_url = new_api_key(), make_pg_database()
    env = reliability_env(
        home,
        database_url,
        f"sqla+sqlite:///{home / 'broker.sqlite'}",
        key,
        save_tiny_bert(tmp_path / "tiny"),
    )
    api = Api(env, tmp_path)
    client = Client(api.url, key)
    train_csv = write_sentiment_csv(tmp_path / "train.csv", 48)
    try:
        api.start(client)
        kept = upload(client, train_csv)

        # 1. Killed in the middle of a streamed upload.
        boundary = uuid.uuid4().hex
        sent = threading.Event()
        outcome: dict[str, Any] = {}

        def stream() -> None:
            try:
                outcome["response"] = client.http.post(
                    "/datasets",
                    content=_slow_multipart(boundary, sent),
                    headers={
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Idempotency-Key": "upload-1",
                    },
                )
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        uploader = threading.Thread(target=stream)
        uploader.start()
        assert sent.wait(30)
        time.sleep(0.3)
        api.kill()
        uploader.join(60)
        assert "error" in outcome, outcome  # the client never got an answer
        api.start(client)
        listed = client.ok("GET", "/datasets")["items"]
        assert [d["id"] for d in listed] == [kept]
        assert len(_store_files(home)) == 1  # only the finished upload's file

        # The retry with the same key lands once; a second retry replays it.
        def retry() -> httpx.Response:
            with train_csv.open("rb") as handle:
                return client.http.post(
                    "/datasets",
                    files={"file": ("big.csv", handle)},
                    headers={"Idempotency-Key": "upload-1"},
                )

        first, second = retry(), retry()
        assert (first.status_code, second.status_code) == (201, 200), (first.text, second.text)
        assert first.json()["id"] == second.json()["id"]

        # 2. Killed as soon as the first of 40 concurrent submissions (distinct keys) is
        # answered, while the others are in flight.
        keys = [f"submit-{i}" for i in range(SUBMISSIONS)]
        first_answer = threading.Event()
        body = job_body(kept, max_steps=6)

        def submit(idem: str) -> tuple[int, str] | None:
            try:
                with httpx.Client(base_url=api.url, timeout=30) as http:
                    response = http.post(
                        "/jobs",
                        json=body,
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
                    )
                    first_answer.set()
                    return response.status_code, response.json().get("id", "")
            except httpx.HTTPError:
                return None

        with ThreadPoolExecutor(SUBMISSIONS) as pool:
            futures = [pool.submit(submit, idem) for idem in keys]
            assert first_answer.wait(60)
            api.kill()
            answers = dict(zip(keys, (f.result() for f in futures), strict=True))
        codes = [None if a is None else a[0] for a in answers.values()]
        api.start(client)
        landed = client.ok("GET", "/jobs", params={"limit": 200})["items"]
        assert 1 <= len(landed) <= SUBMISSIONS
        for job in landed:  # every visible job is complete: resolved, with its first event
            assert job["status"] == "queued" and job["hyperparameters"]["total_steps"] == 6
            events = client.ok("GET", f"/jobs/{job['id']}/events")["items"]
            # The first status event and the short-schedule warning, written with the job.
            assert [(e["kind"], e["data"].get("to")) for e in events] == [
                ("status", "queued"),
                ("warning", None),
            ]

        retried = {}
        for idem in keys:
            response = client.http.post("/jobs", json=body, headers={"Idempotency-Key": idem})
            assert response.status_code in (200, 202), response.text
            retried[idem] = response.json()["id"]
        after = client.ok("GET", "/jobs", params={"limit": 200})["items"]
        assert len(after) == SUBMISSIONS and {j["id"] for j in after} == set(retried.values())
        assert {j["id"] for j in landed} <= set(retried.values())
        # Key by key: whoever saw a 202 gets the very job it was told about, not just "a job".
        for idem, answer in answers.items():
            if answer is not None and answer[0] == 202:
                assert retried[idem] == answer[1], idem
        answered = sum(code == 202 for code in codes)
        assert 1 <= answered <= len(landed), (codes, len(landed))  # every 202 seen has landed
        assert None in codes, codes  # ... and some requests were cut off by the kill
        assert sorted(p.name for p in (home / "uploads").glob("*")) == []
        assert_store_matches_rows(database_url, home / "artifacts")
    finally:
        if api.proc is not None:
            api.proc.stop()
