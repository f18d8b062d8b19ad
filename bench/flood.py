"""One tenant floods generation; does another tenant still get answered? Run by hand:

    .venv/bin/python -m bench.flood [--rounds 5] [--streams 48] [--stream-tokens 200]

Starts `adalora serve --no-worker` on a fresh home with SmolLM2-135M-Instruct and two tenants,
A (with 8 AdaLoRA-like adapters, bench/decode.py's) and B. B's probe is a 4-token chat on the
plain base, non-streaming, greedy. First B's probe runs alone on the idle server (``rounds``
times). Then A floods: one /v1/completions request of 288 prompts × n=8 (2,304 rows, the
issue's request), and ``streams`` long streaming chats on its adapters at once; while A's rows
decode, B's probe runs ``rounds`` times again. The last line is one JSON object: B's median
latency idle and under the flood and their ratio, what A's requests got (status codes, whether
429s carried Retry-After), and the decoder's counters from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.decode import ADAPTERS, TOPICS, random_adapter, smollm2_dir
from bench.load_infer import store_adapters
from bench.server import serving
from bench.stream_http import llama_shapes

NAME = "SmolLM2-135M-Instruct"
PROBE = {
    "model": NAME,
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 4,
    "temperature": 0,
}


def second_tenant(home: Path) -> str:
    """Tenant B, with a key of its own, in the home's database."""
    from service import tenants
    from service.db import make_engine, make_sessionmaker
    from service.settings import Settings

    engine = make_engine(Settings(home=home).database_url)
    with make_sessionmaker(engine)() as session:
        tenant = tenants.create_tenant(session, "tenant-b")
        _, secret = tenants.create_api_key(session, tenant.id, "probe")
        session.commit()
    engine.dispose()
    return secret


async def probe(http: httpx.AsyncClient, key: str) -> float:
    started = time.perf_counter()
    response = await http.post(
        "/v1/chat/completions", json=PROBE, headers={"Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    return time.perf_counter() - started


async def a_stream(
    http: httpx.AsyncClient, key: str, model: str, topic: str, tokens: int, seen: Counter
) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write a long story about {topic}."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            _note(r, seen)
            async for _ in r.aiter_lines():
                pass
    except (httpx.HTTPError, asyncio.CancelledError):
        seen["stream cut by the bench"] += 1


def _note(response: httpx.Response, seen: Counter) -> None:
    label = str(response.status_code)
    if response.status_code == 429:
        label += (
            " with Retry-After" if "retry-after" in response.headers else " without Retry-After"
        )
    seen[label] += 1


async def flood_round(
    url: str, a_key: str, b_key: str, adapters: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    seen: Counter = Counter()
    limits = httpx.Limits(max_connections=args.streams + 8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as http:
        big = {
            "model": adapters[0],
            "prompt": ["Tell me a fact."] * 288,
            "n": 8,
            "max_tokens": 16,
        }
        response = await http.post(
            "/v1/completions", json=big, headers={"Authorization": f"Bearer {a_key}"}
        )
        _note(response, seen)
        streams = [
            asyncio.ensure_future(
                a_stream(
                    http, a_key, adapters[i % len(adapters)], TOPICS[i % len(TOPICS)],
                    args.stream_tokens, seen,
                )
            )
            for i in range(args.streams)
        ]  # fmt: skip
        await asyncio.sleep(args.settle)  # A's rows are decoding now
        latencies = [await probe(http, b_key) for _ in range(args.rounds)]
        metrics = (await http.get("/metrics")).text
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return {"latencies_s": latencies, "a_answers": dict(seen), "metrics": _counters(metrics)}


def _counters(metrics: str) -> dict[str, float]:
    wanted = ("adalora_decode_preempted_rows_total", "adalora_decode_refused_rows_total")
    found = {}
    for line in metrics.splitlines():
        match = re.match(r"^(\w+)\{[^}]*\} ([0-9.e+]+)$", line)
        if match and match.group(1) in wanted:
            found[match.group(1)] = float(match.group(2))
    return found


async def idle(url: str, b_key: str, rounds: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        return [await probe(http, b_key) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="B's probes, idle and flooded")
    parser.add_argument("--streams", type=int, default=48, help="A's long streams")
    parser.add_argument("--stream-tokens", type=int, default=200)
    parser.add_argument("--settle", type=float, default=5.0, help="s before B's probes")
    parser.add_argument("--home", type=Path, default=Path(".adalora"), help="holds the model")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="ADALORA_X=VALUE",
        help="a server setting, e.g. ADALORA_INFER_MAX_RUNNING_ROWS_PER_TENANT=8 (repeatable)",
    )
    args = parser.parse_args()
    model_dir = smollm2_dir(args.home.resolve())
    with tempfile.TemporaryDirectory(prefix="adalora-flood-") as tmp:
        home = Path(tmp) / "home"
        weights = [random_adapter(seed, llama_shapes(model_dir)) for seed in range(ADAPTERS)]
        a_key, adapters = store_adapters(home, weights, NAME, {NAME: model_dir})
        b_key = second_tenant(home)
        settings = dict(pair.split("=", 1) for pair in args.setting)
        settings["ADALORA_BASE_MODELS"] = json.dumps({NAME: model_dir})
        with serving(home, settings) as (url, _):
            asyncio.run(idle(url, a_key, 1))  # load the base
            for adapter in adapters:  # and every adapter
                with httpx.Client(base_url=url, timeout=600) as http:
                    body = {**PROBE, "model": adapter, "max_tokens": 1}
                    http.post(
                        "/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {a_key}"},
                    ).raise_for_status()
            alone = asyncio.run(idle(url, b_key, args.rounds))
            flooded = asyncio.run(flood_round(url, a_key, b_key, adapters, args))
    idle_s = statistics.median(alone)
    flood_s = statistics.median(flooded["latencies_s"])
    print(f"B's 4-token chat: idle {idle_s:.2f} s, under A's flood {flood_s:.2f} s "
          f"({flood_s / idle_s:.2f}x); A got {flooded['a_answers']}")  # fmt: skip
    print(
        json.dumps(
            {
                "b_idle_s": alone,
                "b_flooded_s": flooded["latencies_s"],
                "b_idle_median_s": idle_s,
                "b_flooded_median_s": flood_s,
                "ratio": flood_s / idle_s,
                "a_answers": flooded["a_answers"],
                "decoder": flooded["metrics"],
                "streams": args.streams,
                "stream_tokens": args.stream_tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
