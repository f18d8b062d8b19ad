"""Fine-tune a base model: one code path for AdaLoRA, the plain LoRA baseline and external
adapters. ``train`` sets a run up from its plan and puts the parts in ``adalora_core.training``
together: the adapted model, the update step, the loop, evaluation and the run's checkpointed
state; then it writes the adapter bundle.

A run is deterministic given its plan: data order comes from a generator seeded per epoch,
and checkpoints hold every piece of state, so a resumed run ends bit for bit where an
uninterrupted one does (on CPU).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adalora_core.distributed import current_replica
from adalora_core.encoding import encode_rows, make_collator
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import AdapterMeta
from adalora_core.hf_loading import head_modules, load_model, load_tokenizer
from adalora_core.inject import rank_modules
from adalora_core.precision import MixedPrecision, training_precision
from adalora_core.run_plan import RunPlan
from adalora_core.tasks import CAUSAL_LM, TaskSpec
from adalora_core.training.adaptation import (
    Adaptation,
    AdaptFn,
    adapt_model,
    module_ranks,
    parameter_count,
    rank_history,
    start_from,
    trainable_parameters,
)
from adalora_core.training.best import BestAdapter
from adalora_core.training.evaluation import Evaluator
from adalora_core.training.events import ProgressEvent, TrainCallbacks
from adalora_core.training.loop import UpdateLoop
from adalora_core.training.optimizer import build_optimizer, build_scheduler
from adalora_core.training.state import RunState
from adalora_core.training.update import LossFn, TokenAccuracy, UpdateStep

# Beside the output directory: the bundle of the best evaluation so far, when a run keeps it.
BEST_DIR = "best-adapter"

__all__ = ["ProgressEvent", "TrainCallbacks", "TrainResult", "train"]


@dataclass
class TrainResult:
    adapter_dir: Path | None
    steps: int
    metrics: dict[str, float]
    ranks: dict[str, int]
    total_rank: int
    trainable_params: int
    cancelled: bool
    final_params: int | None = None  # kept ranks + heads; None for external adapters
    adapter_params: int | None = None  # kept ranks only
    history: list[dict[str, Any]] = field(default_factory=list)
    # The step of the published adapter when the run kept its best evaluation's (None: the
    # last), and whether the early stop ended the run before its last update.
    best_step: int | None = None
    stopped_early: bool = False
    # Tokens of the training rows the updates took, summed over the run (OpenAI's
    # trained_tokens; None until a run sets it).
    trained_tokens: int | None = None


def train(
    *,
    base_model: str | Path,
    task: TaskSpec,
    train_rows: Sequence[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]] | None,
    plan: RunPlan,
    output_dir: Path,
    callbacks: TrainCallbacks | None = None,
    checkpoint_dir: Path | None = None,
    device: str = "auto",
    loss_fn: LossFn | None = None,
    adapt: AdaptFn | None = None,
    base_model_name: str | None = None,
    precision: str = "auto",
    init_from: Path | None = None,
) -> TrainResult:
    """Fine-tune ``base_model`` as ``plan`` says and write the adapter bundle to ``output_dir``.

    The plan (``adalora_core.run_plan.plan_run``) is the run, checked when it was made: its
    settings, update count, schedule and method; ``train_rows`` must be the rows it was planned
    for. A LoRA plan trains plain LoRA of rank ``plan.lora_r``; ``adapt`` replaces the built-in
    adapters (external baselines) and then nothing is saved. A run finding a checkpoint in
    ``checkpoint_dir`` resumes from the newest one; each checkpoint holds the adapter of its step
    as a bundle in ``adapter/``. The bundle records ``base_model_name`` as its
    base (the name it is registered under, not this machine's path), else ``base_model``.
    ``init_from`` (an adapter bundle on the same base) is where the weights and the allocation
    start; the run then evaluates once before its first update, at step 0.

    ``precision`` is one of ``adalora_core.precision.PRECISIONS``: "auto" is fp32 on the CPU,
    bf16 on GPUs that compute it natively and fp16 with loss scaling on older ones.

    Inside a torch.distributed process group (``adalora_core.launcher`` sets one up) the model
    is wrapped in DistributedDataParallel and each rank trains on its share of every
    micro-batch; only rank 0 evaluates, checkpoints and writes the adapter.
    """
    task.validate()
    if len(train_rows) != plan.num_rows:
        raise ConfigError(
            "train_rows", f"has {len(train_rows)} rows; the run was planned for {plan.num_rows}"
        )
    for name, wanted in (
        ("keep_best", plan.training.keep_best),
        ("early_stop_patience", plan.training.early_stop_patience is not None),
    ):
        if wanted and not eval_rows:
            raise ConfigError(f"training.{name}", "needs validation rows (eval_rows)")
    callbacks = callbacks or TrainCallbacks()
    run_device = resolve_device(device)
    try:
        mixed = MixedPrecision(training_precision(precision, run_device), run_device)
    except ValueError as exc:
        raise ConfigError("precision", str(exc)) from exc
    replica = current_replica()
    training = plan.training

    tokenizer = load_tokenizer(base_model)
    train_data = encode_rows(task, train_rows, tokenizer, training.max_length, "train_rows")
    collate = make_collator(task, tokenizer)
    seed_everything(training.seed)
    model = load_model(base_model, task, tokenizer).to(run_device)
    adapted = adapt_model(model, head_modules(task, model), plan, adapt)
    if init_from is not None:
        from adalora_core.formats.bundle import read_adapter

        start_from(adapted, read_adapter(Path(init_from)))

    state = _initial_state(adapted, plan, mixed)
    measured = TokenAccuracy(causal=task.kind == CAUSAL_LM) if task.is_language_modelling else None
    update = UpdateStep(
        state, training, train_data, collate, replica, callbacks, run_device, loss_fn, measured
    )
    evaluator = None
    if eval_rows:
        eval_data = encode_rows(task, eval_rows, tokenizer, training.max_length, "eval_rows")
        evaluator = Evaluator(
            task, eval_data, collate, training.batch_size, mixed, run_device, tokenizer
        )
    lengths = [len(row["input_ids"]) for row in train_data]
    name = base_model_name or str(base_model)

    def snapshot(dest: Path) -> Path:
        """The adapter as it stands, as a bundle: each checkpoint carries one."""
        return _write_bundle(adapted, plan, name, task, _result(adapted, state, True), dest)

    writes = adapt is None and replica.is_main
    best = None
    if replica.is_main and (training.keep_best or training.early_stop_patience is not None):
        best = BestAdapter(
            snapshot if writes and training.keep_best else None,
            Path(output_dir).with_name(BEST_DIR),
            training.early_stop_patience,
        )
    loop = UpdateLoop(
        plan,
        state,
        update,
        evaluator,
        lengths,
        replica,
        callbacks,
        checkpoint_dir,
        snapshot if writes else None,
        evaluate_first=init_from is not None,
        best=best,
    )
    finished = loop.run()
    result = _result(adapted, state, finished)
    result.stopped_early = loop.stopped_early
    result.trained_tokens = loop.trained_tokens()
    if finished and writes:
        if best is not None and best.bundle is not None:
            result.adapter_dir, result.best_step = best.bundle, best.step
        else:
            result.adapter_dir = _write_bundle(adapted, plan, name, task, result, output_dir)
    return result


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but is not available")
    return resolved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _initial_state(adapted: Adaptation, plan: RunPlan, mixed: MixedPrecision) -> RunState:
    trainable = trainable_parameters(adapted)
    optimizer = build_optimizer(trainable, plan.training)
    scheduler = build_scheduler(optimizer, plan.total_steps, plan.training.warmup_ratio)
    return RunState(adapted, trainable, optimizer, scheduler, mixed)


def _result(adapted: Adaptation, state: RunState, finished: bool) -> TrainResult:
    ranks = module_ranks(adapted)
    return TrainResult(
        adapter_dir=None,
        steps=state.position.step,
        metrics=dict(state.last_eval),
        ranks=ranks,
        total_rank=sum(ranks.values()),
        trainable_params=sum(p.numel() for p in adapted.parameters() if p.requires_grad),
        cancelled=not finished,
        final_params=parameter_count(adapted, "final_parameter_count"),
        adapter_params=parameter_count(adapted, "adapter_parameter_count"),
        history=rank_history(adapted),
    )


def _write_bundle(
    adapted: Adaptation,
    plan: RunPlan,
    base_model: str,
    task: TaskSpec,
    result: TrainResult,
    output_dir: Path,
) -> Path:
    from adalora_core.formats.peft import save_adapter

    adalora, init_r, target_r = plan.adalora, plan.init_r, plan.target_r
    modules = rank_modules(result.ranks)
    meta = AdapterMeta(
        task=task.to_json(),
        base_model=base_model,
        init_r=init_r,
        target_r=target_r,
        lora_alpha=adalora.lora_alpha,
        scaling=adalora.lora_alpha / init_r,
        labels=list(task.labels) if task.labels else None,
        modules=modules,
        budget={
            "initial": init_r * len(modules),
            "target": target_r * len(modules),
            "final": result.total_rank,
        },
        history=result.history,
        metrics=result.metrics,
        trainable_params=result.trainable_params,
        max_length=plan.training.max_length,
        method=plan.method,
        final_params=result.final_params,
        adalora=adalora.to_dict(),
        training=asdict(plan.training),
    )
    return save_adapter(adapted, Path(output_dir), meta)
