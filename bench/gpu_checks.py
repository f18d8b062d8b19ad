"""The checks bench/gpu_check.sh runs on a GPU that the test suite cannot (it has no GPU), one
subcommand each; each prints one JSON object as its last line and exits 0 only when it passed.

    python -m bench.gpu_checks info
    python -m bench.gpu_checks kill-resume --precision bf16|fp16|fp32 [--device cuda]
    python -m bench.gpu_checks serve-bf16 [--device cuda]
    python -m bench.gpu_checks ddp [--device cuda]

Every check also runs with ``--device cpu`` (gloo instead of NCCL for ``ddp``; CPU autocast for
bf16/fp16), which is how they were tried on the development machine: see docs/benchmarks.md,
"GPU". The tiny models and the bounds are the test suite's own (tests/core, tests/serving).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "core"))  # the core tests import their helpers bare

# kill-resume: 40 updates, a checkpoint every 5, budget reduced over updates 6..30, dropout on
# (so the RNG state in the checkpoint matters); the run is killed once it is 3 updates past
# the checkpoint of update 15, so those updates are lost and redone.
STEPS, EVERY, KILL_AFTER_CHECKPOINT, LOST = 40, 5, 15, 3


def device_info() -> dict[str, Any]:
    from adalora_core.precision import native_bf16

    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        device = torch.device("cuda", index)
        gpus.append(
            {
                "name": torch.cuda.get_device_name(index),
                "capability": list(torch.cuda.get_device_capability(index)),
                "memory_gib": round(torch.cuda.get_device_properties(index).total_memory / 2**30),
                "native_bf16": native_bf16(device),
            }
        )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "nccl": torch.distributed.is_nccl_available(),
    }


# ---- kill-resume ------------------------------------------------------------------------------
def train_child(args: argparse.Namespace) -> dict[str, Any]:
    """One training run (a separate process the parent may SIGKILL); it notes each update in
    ``--progress`` and sleeps ``--step-delay`` after it, so the kill lands mid-run."""
    from tiny_trainer_model import sentiment_rows

    from adalora_core.config import AdaLoraConfig
    from adalora_core.run_plan import plan_run
    from adalora_core.tasks import TaskSpec
    from adalora_core.trainer import ProgressEvent, TrainCallbacks, train
    from adalora_core.training_config import TrainingConfig

    torch.use_deterministic_algorithms(True, warn_only=True)
    progress = Path(args.progress)
    progress.parent.mkdir(parents=True, exist_ok=True)
    steps_seen: list[int] = []

    class Notes(TrainCallbacks):
        def on_progress(self, event: ProgressEvent) -> None:
            steps_seen.append(event.step)
            progress.write_text(str(event.step))
            time.sleep(args.step_delay)

    labels = ("negative", "positive")
    rows = sentiment_rows(60, seed=3)
    result = train(
        base_model=Path(args.base),
        task=TaskSpec("classification", "text", label_column="label", labels=labels),
        train_rows=rows,
        eval_rows=None,
        plan=plan_run(
            len(rows),
            TrainingConfig(
                epochs=None,
                max_steps=STEPS,
                batch_size=8,
                learning_rate=1e-2,
                checkpoint_every=EVERY,
                seed=7,
            ),
            AdaLoraConfig(init_r=4, target_r=2, t_init=5, t_final=10, delta_t=2),
        ),
        output_dir=Path(args.out),
        callbacks=Notes(),
        checkpoint_dir=Path(args.checkpoints),
        device=args.device,
        precision=args.precision,
    )
    return {"steps": result.steps, "first_step": steps_seen[0] if steps_seen else None}


def _child(base: Path, work: Path, name: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "bench.gpu_checks", "train", "--base", str(base),
        "--out", str(work / name / "adapter"), "--checkpoints", str(work / name / "checkpoints"),
        "--progress", str(work / name / "progress"), "--device", args.device,
        "--precision", args.precision, "--step-delay", str(args.step_delay),
    ]  # fmt: skip


def _run(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:5])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def kill_resume(args: argparse.Namespace) -> dict[str, Any]:
    """An uninterrupted run; the same run SIGKILLed between checkpoints and started again on
    its checkpoint folder: the two adapters, tensor by tensor."""
    from tiny_trainer_model import save_tiny_bert

    from adalora_core.checkpoint import list_checkpoints, load_checkpoint
    from adalora_core.formats.bundle import read_adapter

    work = Path(tempfile.mkdtemp(prefix="gpu-check-resume-"))
    base = save_tiny_bert(work / "tiny-bert", dropout=0.1)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1"}
    whole = _run(_child(base, work, "whole", args), env)

    killed = subprocess.Popen(_child(base, work, "killed", args), env=env, cwd=ROOT)
    progress = work / "killed" / "progress"
    deadline = time.monotonic() + 300
    while True:
        step = int(progress.read_text() or 0) if progress.exists() else 0
        if step >= KILL_AFTER_CHECKPOINT + LOST:
            break
        if killed.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run to kill ended or stalled at update {step}")
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    kept = list_checkpoints(work / "killed" / "checkpoints")
    killed_at = int(progress.read_text())
    resumed_from = load_checkpoint(kept[-1]).position.step if kept else 0
    resumed = _run(_child(base, work, "killed", args), env)

    left = read_adapter(work / "whole" / "adapter")
    right = read_adapter(work / "killed" / "adapter")
    worst, bitwise = 0.0, True
    pairs = [
        (getattr(delta, n), getattr(right.modules[path], n))
        for path, delta in left.modules.items()
        for n in ("lora_A", "lora_B", "lora_E")
    ] + [(t, right.head[k]) for k, t in left.head.items()]
    for a, b in pairs:
        bitwise = bitwise and torch.equal(a, b)
        if a.numel():
            worst = max(worst, float((a.float() - b.float()).abs().max()))
    same_history = left.meta.history == right.meta.history
    return {
        "precision": args.precision,
        "device": args.device,
        "steps": [whole["steps"], resumed["steps"]],
        "killed_at_update": killed_at,
        "resumed_from_checkpoint": resumed_from,
        "resumed_first_update": resumed["first_step"],
        "same_rank_history": same_history,
        "bitwise_equal": bitwise,
        "max_abs_diff": worst,
        "passed": bool(
            bitwise
            and same_history
            and resumed_from >= KILL_AFTER_CHECKPOINT
            and resumed["first_step"] == resumed_from + 1
            and whole["steps"] == resumed["steps"] == STEPS
        ),
    }


# ---- serve-bf16 -------------------------------------------------------------------------------
def serve_bf16(args: argparse.Namespace) -> dict[str, Any]:
    """A bf16 engine on ``--device`` against the float32 CPU engine and HF's float32 reference,
    with the bounds of tests/serving/test_bf16_cpu.py."""
    from adalora_core.serving.engine import EngineSettings, InferenceEngine
    from application.engine_factory import serving_dtype
    from tests.serving import test_bf16_cpu as bounds
    from tests.serving.test_decoding import GPT2_RANKS, LLAMA_RANKS, SEED
    from tests.serving.test_mixed_batch import three_adapters
    from tests.serving.tiny_serving import (
        MemorySource,
        base_factory,
        make_adapter,
    )

    device = torch.device(args.device)
    dtype = serving_dtype("bfloat16", device)
    source = MemorySource()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-serve-"))
    classifiers = {k: w for k, w in three_adapters().items() if w.meta.task["kind"] != "regression"}
    for adapter_id, weights in classifiers.items():
        source.add(adapter_id, weights, tmp)
    generators = {}  # adapter id -> (base, weights)
    for base, ranks in (("tiny-gpt2", GPT2_RANKS), ("tiny-llama", LLAMA_RANKS)):
        for name, modules in ranks.items():
            weights = make_adapter(base, "causal-lm", modules, seed=SEED[name])
            generators[f"{base}-{name}"] = (base, weights)
            source.add(f"{base}-{name}", weights, tmp)
    full = InferenceEngine(source, EngineSettings(), base_factory=base_factory)
    half = InferenceEngine(source, EngineSettings(), base_factory=base_factory, device=device,
                           dtype=dtype)  # fmt: skip
    inputs = bounds.texts(24, 20, seed=0)
    worst_probability = 0.0
    for adapter_id in classifiers:
        exact = full.infer(adapter_id, inputs, base_model="tiny-bert")
        rounded = half.infer(adapter_id, inputs, base_model="tiny-bert")
        for want, got in zip(exact, rounded, strict=True):
            for label, p in want["scores"].items():
                worst_probability = max(worst_probability, abs(got["scores"][label] - p))
    prompts = bounds.texts(8, 6, seed=1)
    walks = [
        walk
        for adapter_id, (base, weights) in generators.items()
        for walk in bounds.walk_rows(half, adapter_id, base, weights, prompts)
    ]
    rows, agreeing = len(walks), sum(walk.step < 0 for walk in walks)
    clear_divergences = sum(walk.clear for walk in walks)
    full.close()
    half.close()
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "max_probability_diff": worst_probability,
        "probability_bound": bounds.PROB_BOUND,
        "generation_rows": rows,
        "rows_agreeing_throughout": agreeing,
        "divergences_at_clear_choices": clear_divergences,
        "passed": bool(
            dtype is torch.bfloat16
            and worst_probability <= bounds.PROB_BOUND
            and clear_divergences == 0
            and 4 * agreeing >= 3 * rows
        ),
    }


# ---- ddp --------------------------------------------------------------------------------------
def ddp(args: argparse.Namespace) -> dict[str, Any]:
    """Two ranks (NCCL on GPUs, gloo on the CPU) against one process with the same global batch,
    the settings of tests/core/test_distributed.py."""
    import test_distributed as spec  # tests/core: the suite's DDP settings and comparison
    from tiny_trainer_model import save_tiny_bert

    from adalora_core.launcher import train_data_parallel
    from adalora_core.trainer import train

    work = Path(tempfile.mkdtemp(prefix="gpu-check-ddp-"))
    base = save_tiny_bert(work / "tiny-bert", dropout=0.0)
    one_device = "cuda:0" if args.device.startswith("cuda") else args.device
    single = train(plan=spec.PLAN, **{**spec._kwargs(base, work / "one"), "device": one_device})
    two = train_data_parallel(
        2, plan=spec.PLAN, **{**spec._kwargs(base, work / "two"), "device": args.device}
    )
    difference = spec._max_difference(two.adapter_dir, single.adapter_dir)
    return {
        "device": args.device,
        "backend": "nccl" if args.device.startswith("cuda") else "gloo",
        "same_rank_history": two.history == single.history,
        "max_abs_diff": difference,
        "tolerance": spec.WEIGHT_TOLERANCE,
        "passed": bool(two.history == single.history and difference < spec.WEIGHT_TOLERANCE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info")
    for name in ("kill-resume", "serve-bf16", "ddp", "train"):
        sub = commands.add_parser(name)
        sub.add_argument("--device", default="cuda")
        if name in ("kill-resume", "train"):
            sub.add_argument("--precision", choices=["bf16", "fp16", "fp32"], required=True)
            sub.add_argument("--step-delay", type=float, default=0.05)
        if name == "train":
            for option in ("--base", "--out", "--checkpoints", "--progress"):
                sub.add_argument(option, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "info":
        result = {**device_info(), "passed": True}
    elif args.command == "train":
        result = train_child(args)
        result["passed"] = True
    else:
        result = {"kill-resume": kill_resume, "serve-bf16": serve_bf16, "ddp": ddp}[args.command](
            args
        )
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
