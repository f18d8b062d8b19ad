"""Streaming latency through HTTP: /v1/chat/completions on SmolLM2-135M-Instruct, run by hand.

    .venv/bin/python -m bench.stream_http [--streams 1 8 32] [--rounds 3] [--new-tokens 48]

Starts `adalora serve --no-worker` in its own process on a fresh SQLite home, stores 8 AdaLoRA-like
adapters (bench/decode.py's), then for each concurrency S runs S streaming chat requests at once,
request i on adapter i mod 8, greedy. Per request: time to first token (the first chunk with
content, from sending the request) and the time between consecutive content chunks (the decoder
sends a chunk per token unless it holds back a partial character, so a gap is about one token).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.decode import ADAPTERS, KINDS, TOPICS, random_adapter, smollm2_dir
from bench.load_infer import store_adapters
from bench.server import serving

NAME = "SmolLM2-135M-Instruct"


def llama_shapes(model_dir: str) -> dict[str, tuple[int, int]]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = head * config["num_key_value_heads"]
    sizes = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }
    shapes = {}
    for layer in range(config["num_hidden_layers"]):
        for kind in KINDS:
            part = "self_attn" if kind in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            shapes[f"model.layers.{layer}.{part}.{kind}"] = sizes[kind]
    return shapes


async def one_stream(http: httpx.AsyncClient, model: str, topic: str, new: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write a long story about {topic}."}],
        "max_tokens": new,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if not chunk["choices"] or not chunk["choices"][0]["delta"].get("content"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now - started
            else:
                gaps.append(now - last)
            last = now
    return {"ttft": first, "gaps": gaps, "tokens": tokens, "seconds": time.perf_counter() - started}


async def run(url: str, key: str, adapters: list[str], streams: int, new: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=streams + 1)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600) as http:
        started = time.perf_counter()
        done = await asyncio.gather(
            *(
                one_stream(http, adapters[i % len(adapters)], TOPICS[i % len(TOPICS)], new)
                for i in range(streams)
            )
        )
        seconds = time.perf_counter() - started
    gaps = sorted(g for d in done for g in d["gaps"])
    return {
        "tokens_per_s": sum(d["tokens"] for d in done) / seconds,
        "ttft_ms": 1000 * statistics.median(d["ttft"] for d in done if d["ttft"] is not None),
        "token_p50_ms": 1000 * gaps[len(gaps) // 2],
        "token_p99_ms": 1000 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--home", type=Path, default=Path(".adalora"), help="holds the model")
    args = parser.parse_args()
    model_dir = smollm2_dir(args.home.resolve())
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="adalora-stream-") as tmp:
        home = Path(tmp) / "home"
        shapes = llama_shapes(model_dir)
        weights = [random_adapter(seed, shapes) for seed in range(ADAPTERS)]
        key, adapters = store_adapters(home, weights, NAME, {NAME: model_dir})
        settings = {"ADALORA_BASE_MODELS": json.dumps({NAME: model_dir})}
        with serving(home, settings, args.threads) as (url, _):
            asyncio.run(run(url, key, adapters, len(adapters), 2))  # load every adapter
            for round_index in range(args.rounds):
                order = args.streams if round_index % 2 == 0 else list(reversed(args.streams))
                for streams in order:
                    result = asyncio.run(run(url, key, adapters, streams, args.new_tokens))
                    results.setdefault(str(streams), []).append(result)
    for streams, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{streams:>3} streams: {med['tokens_per_s']:7.1f} tok/s"
            f"   TTFT {med['ttft_ms']:7.1f} ms   per token p50 {med['token_p50_ms']:6.1f} ms"
            f"  p99 {med['token_p99_ms']:6.1f} ms"
        )
    print(json.dumps({"threads": args.threads, "new_tokens": args.new_tokens, "runs": results}))


if __name__ == "__main__":
    main()
