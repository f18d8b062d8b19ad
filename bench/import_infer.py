"""Bring your own adapter: POST /adapters/import of a PEFT LoRA adapter, then the first /infer on
it (the cold load of its bundle from the store), timed against a running `adalora serve`.

Each round imports a fresh PEFT adapter (LoRA r=8 on query/value of every layer of
all-MiniLM-L6-v2, with a 3-class head, about 1.2 MB), sends one /infer on it (cold: read from the
store, checked, folded onto the shared base), a second one (warm, for reference), and deletes
it. The first round also loads the base model, so it is reported apart and left out of the
medians.

    .venv/bin/python -m bench.import_infer --rounds 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server import serving  # noqa: E402
from tests.peft_adapters import LABELS, MINILM, TEXTS, save_minilm_adapter, zip_dir  # noqa: E402


def timed(call: object) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = call()  # type: ignore[operator]
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed, response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    import peft

    with tempfile.TemporaryDirectory(prefix="adalora-import-") as tmp:
        key = "ak_bench_" + os.urandom(16).hex()
        archives = []
        for number in range(args.rounds):
            config = peft.LoraConfig(
                task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]
            )
            directory = save_minilm_adapter(Path(tmp) / f"peft{number}", config, seed=number)
            archives.append(zip_dir(directory))
        rows = []
        with serving(Path(tmp) / "home", {"ADALORA_API_KEY": key}) as (url, _):
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
            )
            form = {"base_model": MINILM, "labels": json.dumps(LABELS)}
            for number, archive in enumerate(archives):
                files = {"file": ("adapter.zip", archive, "application/zip")}
                import_ms, created = timed(
                    lambda files=files: http.post("/adapters/import", files=files, data=form)
                )
                adapter_id = created.json()["id"]
                body = {"adapter_id": adapter_id, "inputs": TEXTS[:1]}
                first_ms, _ = timed(lambda body=body: http.post("/infer", json=body))
                warm_ms, _ = timed(lambda body=body: http.post("/infer", json=body))
                http.delete(f"/adapters/{adapter_id}").raise_for_status()
                row = {"round": number, "import_ms": import_ms, "first_infer_ms": first_ms}
                rows.append({**row, "warm_infer_ms": warm_ms})
                print(json.dumps(rows[-1]), flush=True)
    steady = rows[1:]
    summary = {
        "rounds": len(steady),
        "archive_bytes": len(archives[0]),
        "first_round": rows[0],
        **{
            f"median_{name}": statistics.median(r[name] for r in steady)
            for name in ("import_ms", "first_infer_ms", "warm_infer_ms")
        },
        **{
            f"range_{name}": [min(r[name] for r in steady), max(r[name] for r in steady)]
            for name in ("import_ms", "first_infer_ms", "warm_infer_ms")
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
