"""/infer's serving policies at 1 and 32 clients, next to the bare model's forward: lingering
`max_wait_ms` for more rows against dispatching at once (rows that arrive during a forward form
the next batch) and no batching; and the key / adapter-row lookups read from SQL on every request
against cached (application/ttl_cache.py). Run by hand:

    .venv/bin/python -m bench.infer_dispatch --rounds 2 --seconds 15 [--client raw] \
        [--variants "no lookup cache" "dispatch at once" "no batching"]

Each round runs every (clients, variant) once through ``bench/load_infer.py`` (a fresh server
each, 8 adapters, one torch thread), rotating the variants' order between rounds; the table
gives medians over rounds. The bare forward is all-MiniLM-L6-v2 on 32 such sentences per batch,
tokenization included, one torch thread: the ceiling the service's rows/s is compared with.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.infer import minilm_path  # noqa: E402
from bench.load_infer import CLIENTS, WORDS  # noqa: E402

VARIANTS = {
    "linger 5 ms": ["--batching", "on", "--max-wait-ms", "5"],
    "dispatch at once": ["--batching", "on", "--max-wait-ms", "0"],
    "forward in the batcher's thread": [
        "--batching",
        "on",
        "--max-wait-ms",
        "0",
        "--encoder-forward",
        "thread",
    ],
    "no batching": ["--batching", "off"],
    "no lookup cache": ["--batching", "on", "--max-wait-ms", "0", "--lookup-cache-ttl-s", "0"],
}


def bare_rows_per_s(batches: int = 30, rows: int = 32) -> float:
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    rng = random.Random(0)
    sentences = [
        [" ".join(rng.choices(WORDS, k=rng.randint(4, 16))) for _ in range(rows)]
        for _ in range(batches)
    ]
    times = []
    with torch.inference_mode():
        for batch in sentences:
            started = time.perf_counter()
            model(**tokenizer(batch, padding=True, return_tensors="pt"))
            times.append(time.perf_counter() - started)
    return rows / statistics.median(times[3:])


def load(clients: int, variant: str, seconds: float, client: str) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "load_infer.py"), "--clients", str(clients)]
    command += ["--adapters", "8", "--seconds", str(seconds), "--client", client]
    command += VARIANTS[variant]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["no lookup cache", "dispatch at once", "no batching"],
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="httpx",
        help="the load generator's HTTP client (bench/load_infer.py --client)",
    )
    args = parser.parse_args()
    bare = [bare_rows_per_s()]
    results: dict[tuple[int, str], list[dict]] = {}
    names = list(args.variants)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for clients in (1, 32):
            for variant in order:
                results.setdefault((clients, variant), []).append(
                    load(clients, variant, args.seconds, args.client)
                )
        bare.append(bare_rows_per_s())
    ceiling = statistics.median(bare)
    print(f"bare forward: {ceiling:.1f} rows/s (median of {len(bare)} measurements)")
    print(f"load generator: {args.client}")
    print(
        "| clients | variant | requests/s | share of the bare forward | p50 ms | p99 ms "
        "| rows per forward | server cores | load generator cores |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (clients, variant), runs in results.items():
        rate = statistics.median(r["requests_per_s"] for r in runs)
        p50 = statistics.median(r["latency_ms"]["p50"] for r in runs)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in runs)
        rows = statistics.median(r["rows_per_forward"] or 0 for r in runs)
        server = statistics.median(r["cpu_cores"]["server"] for r in runs)
        generator = statistics.median(r["cpu_cores"]["load_generator"] for r in runs)
        print(
            f"| {clients} | {variant} | {rate:.1f} | {rate / ceiling:.0%} | {p50:.1f} | {p99:.1f} "
            f"| {rows:.1f} | {server:.2f} | {generator:.2f} |"
        )


if __name__ == "__main__":
    main()
