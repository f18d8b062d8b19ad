"""A job's checkpoints as a caller sees them: listed, and downloaded in any artifact format.

A checkpoint stores its adapter as a PEFT bundle only (about ten a run); the plain LoRA export
and the merged model are built from it when asked for, by the same code that builds a
finished adapter's (``application.publishing.build_archives``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from application.errors import RequestError, not_found
from application.publishing import build_archives
from service import checkpoints as checkpoint_rows
from service.base_models import local_model_dir
from service.settings import Settings
from service.store import ArtifactStore, NotFound
from service.tables import Checkpoint, Job
from service.vocabulary import ArtifactFormat


def job_checkpoint(session: Session, job: Job, step: int) -> Checkpoint:
    """The job's checkpoint at ``step``, or a 404 that says which steps it has."""
    row = checkpoint_rows.checkpoint_at(session, job.id, step)
    if row is None:
        steps = [c.step for c in checkpoint_rows.job_checkpoints(session, job.id)]
        have = ", ".join(map(str, steps)) if steps else "none"
        raise RequestError(
            404, "not_found", f"job {job.id!r} has no checkpoint at step {step} (steps: {have})"
        )
    return row


def checkpoint_archive(
    store: ArtifactStore,
    settings: Settings,
    checkpoint: Checkpoint,
    fmt: ArtifactFormat,
    work_dir: Path,
) -> Path:
    """The checkpoint's adapter as a zip of format ``fmt`` in ``work_dir``."""
    from adalora_core.formats.bundle import read_adapter, unzip_bundle

    peft = checkpoint.formats[ArtifactFormat.PEFT]
    try:
        data = store.open_read(peft["storage_key"], peft["sha256"])
    except NotFound as exc:
        raise RequestError(
            503,
            "artifact_missing",
            f"the stored adapter of checkpoint {checkpoint.id!r} is missing right now; "
            "retry shortly",
        ) from exc
    if fmt == ArtifactFormat.PEFT:
        path = work_dir / "peft.zip"
        path.write_bytes(data)
        return path
    bundle = unzip_bundle(data, work_dir / "bundle")
    merged_base = None
    if fmt == ArtifactFormat.MERGED:
        registered = settings.base_models.get(checkpoint.base_model)
        if registered is None:
            raise not_found("base model", checkpoint.base_model)
        merged_base = local_model_dir(registered, settings.home)
    return build_archives(bundle, read_adapter(bundle), work_dir, [fmt], merged_base)[fmt]
