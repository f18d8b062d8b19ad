"""Everything about a job that can be checked at submission, resolved into stored
hyper-parameters (total_steps, the budget schedule, label names). Torch-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from typing import Any

from adalora_core import recipe
from adalora_core.context_limit import context_limit
from adalora_core.tasks import CAUSAL_LM
from application.errors import RequestError
from application.job_request import CheckpointPolicy, JobCreate, ResourcesParams
from application.tracking_request import resolve_tracking
from service.datasets_io import CHAT_TYPE, MESSAGES_COLUMN
from service.settings import Settings
from service.tables import Dataset

NUMERIC_TYPES = ("integer", "number")


def invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "invalid_request", message, field)


def _check_limits(
    body: JobCreate, resolved: recipe.Resolved, train: Dataset, settings: Settings
) -> None:
    """The resources a job asks for, against the operator's limits."""
    plan = resolved.plan
    run_length = "training.epochs" if plan.training.epochs is not None else "training.max_steps"
    limits = (
        ("adalora.init_r", plan.adalora.init_r, settings.job_max_rank),
        ("training.batch_size", plan.training.batch_size, settings.job_max_batch_size),
        ("training.max_length", plan.training.max_length, settings.job_max_length),
        (run_length, plan.total_steps, settings.job_max_updates),
        ("dataset_id", train.num_rows, settings.job_max_train_rows),
        ("resources.devices", body.resources.devices, settings.job_max_devices),
    )
    units = {run_length: "updates", "dataset_id": "training rows"}
    for field, value, limit in limits:
        if value > limit:
            what = units.get(field, "")
            raise invalid(
                field,
                f"asks for {value}{' ' + what if what else ''}, above this service's limit of "
                f"{limit}",
            )


def request_hash(body: JobCreate) -> str:
    """Stable digest of the submitted job (defaults included) for idempotency checks."""
    dumped = body.model_dump(mode="json")
    if dumped["resources"] == ResourcesParams().model_dump():
        del dumped["resources"]  # requests from before the field existed keep their digest
    if dumped["checkpoints"] == CheckpointPolicy().model_dump():
        del dumped["checkpoints"]  # likewise
    for optional in ("suffix", "learning_rate_multiplier", "init_from"):
        if dumped[optional] is None:
            del dumped[optional]  # likewise
    for name in ("report_to", "mlflow", "wandb"):
        if not dumped[name]:
            del dumped[name]  # likewise
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def resolve_columns(body: JobCreate, train: Dataset) -> dict[str, str]:
    """The column roles the task needs, named by the body field that must supply them. A
    causal-LM job may leave ``columns`` out: a chat data set ("messages") or prompt/completion
    rows say what they are."""
    columns = body.columns
    if columns is None:
        return _roles_from_row_shape(body, train)
    roles: dict[str, str] = {"text": columns.text}
    if columns.text_pair:
        roles["text_pair"] = columns.text_pair
    if body.task == "classification":
        if not columns.label:
            raise invalid("columns.label", "classification needs a label column")
        roles["label"] = columns.label
    elif body.task == "regression":
        target = columns.label or columns.target
        if not target:
            raise invalid("columns.label", "regression needs a numeric label (or target) column")
        roles["label"] = target
    elif body.task == "seq2seq":
        if not columns.target:
            raise invalid("columns.target", "seq2seq needs a target column")
        roles["target"] = columns.target
    return roles


def _roles_from_row_shape(body: JobCreate, train: Dataset) -> dict[str, str]:
    types = train.column_types
    if body.task != CAUSAL_LM:
        raise invalid("columns", f"is required for {body.task} jobs")
    if types.get(MESSAGES_COLUMN) == CHAT_TYPE:
        return {"text": MESSAGES_COLUMN}
    if types.get("prompt") == "string" and types.get("completion") == "string":
        return {"text": "prompt", "target": "completion"}
    raise invalid(
        "columns",
        f"data set {train.id!r} has neither a 'messages' chat column nor 'prompt' and "
        "'completion' text columns; name the text column (and target) in columns",
    )


def body_field(body: JobCreate, role: str) -> str:
    """The request field that named the column for ``role`` (regression may use target)."""
    if body.columns is None:
        return "columns"
    if role == "label" and body.task == "regression" and not body.columns.label:
        return "columns.target"
    return f"columns.{role}"


def _check_columns(
    body: JobCreate, roles: dict[str, str], dataset: Dataset, description: str
) -> None:
    for role, column in roles.items():
        if column not in dataset.columns:
            raise invalid(
                body_field(body, role),
                f"column {column!r} is not in {description} {dataset.id!r} "
                f"(its columns: {', '.join(dataset.columns)})",
            )


def _check_text_columns(body: JobCreate, roles: dict[str, str], dataset: Dataset) -> None:
    """JSON Lines keep value types, and the trainer reads text columns as strings."""
    if dataset.format != "jsonl":
        return
    for role in ("text", "text_pair", "target"):
        column = roles.get(role)
        found = dataset.column_types.get(column) if column else None
        chat_ok = role == "text" and body.task == CAUSAL_LM and found == CHAT_TYPE
        if column and found != "string" and not chat_ok:
            raise invalid(
                body_field(body, role),
                f"column {column!r} of {dataset.id!r} must hold strings (found {found})",
            )


def _label_set(dataset: Dataset, column: str, field: str, settings: Settings) -> list[str]:
    values = dataset.label_values.get(column)
    if values is None:
        raise invalid(
            field,
            f"column {column!r} of {dataset.id!r} has more than {settings.max_label_values} "
            "distinct values; that is not a classification label",
        )
    return list(values)


def resolve_labels(
    body: JobCreate,
    roles: dict[str, str],
    train: Dataset,
    validation: Dataset | None,
    settings: Settings,
) -> list[str] | None:
    """Classification: labels from the data (>= 2; validation labels must be known).
    Regression: the target must be numeric. Other tasks: no labels."""
    if body.task == "classification":
        column = roles["label"]
        labels = _label_set(train, column, "columns.label", settings)
        if len(labels) < 2:
            raise invalid(
                "columns.label",
                f"column {column!r} has {len(labels)} distinct value(s); classification needs >= 2",
            )
        # JSON integers are class indices to the trainer, so they must be 0..K-1.
        indices = train.format == "jsonl" and train.column_types.get(column) == "integer"
        if indices and labels != [str(i) for i in range(len(labels))]:
            raise invalid(
                "columns.label",
                f"integer labels in {column!r} must be class indices 0..{len(labels) - 1} "
                f"(found {', '.join(labels[:10])}); use 0-based indices or label strings",
            )
        if validation is not None:
            extra = sorted(
                set(_label_set(validation, column, "validation_dataset_id", settings)) - set(labels)
            )
            if extra:
                raise invalid(
                    "validation_dataset_id",
                    f"validation labels not in the training data: {', '.join(extra[:10])}",
                )
        return labels
    if body.task == "regression":
        column = roles["label"]
        for dataset in (train, validation):
            if dataset is not None and dataset.column_types.get(column) not in NUMERIC_TYPES:
                raise invalid(
                    body_field(body, "label"),
                    f"regression target {column!r} in {dataset.id!r} must be numeric "
                    f"(found {dataset.column_types.get(column)})",
                )
    return None


def resolve_hyperparameters(
    body: JobCreate, train: Dataset, validation: Dataset | None, settings: Settings
) -> dict[str, Any]:
    """Validate the whole submission; raises RequestError/ConfigError naming the field at fault."""
    if body.base_model not in settings.base_models:
        known = ", ".join(sorted(settings.base_models)) or "(none configured)"
        raise invalid("base_model", f"unknown base model {body.base_model!r}; known: {known}")
    roles = resolve_columns(body, train)
    for dataset, description in ((train, "dataset"), (validation, "validation dataset")):
        if dataset is not None:
            _check_columns(body, roles, dataset, description)
            _check_text_columns(body, roles, dataset)
    labels = resolve_labels(body, roles, train, validation, settings)
    profile = recipe.DataProfile(
        num_rows=train.num_rows,
        task_kind=body.task,
        paired="text_pair" in roles,
        max_positions=context_limit(settings.base_models[body.base_model]),
        learned_chars=learned_chars(train, roles),
        has_validation=validation is not None,
    )
    training = body.training.model_dump(exclude_none=True)
    adalora = body.adalora.model_dump(exclude_none=True)
    resolved = recipe.resolve(profile, training, adalora)
    multiplier = body.learning_rate_multiplier
    if multiplier is not None:
        if body.training.learning_rate is not None:
            raise invalid(
                "learning_rate_multiplier",
                "scales the learning rate the service chooses; give it or "
                "training.learning_rate, not both",
            )
        scaled = resolved.plan.training.learning_rate * multiplier
        again = recipe.resolve(profile, {**training, "learning_rate": scaled}, adalora)
        resolved = replace(again, chosen=(*again.chosen, "training.learning_rate"))
    plan = resolved.plan
    assert plan.schedule is not None  # the service trains AdaLoRA
    _check_limits(body, resolved, train, settings)
    tracking, tracking_chosen = resolve_tracking(body.report_to, body.mlflow, body.wandb)
    stored = {
        "adalora": plan.adalora.to_dict(),
        "training": asdict(plan.training),
        "total_steps": plan.total_steps,
        "schedule": plan.schedule.to_dict(),
        "chosen_by_service": list(resolved.chosen),
        "warnings": list(resolved.warnings),
        "labels": labels,
        "columns": roles,
        "output": body.output,
        "resources": body.resources.model_dump(),
        "checkpoints": body.checkpoints.model_dump(),
        "num_train_rows": train.num_rows,
        "num_validation_rows": validation.num_rows if validation is not None else None,
        "validation": validation_note(body, validation),
    }
    if tracking is not None:
        stored["tracking"] = tracking
        stored["chosen_by_service"] += tracking_chosen
    return stored


def learned_chars(train: Dataset, roles: dict[str, str]) -> int | None:
    """The characters a generative job learns from ``train`` (its target column, else its text
    column), as counted at upload; None for a data set stored before uploads counted them."""
    counted = train.learned_chars
    if counted is None:
        return None
    return counted.get(roles.get("target") or roles["text"])


NO_VALIDATION = (
    "no validation data set: the job reports its training loss{tokens} only, and publishes its "
    "last adapter; the service does not split rows off the training data. Give "
    "validation_dataset_id to get {metrics} at each evaluation."
)


def validation_note(body: JobCreate, validation: Dataset | None) -> str:
    """What the job will be scored on, said in its resolved settings."""
    generative = body.task in recipe.GENERATIVE_KINDS
    metrics = (
        "the validation loss, mean token accuracy and the exact match of greedy answers"
        if generative
        else "the validation loss and the task's metrics"
    )
    if validation is None:
        tokens = " and mean token accuracy" if generative else ""
        return NO_VALIDATION.format(tokens=tokens, metrics=metrics)
    return f"{validation.num_rows} rows of {validation.id}: {metrics}"
