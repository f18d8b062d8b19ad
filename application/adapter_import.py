"""Importing an adapter trained elsewhere: a PEFT LoRA or AdaLoRA adapter becomes an adapter of
the tenant's, stored and served like one a job produced (``source`` "import").

The core checks and converts the files (``adalora_core.formats.peft_import``); here the request
is checked (base, name, labels), the bundle goes to the store through the same publishing steps
as a trained one, and the row is inserted with its Idempotency-Key. A refusal leaves nothing:
no row, and no artifact in the store.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adalora_core.formats.peft_import import (
    ArchiveLimits,
    PeftFiles,
    import_peft_adapter,
    read_peft_dir,
    read_peft_zip,
)
from application.errors import RequestError
from application.idempotency import same_request
from application.publishing import add_adapter_row, discard_artifacts, store_artifacts
from service import adapters as adapter_rows
from service.settings import Settings
from service.store.base import ArtifactStore
from service.tables import Adapter
from service.vocabulary import OutputMode

IMPORT = "adapter import"
SOURCE = "import"


@dataclass(frozen=True)
class ImportRequest:
    """What the caller says about the adapter: the base it runs on, and optionally its task,
    labels, name, and whether a merged model is stored too."""

    base_model: str
    task: str | None = None
    labels: list[str] | None = None
    name: str | None = None
    output: OutputMode = OutputMode.UNMERGED

    def digest(self, content_sha256: str) -> str:
        """What an Idempotency-Key stands for: these fields and the uploaded bytes."""
        fields = [self.base_model, self.task, self.labels, self.name, self.output.value]
        text = json.dumps([content_sha256, *fields])
        return hashlib.sha256(text.encode()).hexdigest()


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_files=settings.import_max_files, max_unpacked_bytes=settings.import_max_unpacked_bytes
    )


def from_zip(path: Path) -> Callable[[ArchiveLimits], PeftFiles]:
    """The reader of an uploaded zip, for `import_adapter`."""
    return lambda limits: read_peft_zip(path, limits)


def parse_labels(text: str | None) -> list[str] | None:
    """The ``labels`` form field: a JSON list of label names."""
    if text is None or text == "":
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            422, "validation_error", 'must be a JSON list, e.g. ["neg", "pos"]', "labels"
        ) from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise RequestError(422, "validation_error", "must be a JSON list of strings", "labels")
    return labels


def name_taken(name: str) -> RequestError:
    return RequestError(
        409, "conflict", f"an adapter named {name!r} exists; delete it or choose another", "name"
    )


def replayed(
    session: Session, tenant_id: str, idempotency: tuple[str, str] | None
) -> Adapter | None:
    """The adapter an earlier import with this Idempotency-Key created (a 409 when the key was
    used for another import); None when the key is new."""
    if idempotency is None:
        return None
    existing = adapter_rows.find_by_idempotency_key(session, tenant_id, idempotency[0])
    return None if existing is None else same_request(existing, idempotency[1], IMPORT)


def import_adapter(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    tenant_id: str,
    read: Callable[[ArchiveLimits], PeftFiles],
    request: ImportRequest,
    idempotency: tuple[str, str] | None = None,
) -> tuple[Adapter, bool]:
    """Check, store and record one import; (the row, whether this call created it). ``read``
    gives the PEFT files within the archive limits (from an upload or a directory)."""
    if request.base_model not in settings.base_models:
        known = sorted(settings.base_models)
        raise RequestError(
            422,
            "invalid_config",
            f"unknown base model {request.base_model!r}; known: {known}",
            "base_model",
        )
    if request.name is not None and adapter_rows.find_by_name(session, tenant_id, request.name):
        raise name_taken(request.name)
    files = read(archive_limits(settings))
    model_dir = settings.base_models[request.base_model]
    imported = import_peft_adapter(
        files,
        base_model=request.base_model,
        model_dir=model_dir,
        task=request.task,
        labels=request.labels,
        max_rank=settings.import_max_rank,
    )
    staging = Path(settings.home) / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix="import-") as tmp:
        bundle = imported.write(Path(tmp) / "bundle")
        merged = model_dir if request.output == OutputMode.MERGED else None
        stored = store_artifacts(store, tenant_id, bundle, Path(tmp) / "work", merged_base=merged)
    try:
        row = add_adapter_row(
            session,
            stored,
            tenant_id=tenant_id,
            base_model=request.base_model,
            name=request.name,
            source=SOURCE,
            idempotency=idempotency,
        )
        session.commit()
        return row, True
    except IntegrityError:
        session.rollback()
        discard_artifacts(store, stored.formats)
        winner = replayed(session, tenant_id, idempotency)
        if winner is not None:  # a concurrent import with the same key won the race
            return winner, False
        if request.name is not None:
            raise name_taken(request.name) from None
        raise
    except BaseException:
        session.rollback()
        discard_artifacts(store, stored.formats)
        raise


# --- vLLM's runtime calls: /v1/load_lora_adapter and /v1/unload_lora_adapter ------------------


def runtime_directory(settings: Settings, lora_path: str) -> Path:
    """``lora_path`` as a directory inside ADALORA_ADAPTER_IMPORT_DIR, each step of it a real
    directory (a link is refused, so nothing resolves out of the root)."""
    if settings.adapter_import_dir is None:
        raise RequestError(
            404, "not_found", "loading adapters at runtime is off: set ADALORA_ADAPTER_IMPORT_DIR"
        )
    root = Path(settings.adapter_import_dir).resolve()
    relative = Path(lora_path)
    if relative.is_absolute():
        try:
            relative = relative.relative_to(root)
        except ValueError:
            raise RequestError(
                422, "invalid_config", "must lie inside ADALORA_ADAPTER_IMPORT_DIR", "lora_path"
            ) from None
    current = root
    for part in relative.parts:
        if part in ("..", "."):
            raise RequestError(422, "invalid_config", "may not contain '..'", "lora_path")
        current = current / part
        if current.is_symlink() or not current.is_dir():
            message = f"{part!r} is a link or not a directory under the import root"
            raise RequestError(422, "invalid_config", message, "lora_path")
    return current


def base_of(settings: Settings, directory: Path, base_model: str | None) -> str:
    """The base an adapter directory runs on: ``base_model`` when given, else its config's
    ``base_model_name_or_path`` when that is a registered name or a registered directory."""
    if base_model is not None:
        return base_model
    try:
        config = json.loads((directory / "adapter_config.json").read_text())
        trained_on = str(config.get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        trained_on = ""
    if trained_on in settings.base_models:
        return trained_on
    for name, path in settings.base_models.items():
        if trained_on and Path(trained_on).resolve() == Path(path).resolve():
            return name
    raise RequestError(
        422,
        "invalid_config",
        f"the adapter's base_model_name_or_path {trained_on!r} is no registered base; name one "
        "with base_model",
        "base_model",
    )


def from_directory(directory: Path) -> Callable[[ArchiveLimits], PeftFiles]:
    """The reader of an adapter directory on this machine, for `import_adapter`."""
    return lambda limits: read_peft_dir(directory, limits)
