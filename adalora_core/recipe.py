"""Automatic settings: every training or AdaLoRA field a job leaves out, chosen from the data.

Torch-free: the API resolves a job at submission and stores the result, so a user sees what
ran and can repeat it exactly. ``resolve`` chooses; the run's facts that follow from the
choices (update count, schedule) come from ``adalora_core.run_plan.plan_run``, which it calls.
The benchmark (``bench/glue.py``) builds its runs through the same function, so the GLUE
protocol measures what the service does. The measured defaults (learning rate, alpha,
clipping, update count) and the runs that chose them are in ``docs/results.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adalora_core.chat_template import is_chat
from adalora_core.config import AdaLoraConfig, BudgetSchedule
from adalora_core.errors import ConfigError
from adalora_core.run_plan import ADALORA, RunPlan, plan_run
from adalora_core.tasks import CAUSAL_LM, SEQ2SEQ, TASK_KINDS, TaskSpec
from adalora_core.training_config import TrainingConfig, updates_per_epoch

GENERATIVE_KINDS = (CAUSAL_LM, SEQ2SEQ)

# Run length. AdaLoRA needs room: the authors' scripts reduce the budget over 1,000+ updates.
# Three passes over the data, but at least MIN_UPDATES (as long as that is at most MAX_EPOCHS
# passes, so a tiny data set is not memorised) and at most MAX_UPDATES (a CPU-sized run on a
# large data set; a job that wants more sets max_steps or epochs).
DEFAULT_EPOCHS = 3
MIN_UPDATES = 600
MAX_UPDATES = 1000
MAX_EPOCHS = 20
BATCH_SIZE = 16

# AdaLoRA starts with this many times the ranks it keeps (the default 12 -> 8).
INIT_TO_TARGET_RATIO = 1.5

# A lost worker should cost at most a tenth of the run: jobs that choose no checkpoint interval
# checkpoint about this many times.
CHECKPOINTS_PER_RUN = 10

# Below this many updates in the budget-reducing phase the allocator changes ranks too fast to
# measure importance (the authors' advice); a job whose settings give less gets a warning.
MIN_REDUCTION_UPDATES = 200

# Sequence lengths by task shape; batches are padded per batch, so a generous limit only costs
# on rows that are really that long.
MAX_LENGTH_SINGLE = 128
MAX_LENGTH_PAIR = 256
MAX_LENGTH_GENERATIVE = 512
# Length-grouped batches halve the padded tokens and the time per update (docs/benchmarks.md),
# but on held-out SST-2 rows they cost AdaLoRA 0.5 points (3 of 3 paired seeds; LoRA -0.2,
# mixed; docs/results.md): the allocator scores importance on less representative batches.
# Quality first: off unless a job asks for it.
GROUP_BY_LENGTH = False


@dataclass(frozen=True)
class MethodDefaults:
    """The optimiser settings chosen on held-out training rows for one adapter method."""

    learning_rate: float
    lora_alpha: float


# The best mean over the tuned tasks of the same 4 x 2 grid per method (`bench/glue_tune.py`),
# each cell scored on its task's held-out training rows: SST-2 and MRPC (accuracy), CoLA
# (Matthews). AdaLoRA 2e-3 / 128: SST-2 86.0, CoLA 21.7, MRPC 80.8 (mean 62.83, 4e-3 / 32 next
# at 62.82); LoRA 1e-3 / 16: SST-2 86.2, CoLA 28.0, MRPC 82.0. Each method's SST-2-only best
# (AdaLoRA 4e-3 / 128, LoRA 2e-3 / 16) collapsed on CoLA or nearly so (docs/results.md has
# every cell), and a job's task is unknown in advance.
ENCODER_DEFAULTS: dict[str, MethodDefaults] = {
    "adalora": MethodDefaults(learning_rate=2e-3, lora_alpha=128.0),
    "lora": MethodDefaults(learning_rate=1e-3, lora_alpha=16.0),
}
# Generative kinds: chosen on made-up facts, scored on the tuning set's held-out phrasings
# (docs/results.md, "Generative quality"): SmolLM2-135M-Instruct, 80 rows, batch 4, 462-480
# updates. AdaLoRA (alpha 128): an earlier tuning set gave lr 1e-3 / alpha 32 62.5%, 1e-3 / 128
# 70%, 2e-3 / 128 77.5% (the former choice, 4e-4 / 128, batch 16, 100 updates: 0%); the seed-1
# set lr 1e-3 95%, 2e-3 97.5%, 4e-3 90%. LoRA (alpha 16), the same three rates on the seed-1
# set: 1e-3 100%, 2e-3 97.5%, 4e-3 100% (a tie goes to the smaller rate).
GENERATIVE_DEFAULTS: dict[str, MethodDefaults] = {
    "adalora": MethodDefaults(learning_rate=2e-3, lora_alpha=128.0),
    "lora": MethodDefaults(learning_rate=1e-3, lora_alpha=16.0),
}
# A generative epoch has at least this many updates where the batch can shrink to make it so
# (batch 4 at the least): a small set's content is seen in many small steps, not a few large.
MIN_GENERATIVE_UPDATES_PER_EPOCH = 20
GENERATIVE_BATCH_SIZES = (4, 8, 16)
# Small sets get many epochs, as OpenAI's n_epochs "auto" does: the run sees at least this
# many learned tokens (assistant turns, completions), in at least DEFAULT_EPOCHS and at most
# MAX_GENERATIVE_EPOCHS passes (before the allocator's floor below). The facts sets (about
# 1,000 learned tokens) get 23-24 epochs, about the 480 updates measured there.
TARGET_LEARNED_TOKENS = 24_000
MAX_GENERATIVE_EPOCHS = 30
# Learned characters per token, for sizing without a tokenizer at submission: the facts,
# extraction and style sets in bench/generative_sets.py measure 2.8, 1.9 and 2.1 with
# SmolLM2's tokenizer (end-of-turn tokens included); 3 errs towards fewer epochs.
CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class DataProfile:
    """What the recipe looks at: the data set's size and shape, and the base model's limits."""

    num_rows: int
    task_kind: str
    paired: bool = False
    max_positions: int | None = None
    # Characters of the text a generative job learns (assistant turns, completions): the
    # data's size in content, not rows. None when unknown (a data set stored before it was
    # counted); the run length then follows the rows alone.
    learned_chars: int | None = None
    # Whether the job has validation rows: keeping the best evaluation and stopping early
    # need them.
    has_validation: bool = False


@dataclass(frozen=True)
class Resolved:
    """The planned run, the dotted fields the recipe chose, and why the run may disappoint."""

    plan: RunPlan
    chosen: tuple[str, ...]
    warnings: tuple[str, ...]


def resolve(
    profile: DataProfile,
    training: Mapping[str, Any] | None = None,
    adalora: Mapping[str, Any] | None = None,
    *,
    method: str = ADALORA,
    lora_r: int | None = None,
) -> Resolved:
    """Fill every field the caller left out (None or absent) and plan the run; raise
    ConfigError naming a field the caller set to an invalid value."""
    if profile.task_kind not in TASK_KINDS:
        raise ConfigError("task", f"must be one of {list(TASK_KINDS)}, got {profile.task_kind!r}")
    if method not in ENCODER_DEFAULTS:
        raise ConfigError("method", f"must be one of {sorted(ENCODER_DEFAULTS)}, got {method!r}")
    given_training = {k: v for k, v in (training or {}).items() if v is not None}
    given_adalora = {k: v for k, v in (adalora or {}).items() if v is not None}
    generative = profile.task_kind in GENERATIVE_KINDS
    defaults = (GENERATIVE_DEFAULTS if generative else ENCODER_DEFAULTS)[method]
    chosen: list[str] = []

    def pick(section: dict[str, Any], prefix: str, name: str, value: Any) -> None:
        if name not in section:
            section[name] = value
            chosen.append(f"{prefix}.{name}")

    batch_size = _generative_batch(profile.num_rows) if generative else BATCH_SIZE
    pick(given_training, "training", "batch_size", batch_size)
    pick(given_training, "training", "max_length", _max_length(profile))
    pick(given_training, "training", "learning_rate", defaults.learning_rate)
    pick(given_training, "training", "max_grad_norm", TrainingConfig.max_grad_norm)
    pick(given_training, "training", "group_by_length", GROUP_BY_LENGTH)
    # Generative runs overfit small sets within a run (many epochs): publish their best
    # evaluation. Classification keeps its last adapter, as its measured defaults did.
    pick(given_training, "training", "keep_best", generative and profile.has_validation)
    for name in ("keep_best", "early_stop_patience"):
        if given_training.get(name) and not profile.has_validation:
            raise ConfigError(
                f"training.{name}",
                "needs validation data to compare evaluations: give validation_dataset_id",
            )
    fixed_ranks = False
    if "epochs" not in given_training and "max_steps" not in given_training:
        sized = TrainingConfig(**{**given_training, "epochs": 1}).validate()
        updates = _generative_updates if generative else _updates
        given_training["max_steps"] = updates(profile, sized)
        given_training["epochs"] = None
        chosen.append("training.max_steps")
        # A set so small that MAX_GENERATIVE_EPOCHS passes are fewer updates than the
        # allocator needs keeps its ranks: reallocating on noise would not help it.
        fixed_ranks = generative and given_training["max_steps"] < min_schedule_updates()
    elif "epochs" not in given_training:
        given_training["epochs"] = None
    try:
        training_config = TrainingConfig(**given_training).validate()
    except TypeError as exc:  # a field this version does not know
        raise ConfigError("training", str(exc)) from exc

    pick(given_adalora, "adalora", "lora_alpha", defaults.lora_alpha)
    _pick_ranks(given_adalora, chosen, fixed=fixed_ranks and method == ADALORA)
    plan = plan_run(
        profile.num_rows,
        training_config,
        AdaLoraConfig.from_dict(given_adalora),
        method=method,
        lora_r=lora_r,
        max_positions=profile.max_positions,
    )
    plan = _pick_cadence(plan, chosen)
    warnings: list[str] = []
    if plan.schedule is not None:
        chosen += [
            f"adalora.{name}"
            for name in ("t_init", "t_final", "delta_t")
            if name not in given_adalora
        ]
        warnings += schedule_warnings(plan.schedule, plan.adalora)
    return Resolved(plan=plan, chosen=tuple(chosen), warnings=tuple(warnings))


def _pick_cadence(plan: RunPlan, chosen: list[str]) -> RunPlan:
    """When the run evaluates and checkpoints, unless the job said."""
    cadence: dict[str, int | None] = {}
    if plan.eval_every is None and plan.training.epochs is None:
        # A max_steps run may never finish an epoch; evaluate four times along the way.
        cadence["eval_every"] = max(1, math.ceil(plan.total_steps / 4))
    if plan.checkpoint_every is None:
        cadence["checkpoint_every"] = default_checkpoint_every(plan.total_steps)
    chosen += [f"training.{name}" for name, value in cadence.items() if value is not None]
    return plan.with_training(**cadence) if cadence else plan


def default_checkpoint_every(total_steps: int) -> int | None:
    """About CHECKPOINTS_PER_RUN checkpoints a run; none for a run of a single update."""
    if total_steps < 2:
        return None
    return max(1, math.ceil(total_steps / CHECKPOINTS_PER_RUN))


def _pick_ranks(given: dict[str, Any], chosen: list[str], fixed: bool = False) -> None:
    """init_r and target_r keep the default ratio (12 -> 8) to whichever of them was given;
    with neither given, a ``fixed`` run starts at the target and keeps it."""
    init_given, target_given = "init_r" in given, "target_r" in given
    if not init_given and not target_given:
        start = AdaLoraConfig.target_r if fixed else AdaLoraConfig.init_r
        given["init_r"], given["target_r"] = start, AdaLoraConfig.target_r
    elif not target_given:
        given["target_r"] = max(1, round(given["init_r"] / INIT_TO_TARGET_RATIO))
    elif not init_given:
        given["init_r"] = math.ceil(given["target_r"] * INIT_TO_TARGET_RATIO)
    chosen += [
        f"adalora.{n}" for n, was in (("init_r", init_given), ("target_r", target_given)) if not was
    ]


def schedule_warnings(schedule: BudgetSchedule, config: AdaLoraConfig) -> list[str]:
    """Human-readable reasons the allocator may not have room to act."""
    if config.init_r == config.target_r:
        return []
    window = schedule.final_mask_step - schedule.t_init
    if window >= MIN_REDUCTION_UPDATES:
        return []
    return [
        f"the budget is reduced from {config.init_r} to {config.target_r} ranks per module over "
        f"only {window} updates (updates {schedule.t_init + 1}-{schedule.final_mask_step} of "
        f"{schedule.total_steps}); below about {MIN_REDUCTION_UPDATES} the importance scores "
        "are too noisy for the allocation to help. Use more updates (training.max_steps or "
        "epochs), a smaller batch_size, or leave the schedule fields unset."
    ]


def _updates(profile: DataProfile, training: TrainingConfig) -> int:
    per_epoch = updates_per_epoch(max(1, profile.num_rows), training)
    wanted = max(DEFAULT_EPOCHS * per_epoch, MIN_UPDATES)
    return max(1, min(wanted, MAX_EPOCHS * per_epoch, MAX_UPDATES))


def _generative_batch(num_rows: int) -> int:
    """The largest batch that still gives MIN_GENERATIVE_UPDATES_PER_EPOCH updates an epoch."""
    fitting = [
        size
        for size in GENERATIVE_BATCH_SIZES
        if num_rows / size >= MIN_GENERATIVE_UPDATES_PER_EPOCH
    ]
    return max(fitting, default=GENERATIVE_BATCH_SIZES[0])


def _generative_updates(profile: DataProfile, training: TrainingConfig) -> int:
    """Enough passes to see TARGET_LEARNED_TOKENS (DEFAULT_EPOCHS to MAX_GENERATIVE_EPOCHS), at
    most MAX_UPDATES, and raised to what the allocator needs (:func:`min_schedule_updates`)
    where that is within MAX_GENERATIVE_EPOCHS passes; a smaller set keeps its ranks instead
    (`resolve`), rather than hundreds of passes over a few rows."""
    per_epoch = updates_per_epoch(max(1, profile.num_rows), training)
    epochs = DEFAULT_EPOCHS
    if profile.learned_chars:
        tokens = max(1, profile.learned_chars // CHARS_PER_TOKEN)
        wanted = math.ceil(TARGET_LEARNED_TOKENS / tokens)
        epochs = min(max(epochs, wanted), MAX_GENERATIVE_EPOCHS)
    updates = min(epochs * per_epoch, MAX_UPDATES)
    floor = min_schedule_updates()
    if updates < floor <= MAX_GENERATIVE_EPOCHS * per_epoch:
        return floor
    return updates


@functools.cache
def min_schedule_updates() -> int:
    """The fewest updates whose default schedule reduces the budget over at least
    MIN_REDUCTION_UPDATES updates, so that :func:`schedule_warnings` has nothing to say."""
    config = AdaLoraConfig()
    total = MIN_REDUCTION_UPDATES
    while True:
        schedule = config.schedule(total)
        if schedule.final_mask_step - schedule.t_init >= MIN_REDUCTION_UPDATES:
            return total
        total += 1


def learned_chars(rows: Iterable[Mapping[str, Any]], task: TaskSpec) -> int:
    """Characters of what a generative job learns from ``rows``: a chat's assistant turns,
    a prompt/completion row's completion, else the whole text."""
    column = task.target_column or task.text_column
    return sum(value_chars(row.get(column)) for row in rows)


def value_chars(value: Any) -> int:
    """Characters a generative job learns from one cell: a chat's assistant turns, else the
    text (a data set's upload counts each column with this)."""
    if is_chat(value):
        return sum(
            len(str(m.get("content") or ""))
            for m in value
            if isinstance(m, Mapping) and m.get("role") == "assistant"
        )
    return len(value) if isinstance(value, str) else 0


def _max_length(profile: DataProfile) -> int:
    if profile.task_kind in GENERATIVE_KINDS:
        wanted = MAX_LENGTH_GENERATIVE
    else:
        wanted = MAX_LENGTH_PAIR if profile.paired else MAX_LENGTH_SINGLE
    if profile.max_positions:
        return min(wanted, profile.max_positions)
    return wanted
