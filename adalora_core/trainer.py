"""The training loop: one code path for AdaLoRA, the plain LoRA baseline and external adapters.

Every update: forward with the task loss plus the adapter's regularisation, backward over
``grad_accum`` micro-batches, AdamW step, LR schedule step, then the rank allocator (which reads
the gradients, so it runs before they are zeroed). Data order comes from a generator seeded
per epoch, and checkpoints hold every piece of state, so a resumed run ends bit for bit where
an uninterrupted one does (on CPU).

Weight decay applies to the Q/P matrices and head weights, not to λ (it is masked to zero by
the allocator, and decaying singular values would fight the importance scores) nor to biases.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from adalora_core import checkpoint as ckpt
from adalora_core.distributed import Replica, ReplicaSync, current_replica, shard
from adalora_core.encoding import encode_rows, make_collator
from adalora_core.errors import ConfigError
from adalora_core.formats.bundle import AdapterMeta
from adalora_core.hf_loading import head_modules, load_model, load_tokenizer
from adalora_core.inject import module_layer_and_kind
from adalora_core.ordering import epoch_order, length_grouped_order
from adalora_core.precision import MixedPrecision, training_precision
from adalora_core.run_plan import RunPlan
from adalora_core.tasks import TaskSpec
from adalora_core.training.evaluation import EvalAccumulator
from adalora_core.training_config import TrainingConfig, micro_batches_per_epoch

EVAL_BATCH_FACTOR = 2
LossFn = Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total_steps: int
    epoch: float
    # The update's mean loss, left where it was computed (a 0-d tensor on the training device):
    # reading ``loss`` is the host sync, so it happens only for callers that look.
    loss_value: torch.Tensor | float
    budget: int | None
    learning_rate: float
    # The budget's start and end (triplets), so a watcher can draw the schedule it follows.
    initial_budget: int | None = None
    target_budget: int | None = None

    @property
    def loss(self) -> float:
        return float(self.loss_value)


class TrainCallbacks:
    """Hooks the caller overrides; every default does nothing."""

    def on_progress(self, event: ProgressEvent) -> None:
        """After every optimizer update."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """After each evaluation on the validation rows."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint directory is complete."""

    def should_stop(self) -> bool:
        """Polled before every micro-batch; True cancels the run without writing an adapter."""
        return False


class Adaptation(Protocol):
    """What the loop needs from an adapted model (AdaLoraModel, the LoRA baseline, or a
    wrapper around another implementation)."""

    def __call__(self, **batch: torch.Tensor) -> Any: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
    def regularization_loss(self) -> torch.Tensor: ...
    def update_and_allocate(self, step: int) -> None: ...


AdaptFn = Callable[[nn.Module, tuple[str, ...], RunPlan], Adaptation]


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
) -> TrainResult:
    """Fine-tune ``base_model`` as ``plan`` says and write the adapter bundle to ``output_dir``.

    The plan (``adalora_core.run_plan.plan_run``) is the run: its settings, update count,
    schedule and method, checked when it was made; ``train_rows`` must be the rows it was
    planned for. The bundle records ``base_model_name`` as its base (the name the base is registered under,
    so the adapter does not carry this machine's path); without one, ``base_model`` as given.

    A plan for ``method="lora"`` trains plain LoRA of rank ``plan.lora_r``; ``adapt`` replaces the built-in adapters (used for external baselines) and then nothing is
    saved. A run finding a checkpoint in ``checkpoint_dir`` resumes from the newest one.

    ``precision`` is one of ``adalora_core.precision.PRECISIONS``: "auto" is fp32 on the CPU,
    bf16 on GPUs that compute it natively and fp16 with loss scaling on older ones.

    Inside a torch.distributed process group (``adalora_core.distributed`` sets one up) the
    model is wrapped in DistributedDataParallel and each rank trains on its share of every
    micro-batch; only rank 0 evaluates, checkpoints and writes the adapter.
    """
    task.validate()
    if len(train_rows) != plan.num_rows:
        raise ConfigError(
            "train_rows", f"has {len(train_rows)} rows; the run was planned for {plan.num_rows}"
        )
    training = plan.training
    callbacks = callbacks or TrainCallbacks()
    run_device = resolve_device(device)
    try:
        mixed = MixedPrecision(training_precision(precision, run_device), run_device)
    except ValueError as exc:
        raise ConfigError("precision", str(exc)) from exc
    replica = current_replica()

    tokenizer = load_tokenizer(base_model)
    train_data = encode_rows(task, train_rows, tokenizer, training.max_length, "train_rows")
    eval_data = (
        encode_rows(task, eval_rows, tokenizer, training.max_length, "eval_rows")
        if eval_rows
        else None
    )
    collate = make_collator(task, tokenizer)

    seed_everything(training.seed)
    model = load_model(base_model, task, tokenizer).to(run_device)
    heads = head_modules(task, model)
    adapted = _adapt(model, heads, plan, adapt)
    loop = _Loop(
        adapted=adapted,
        replica=replica,
        mixed=mixed,
        task=task,
        training=training,
        total=plan.total_steps,
        train_data=train_data,
        eval_data=eval_data,
        collate=collate,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        device=run_device,
        loss_fn=loss_fn,
    )
    finished = loop.run()
    ranks = _ranks(adapted)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    result = TrainResult(
        adapter_dir=None,
        steps=loop.step,
        metrics=dict(loop.last_eval),
        ranks=ranks,
        total_rank=sum(ranks.values()),
        trainable_params=trainable,
        cancelled=not finished,
        final_params=_count(adapted, "final_parameter_count"),
        adapter_params=_count(adapted, "adapter_parameter_count"),
        history=list(getattr(adapted, "history", [])),
    )
    if finished and adapt is None and replica.is_main:
        result.adapter_dir = _save(
            adapted, plan, base_model_name or str(base_model), task, result, output_dir
        )
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


def _adapt(
    model: nn.Module, heads: tuple[str, ...], plan: RunPlan, adapt: AdaptFn | None
) -> Adaptation:
    if adapt is not None:
        return adapt(model, heads, plan)
    from adalora_core.adalora_model import inject_adalora, inject_lora

    adalora = plan.adalora
    if plan.schedule is None:
        return inject_lora(
            model,
            r=plan.init_r,
            lora_alpha=adalora.lora_alpha,
            lora_dropout=adalora.lora_dropout,
            target_modules=adalora.target_modules,
            head_modules=heads,
        )
    return inject_adalora(model, adalora, schedule=plan.schedule, head_modules=heads)


class _Loop:
    """State of one run; ``run`` returns False when cancelled."""

    def __init__(
        self,
        *,
        adapted: Adaptation,
        replica: Replica,
        mixed: MixedPrecision,
        task: TaskSpec,
        training: TrainingConfig,
        total: int,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]],
        callbacks: TrainCallbacks,
        checkpoint_dir: Path | None,
        device: torch.device,
        loss_fn: LossFn | None,
    ) -> None:
        self.adapted = adapted
        self.replica = replica
        self.mixed = mixed
        # The module the training forward goes through: DDP around the adapted model when the
        # run spans processes (its backward all-reduces the gradients), the model itself otherwise.
        self.forward_module: Any = adapted
        self.sync: ReplicaSync | None = None
        if replica.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.forward_module = DistributedDataParallel(adapted, device_ids=ids)
            self.sync = ReplicaSync(replica)
        self.task = task
        self.training = training
        self.total = total
        self.train_data = train_data
        self.eval_data = eval_data
        self.collate = collate
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.loss_fn = loss_fn
        self.trainable = [(n, p) for n, p in adapted.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, training)
        self.scheduler = build_scheduler(self.optimizer, total, training.warmup_ratio)
        self.batches_per_epoch = micro_batches_per_epoch(len(train_data), training)
        self.lengths = [len(row["input_ids"]) for row in train_data]
        # Metrics do not depend on row order, so evaluate in length order: least padding.
        self.eval_order = sorted(
            range(len(eval_data or [])), key=lambda i: len(eval_data[i]["input_ids"])
        )
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.last_eval: dict[str, float] = {}

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> bool:
        self._resume()
        if self.replica.rank > 0:
            # Rank 0 keeps the stream a checkpoint captures; the others draw their own dropout.
            torch.manual_seed(hash((self.training.seed, self.replica.rank, self.step)) % 2**63)
        self.adapted.train()
        accum = self.training.grad_accum
        while self.step < self.total:
            order = self._epoch_order()
            starts = range(self.batch, self.batches_per_epoch, accum)
            for first in starts:
                group = range(first, min(first + accum, self.batches_per_epoch))
                loss = self._accumulate(order, group)
                if loss is None:
                    return False
                self.batch = group[-1] + 1
                self._update(loss)
                epoch_done = self.batch == self.batches_per_epoch
                if self._due(self.training.eval_every) or epoch_done or self.step == self.total:
                    self._evaluate()
                if epoch_done:
                    self.epoch, self.batch = self.epoch + 1, 0
                if self._due(self.training.checkpoint_every) and self.step < self.total:
                    self._checkpoint()
                if self.step == self.total:
                    break
        return True

    def _epoch_order(self) -> torch.Tensor:
        if self.training.group_by_length:
            return length_grouped_order(
                self.lengths, self.training.seed, self.epoch, self.training.batch_size
            )
        return epoch_order(len(self.train_data), self.training.seed, self.epoch)

    def _accumulate(self, order: torch.Tensor, group: range) -> torch.Tensor | None:
        """Forward/backward over one update's micro-batches; None when cancelled. The loss
        stays on the device: no host sync per micro-batch. Across processes the stop request
        is agreed once per update, and DDP all-reduces only on the update's last micro-batch."""
        if self.sync is not None and self.sync.any_stop(self.callbacks.should_stop()):
            return None
        total_loss = torch.zeros((), device=self.device)
        for index in group:
            if self.sync is None and self.callbacks.should_stop():
                return None
            rows = order[index * self.training.batch_size : (index + 1) * self.training.batch_size]
            weight = 1.0
            if self.sync is not None:
                rows, weight = shard(rows, self.replica)
            batch = self._to_device(self.collate([self.train_data[i] for i in rows.tolist()]))
            last = index == group[-1]
            with self._gradient_sync(last), self.mixed.autocast():
                outputs = self.forward_module(**batch)
                task_loss = self.loss_fn(outputs, batch) if self.loss_fn else outputs.loss
                loss = task_loss * weight + self.adapted.regularization_loss()
            self.mixed.backward(loss / len(group))
            total_loss += loss.detach() / len(group)
        return total_loss if self.sync is None else self.sync.mean(total_loss)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        if self.sync is None or last:
            return contextlib.nullcontext()
        return self.forward_module.no_sync()

    def _update(self, loss: torch.Tensor) -> None:
        learning_rate = float(self.scheduler.get_last_lr()[0])
        # Clipping, the optimizer and the allocator's importance scores all read true gradients.
        self.mixed.unscale(self.optimizer)
        if self.training.max_grad_norm:
            # foreach clipping scales in place on the device: no host sync. The allocator then
            # scores importance on the clipped gradients, as the authors' HF Trainer loop does.
            torch.nn.utils.clip_grad_norm_(
                [p for _, p in self.trainable], self.training.max_grad_norm, foreach=True
            )
        self.mixed.step(self.optimizer)
        self.scheduler.step()
        self.step += 1
        if self.sync is None:
            self.adapted.update_and_allocate(self.step)
        else:
            self._allocate_in_step()
        self._zero_grad()
        budget_now = getattr(self.adapted, "budget_now", None)
        self.callbacks.on_progress(
            ProgressEvent(
                step=self.step,
                total_steps=self.total,
                epoch=self.epoch + self.batch / self.batches_per_epoch,
                loss_value=loss,
                budget=int(budget_now()) if budget_now else None,
                learning_rate=learning_rate,
                initial_budget=getattr(self.adapted, "initial_budget", None),
                target_budget=getattr(self.adapted, "target_budget", None),
            )
        )

    def _allocate_in_step(self) -> None:
        """Across processes: allocate, then check every rank kept the same triplets whenever
        this update was a masking step (it added to the rank history)."""
        masks_before = len(getattr(self.adapted, "history", ()))
        self.adapted.update_and_allocate(self.step)
        assert self.sync is not None
        if len(getattr(self.adapted, "history", ())) != masks_before:
            self.sync.assert_same_mask(self.adapted.rank_mask(), self.step)

    def _zero_grad(self) -> None:
        zero_adapters = getattr(self.adapted, "zero_grad_adapters", None)
        if zero_adapters is not None:
            zero_adapters()  # keeps AdaLoraModel's flat gradient buffer attached
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _due(self, every: int | None) -> bool:
        return every is not None and self.step % every == 0

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self) -> None:
        if not self.eval_data or not self.replica.is_main:
            return
        self.adapted.eval()
        accumulator = EvalAccumulator(self.task)
        size = self.training.batch_size * EVAL_BATCH_FACTOR
        for start in range(0, len(self.eval_order), size):
            rows = [self.eval_data[i] for i in self.eval_order[start : start + size]]
            batch = self._to_device(self.collate(rows))
            with self.mixed.autocast():
                outputs = self.adapted(**batch)
            accumulator.add(outputs, batch)
        self.adapted.train()
        self.last_eval = accumulator.result()
        self.callbacks.on_eval(self.step, dict(self.last_eval))

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self) -> None:
        if self.checkpoint_dir is None or not self.replica.is_main:
            return
        allocator_state = getattr(self.adapted, "allocator_state", None)
        state = ckpt.TrainingState(
            position=ckpt.DataPosition(epoch=self.epoch, batch=self.batch, step=self.step),
            trainable={name: p for name, p in self.trainable},
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            allocator=allocator_state() if allocator_state else None,
            history=list(getattr(self.adapted, "history", [])),
            rng=ckpt.capture_rng(),
            last_eval=dict(self.last_eval),
            scaler=self.mixed.state_dict(),
        )
        path = ckpt.save_checkpoint(self.checkpoint_dir, state)
        self.callbacks.on_checkpoint(self.step, path)

    @torch.no_grad()
    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return
        state = ckpt.load_checkpoint(path)
        params = dict(self.trainable)
        if set(state.trainable) != set(params):
            raise ConfigError(
                "checkpoint", f"{path} was written for a different set of trainable weights"
            )
        for name, value in state.trainable.items():
            if value.shape != params[name].shape:
                raise ConfigError("checkpoint", f"{path}: {name} has shape {tuple(value.shape)}")
            params[name].copy_(value)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        load_allocator_state = getattr(self.adapted, "load_allocator_state", None)
        if load_allocator_state is not None and state.allocator is not None:
            load_allocator_state(state.allocator)
        ckpt.restore_rng(state.rng)
        self.mixed.load_state_dict(state.scaler)
        self.step = state.position.step
        self.epoch = state.position.epoch
        self.batch = state.position.batch
        self.last_eval = dict(state.last_eval)

    # -- helpers ---------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type != "cuda":
            return {k: v.to(self.device) for k, v in batch.items()}
        # An asynchronous copy needs a pinned source; from pageable memory it would block anyway.
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}


def build_optimizer(
    named: Sequence[tuple[str, nn.Parameter]], training: TrainingConfig
) -> torch.optim.AdamW:
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith("lora_E")]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not n.endswith("lora_E"))]
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=training.learning_rate)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``ceil(warmup_ratio·T)`` updates, then linear decay to 0 at T."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _count(adapted: Adaptation, method: str) -> int | None:
    count = getattr(adapted, method, None)
    return int(count()) if count else None


def _ranks(adapted: Adaptation) -> dict[str, int]:
    ranks = getattr(adapted, "ranks", None)
    return dict(ranks()) if ranks else {}


def _save(
    adapted: Adaptation,
    plan: RunPlan,
    base_model: str,
    task: TaskSpec,
    result: TrainResult,
    output_dir: Path,
) -> Path:
    from adalora_core.formats.peft import save_adapter

    adalora, init_r, target_r = plan.adalora, plan.init_r, plan.target_r
    modules = [
        {"name": name, "layer": layer, "kind": kind, "rank": rank}
        for name, rank in result.ranks.items()
        for layer, kind in [module_layer_and_kind(name)]
    ]
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
