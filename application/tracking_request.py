"""A job's experiment tracking (``report_to``): which trackers, their settings, the operator's
defaults from the environment variables the libraries already read, and OpenAI's
``integrations`` mapped onto the same thing. The worker side is ``worker/tracking.py``.

Secrets never enter a job: an MLflow URI with a password is refused (the worker's
``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` carry credentials), W&B's key is only read by the
library in the worker, and a URI the operator set is not copied into the job's settings."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from application.errors import RequestError
from application.request_fields import Name, Strict, Text

Tracker = Literal["tensorboard", "mlflow", "wandb"]
# The import each tracker needs in the worker (the optional extra ``tracking``).
TRACKER_MODULES: dict[str, str] = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
}
DEFAULT_PROJECT = "adalora-service"


class MlflowSettings(Strict):
    tracking_uri: Text | None = Field(
        None, description="Defaults to the operator's MLFLOW_TRACKING_URI; no credentials in it."
    )
    experiment: Name | None = Field(None, description="Defaults to 'adalora-service'.")
    run_name: Name | None = Field(None, description="Defaults to the job's name, or its id.")


class WandbSettings(Strict):
    project: Name | None = Field(None, description="Defaults to WANDB_PROJECT.")
    entity: Name | None = Field(None, description="Defaults to WANDB_ENTITY.")
    name: Name | None = Field(None, description="Defaults to the job's name, or its id.")
    tags: list[Name] = Field(default_factory=list, max_length=64)
    mode: Literal["online", "offline"] | None = Field(None, description="Defaults to WANDB_MODE.")


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "invalid_request", message, field)


def library_missing(tracker: str) -> bool:
    return importlib.util.find_spec(TRACKER_MODULES[tracker]) is None


def _check_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.password is not None:
        raise _invalid(
            "mlflow.tracking_uri",
            "must not carry a password; the worker's MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD hold credentials",
        )


def resolve_tracking(
    report_to: list[str],
    mlflow: MlflowSettings | None,
    wandb: WandbSettings | None,
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The tracking settings a job stores (None without ``report_to``) and the fields the
    service filled in. A run name left out stays None: the worker names the run after the
    job."""
    env = os.environ if environ is None else environ
    if len(set(report_to)) != len(report_to):
        raise _invalid("report_to", "names a tracker twice")
    for name, settings in (("mlflow", mlflow), ("wandb", wandb)):
        if settings is not None and name not in report_to:
            raise _invalid(name, f"is set but report_to does not name {name!r}")
    if not report_to:
        return None, []
    missing = [t for t in report_to if library_missing(t)]
    if missing:
        raise _invalid(
            "report_to",
            f"this service cannot report to {', '.join(missing)}: its library is not installed "
            "(pip install 'adalora-service[tracking]')",
        )
    stored: dict[str, Any] = {"report_to": list(report_to)}
    chosen: list[str] = []
    if "mlflow" in report_to:
        given = mlflow or MlflowSettings()
        if given.tracking_uri is not None:
            _check_uri(given.tracking_uri)
        elif not env.get("MLFLOW_TRACKING_URI"):
            raise _invalid(
                "mlflow.tracking_uri",
                "is required: this service has no MLFLOW_TRACKING_URI to default to",
            )
        else:
            chosen.append("mlflow.tracking_uri")  # the worker's MLFLOW_TRACKING_URI
        experiment = given.experiment or env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        if given.experiment is None:
            chosen.append("mlflow.experiment")
        stored["mlflow"] = {
            "tracking_uri": given.tracking_uri,
            "experiment": experiment,
            "run_name": given.run_name,
        }
    if "wandb" in report_to:
        given_wb = wandb or WandbSettings()
        resolved = {
            "project": given_wb.project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            "entity": given_wb.entity or env.get("WANDB_ENTITY") or None,
            "name": given_wb.name,
            "tags": list(given_wb.tags),
            "mode": given_wb.mode or _wandb_mode(env.get("WANDB_MODE")),
        }
        chosen += [f"wandb.{f}" for f in ("project", "entity", "mode") if not getattr(given_wb, f)]
        stored["wandb"] = resolved
    return stored, chosen


def _wandb_mode(value: str | None) -> str:
    return "offline" if value in ("offline", "dryrun") else "online"


def report_to_from_integrations(integrations: list[Mapping[str, Any]]) -> dict[str, Any]:
    """OpenAI's fine-tuning ``integrations`` ([{"type": "wandb", "wandb": {project, name,
    entity, tags}}]) as the job body's ``report_to`` and ``wandb`` fields (W&B's mode: the
    operator's WANDB_MODE)."""
    if not integrations:
        return {}
    if len(integrations) > 1:
        raise _invalid("integrations", "at most one integration (wandb) per job")
    integration = integrations[0]
    if integration.get("type") != "wandb":
        raise _invalid("integrations[0].type", "the only integration type is 'wandb'")
    given = integration.get("wandb")
    if not isinstance(given, Mapping) or not given.get("project"):
        raise _invalid("integrations[0].wandb.project", "is required")
    unknown = sorted(set(given) - {"project", "name", "entity", "tags"})
    if unknown:
        raise _invalid(f"integrations[0].wandb.{unknown[0]}", "is not a W&B integration field")
    wandb = {key: given[key] for key in ("project", "name", "entity", "tags") if given.get(key)}
    try:
        settings = WandbSettings.model_validate(wandb)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise _invalid(f"integrations[0].wandb.{where}", error["msg"]) from exc
    return {"report_to": ["wandb"], "wandb": settings}
