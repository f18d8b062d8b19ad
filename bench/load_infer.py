"""Load test of POST /infer, run by hand: many concurrent clients over many adapters.

    .venv/bin/python bench/load_infer.py [--clients 200] [--adapters 50] [--seconds 60]

Starts `adalora serve --no-worker` in its own process on a fresh SQLite home with
all-MiniLM-L6-v2 as the base, stores ``--adapters`` AdaLoRA-like adapters (random rank patterns,
as in bench/infer.py) with their rows, then runs ``--clients`` asyncio clients in this process,
each sending one-sentence requests to a random adapter back to back for ``--seconds``. Samples the
server's resident memory once a second. The last line is one JSON object: requests, errors by
status, requests/s, latency percentiles, server RSS (start, peak, end, and the peak of the last
third of the run, to show whether memory levels off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adalora_core.compute_choices import ENCODER_PLACEMENTS  # noqa: E402
from adalora_core.formats.bundle import AdapterWeights  # noqa: E402
from bench.infer import minilm_path, random_adapter  # noqa: E402
from bench.server import log_tail, serving  # noqa: E402

BASE = "all-MiniLM-L6-v2"
WORDS = [
    "a",
    "gorgeous",
    "witty",
    "film",
    "the",
    "plot",
    "was",
    "dull",
    "and",
    "the",
    "acting",
    "superb",
    "but",
    "far",
    "too",
    "long",
]


def store_adapters(
    home: Path,
    adapters: list[AdapterWeights],
    base_model: str = BASE,
    base_models: dict[str, str] | None = None,
) -> tuple[str, list[str]]:
    """Migrate the home's database, make a tenant + key, publish the adapters as the worker
    does (artifacts in the store, then their rows)."""
    from adalora_core.formats.bundle import write_bundle
    from application.publishing import publish_adapter
    from service import tenants
    from service.db import make_engine, make_sessionmaker, upgrade_to_head
    from service.settings import Settings
    from service.store import get_store

    settings = Settings(home=home, base_models=base_models or {})
    upgrade_to_head(settings.database_url)
    store = get_store(settings)
    engine = make_engine(settings.database_url)
    ids = []
    with make_sessionmaker(engine)() as session:
        tenant = tenants.create_tenant(session, "load")
        _, secret = tenants.create_api_key(session, tenant.id, "load")
        session.commit()
        for index, weights in enumerate(adapters):
            work = home / "bundles" / str(index)
            bundle = write_bundle(weights, work / "bundle")
            ids.append(
                publish_adapter(session, store, tenant.id, bundle, work, base_model=base_model)
            )
    engine.dispose()
    return secret, ids


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


Post = Callable[[dict[str, Any]], Awaitable[int]]
CLIENTS = ("httpx", "raw")  # the load generator's HTTP clients (--client)


class RawHttp:
    """One keep-alive HTTP/1.1 connection on asyncio streams, for ``--client raw``: a load
    generator that costs the machine little CPU (httpx took 62% of one of this machine's two
    cores at 160 requests/s), so the server under test keeps the cores, as with a remote client."""

    def __init__(self, url: str, key: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.head = (
            f"POST /infer HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: dict[str, Any]) -> int:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        self.writer.write(self.head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def client_loop(
    post: Post,
    adapters: list[str],
    stop_at: float,
    latencies: list[float],
    statuses: Counter[str],
    failures: list[str],
    seed: int,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        body = {
            "adapter_id": rng.choice(adapters),
            "inputs": [" ".join(rng.choices(WORDS, k=rng.randint(4, 16)))],
        }
        started = time.monotonic()
        try:
            status = await post(body)
            statuses[str(status)] += 1
            if status == 200:
                latencies.append(time.monotonic() - started)
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
            statuses[exc.__class__.__name__] += 1
            failures.append(f"{time.monotonic() - started:.1f}s into the request: {exc!r}")


async def batcher_counts(http: httpx.AsyncClient) -> tuple[float, float]:
    """(forwards, rows) the server's batcher has run so far, from /metrics."""
    text = (await http.get("/metrics")).text
    values = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in text.splitlines())
        if name in ("adalora_infer_batches_total", "adalora_infer_batch_rows_total")
    }
    return values["adalora_infer_batches_total"], values["adalora_infer_batch_rows_total"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (the forward process is a
    grandchild, through the fork server, started from the batcher's thread)."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = Path(f"/proc/{current}/task").iterdir()
            children = [c for t in tasks for c in (t / "children").read_text().split()]
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        pids.extend(int(c) for c in children)
    return total


async def run_load(
    url: str,
    key: str,
    adapters: list[str],
    clients: int,
    seconds: float,
    pid: int,
    client: str = "httpx",
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    rss: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:
        # Warm-up: every adapter loaded once, so the timed part measures steady serving.
        for adapter_id in adapters:
            response = await http.post("/infer", json={"adapter_id": adapter_id, "inputs": ["hi"]})
            response.raise_for_status()
        rss.append((0.0, rss_mib(pid)))
        raw = [RawHttp(url, key) for _ in range(clients)] if client == "raw" else []

        async def post_httpx(body: dict[str, Any]) -> int:
            return (await http.post("/infer", json=body)).status_code

        posts: list[Post] = [c.post for c in raw] or [post_httpx] * clients
        server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        forwards = await batcher_counts(http)
        started = time.monotonic()
        stop_at = started + seconds

        async def sample() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(1)
                rss.append((time.monotonic() - started, rss_mib(pid)))

        tasks = [
            client_loop(post, adapters, stop_at, latencies, statuses, failures, seed)
            for seed, post in enumerate(posts)
        ]
        await asyncio.gather(sample(), *tasks)
        elapsed = time.monotonic() - started
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
        batches, rows = (b - a for a, b in zip(forwards, await batcher_counts(http), strict=True))
        for connection in raw:
            connection.close()
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    last_third = [m for t, m in rss if t >= 2 * seconds / 3]
    total = sum(statuses.values())
    return {
        "clients": clients,
        "adapters": len(adapters),
        "seconds": round(elapsed, 1),
        "requests": total,
        "statuses": dict(statuses),
        "errors": total - statuses.get("200", 0),
        "first_failures": failures[:5],
        "requests_per_s": round(statuses.get("200", 0) / elapsed, 1),
        "latency_ms": {
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": round(1000 * ordered[-1], 1) if ordered else None,
            "mean": round(1000 * statistics.fmean(ordered), 1) if ordered else None,
        },
        "client": client,
        "rows_per_forward": round(rows / batches, 1) if batches else None,
        "cpu_cores": {
            "server": round(server_cpu / elapsed, 2),
            "load_generator": round(client_cpu / elapsed, 2),
        },
        "server_rss_mib": {
            "after_warmup": round(rss[0][1], 1),
            "peak": round(max(m for _, m in rss), 1),
            "peak_last_third": round(max(last_third), 1) if last_third else None,
            "end": round(rss[-1][1], 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument(
        "--batching",
        choices=("on", "off"),
        default="on",
        help="the server's dynamic batching (ADALORA_INFER_BATCHING)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=None,
        help="how long the batcher lingers for more rows (ADALORA_MAX_WAIT_MS; default: the "
        "server's)",
    )
    parser.add_argument(
        "--lookup-cache-ttl-s",
        type=float,
        default=None,
        help="how long the server trusts a key / adapter row it read (ADALORA_LOOKUP_CACHE_TTL_S)",
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="httpx",
        help="the load generator's HTTP client: httpx, or raw keep-alive HTTP/1.1 on asyncio "
        "streams (far less CPU, so more of a small machine is left to the server)",
    )
    parser.add_argument(
        "--encoder-forward",
        choices=ENCODER_PLACEMENTS,
        default=None,
        help="where the server runs encoder forwards (ADALORA_INFER_ENCODER_FORWARD)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="adalora-load-") as tmp:
        home = Path(tmp) / "home"
        key, adapters = store_adapters(home, [random_adapter(s) for s in range(args.adapters)])
        settings = {
            "ADALORA_BASE_MODELS": json.dumps({BASE: minilm_path()}),
            "ADALORA_INFER_BATCHING": "true" if args.batching == "on" else "false",
        }
        if args.max_wait_ms is not None:
            settings["ADALORA_MAX_WAIT_MS"] = str(args.max_wait_ms)
        if args.lookup_cache_ttl_s is not None:
            settings["ADALORA_LOOKUP_CACHE_TTL_S"] = str(args.lookup_cache_ttl_s)
        if args.encoder_forward is not None:
            settings["ADALORA_INFER_ENCODER_FORWARD"] = args.encoder_forward
        with serving(home, settings, args.threads) as (url, pid):
            result = asyncio.run(
                run_load(url, key, adapters, args.clients, args.seconds, pid, args.client)
            )
        if result["errors"]:
            result["server_log_tail"] = log_tail(home)
    result["batching"] = args.batching
    result["max_wait_ms"] = args.max_wait_ms
    result["encoder_forward"] = args.encoder_forward
    result["clients"] = args.clients
    print(json.dumps(result))


if __name__ == "__main__":
    main()
