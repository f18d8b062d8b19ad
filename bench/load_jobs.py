"""Burst of concurrent POST /jobs, run by hand (the 100-client correctness check is also a test:
tests/reliability/test_concurrent_submissions.py).

    .venv/bin/python bench/load_jobs.py [--clients 100] [--rounds 3] [--database-url URL]

Starts `adalora serve --no-worker` in its own process (SQLite under a temporary home by default;
pass a PostgreSQL URL to use it, the database must exist and be empty), uploads one dataset, then
for each round sends ``--clients`` submissions at once with distinct Idempotency-Keys, and the
same number again sharing one key. Reports for each burst the wall time, submissions/s, latency
percentiles, and how many jobs exist afterwards (distinct keys: +clients; one key: +1). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server import serving  # noqa: E402

ROWS = "".join(
    json.dumps({"sentence": f"sample sentence {i}", "label": i % 2}) + "\n" for i in range(40)
)


def job_body(dataset_id: str) -> dict[str, Any]:
    return {
        "base_model": "tiny",
        "task": "classification",
        "dataset_id": dataset_id,
        "columns": {"text": "sentence", "label": "label"},
        "adalora": {"init_r": 6, "target_r": 4},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32},
    }


def burst(url: str, key: str, body: dict[str, Any], idem_keys: list[str]) -> dict[str, Any]:
    """Send one submission per key, all released together; codes and latencies."""
    start = threading.Barrier(len(idem_keys))

    def submit(idem: str) -> tuple[int, float]:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            began = time.monotonic()
            response = http.post("/jobs", json=body, headers=headers)
            return response.status_code, time.monotonic() - began

    began = time.monotonic()
    with ThreadPoolExecutor(len(idem_keys)) as pool:
        results = list(pool.map(submit, idem_keys))
    wall = time.monotonic() - began
    latencies = sorted(t for _, t in results)
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "wall_s": round(wall, 2),
        "per_s": round(len(results) / wall, 1),
        "codes": codes,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
    }


def count_jobs(http: httpx.Client) -> int:
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = http.get("/jobs", params=params).json()
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="adalora-jobs-") as tmp:
        home = Path(tmp) / "home"
        key = "ak_load_" + os.urandom(16).hex()
        settings = {
            "ADALORA_API_KEY": key,
            "ADALORA_BASE_MODELS": json.dumps({"tiny": str(Path(tmp) / "tiny")}),
            "ADALORA_JOBS_RATE_PER_S": "0",
        }
        if args.database_url:
            settings["ADALORA_DATABASE_URL"] = args.database_url
        rounds = []
        with serving(home, settings) as (url, _):
            http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
            uploaded = http.post("/datasets", files={"file": ("train.jsonl", ROWS.encode())})
            uploaded.raise_for_status()
            body = job_body(uploaded.json()["id"])
            for number in range(args.rounds):
                before = count_jobs(http)
                keys = [f"r{number}-k{i}" for i in range(args.clients)]
                distinct = burst(url, key, body, keys)
                distinct["new_jobs"] = count_jobs(http) - before
                before = count_jobs(http)
                shared = burst(url, key, body, [f"r{number}-shared"] * args.clients)
                shared["new_jobs"] = count_jobs(http) - before
                rounds.append({"distinct_keys": distinct, "one_key": shared})
    print(
        json.dumps(
            {"clients": args.clients, "database": args.database_url or "sqlite", "rounds": rounds}
        )
    )


if __name__ == "__main__":
    main()
