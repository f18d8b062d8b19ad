"""One delivery of a training job: lease it, train it, publish its adapter (Celery-free; the
task in ``worker.consumer`` calls :func:`run_job`).

Order of effects (so a crash at any point leaves a state the reconciler can repair):
lease (running) → train (progress, checkpoints) → uploading → artifacts in the store →
ONE transaction: adapter row + job succeeded + adapter_id.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.errors import ConfigError
from application.publishing import (
    StoredArtifacts,
    add_adapter_row,
    discard_artifacts,
    store_artifacts,
)
from service import checkpoints as checkpoint_rows
from service.adapters import find_by_name
from service.base_models import local_model_dir
from service.datasets_io import DatasetError, read_rows
from service.db import get_engine, make_sessionmaker
from service.jobs import add_event
from service.leases import (
    lease_job,
    load_owned_job,
    worker_identity,
    write_progress,
)
from service.lifecycle import JobStatus, transition
from service.settings import Settings, get_settings
from service.store import checkpoint_prefix, get_store
from service.store.base import ArtifactStore, ChecksumMismatch, StoreError
from service.tables import Dataset, Job
from service.vocabulary import EventKind
from worker.callbacks import JobCallbacks, eval_metrics, restore_checkpoint
from worker.heartbeat import Heartbeat
from worker.job_spec import JobSpec, job_spec
from worker.tracking import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    Published,
    Tracking,
    drop_stale_snapshots,
    start_tracking,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


OUT_OF_MEMORY_ADVICE = (
    "the device ran out of memory; use a smaller training.batch_size with a larger "
    "training.grad_accum (the same effective batch), or a smaller training.max_length"
)


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def release_accelerator_memory() -> None:
    """A long-lived worker runs job after job: give the last job's cached GPU memory back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class JobFailure(Exception):
    """A failure we can explain to the user in one line (no stack trace leaves the worker)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Outcome:
    """What happened to one delivery (returned for logs and tests)."""

    status: str
    adapter_id: str | None = None


def run_job(
    job_id: str,
    settings: Settings | None = None,
    sessions: sessionmaker[Session] | None = None,
    store: ArtifactStore | None = None,
    owner: str | None = None,
) -> Outcome:
    settings = settings or get_settings()
    sessions = sessions or make_sessionmaker(get_engine(settings.database_url, settings.db_limits))
    runner = JobRunner(
        job_id, settings, sessions, store or get_store(settings), owner or worker_identity()
    )
    return runner.run()


class JobRunner:
    def __init__(
        self,
        job_id: str,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        owner: str,
    ) -> None:
        self.job_id = job_id
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.owner = owner

    def run(self) -> Outcome:
        with self.sessions() as session:
            job = lease_job(session, self.job_id, self.owner, self.settings.lease_seconds)
        if job is None:
            log.info(
                "job %s: not leased (missing, finished, or held by a live worker)", self.job_id
            )
            return Outcome("skipped")
        log.info("job %s: leased by %s (attempt %d)", job.id, self.owner, job.attempts)
        heartbeat = Heartbeat(
            self.sessions,
            job.id,
            self.owner,
            self.settings.heartbeat_interval_s,
            self.settings.lease_seconds,
        )
        heartbeat.start()
        try:
            return self._run_leased(job, heartbeat)
        except JobFailure as exc:
            return self._fail(exc.code, exc.message)
        except ConfigError as exc:
            return self._fail("invalid_config", str(exc))
        except Exception as exc:
            if _out_of_memory(exc):
                log.warning("job %s: out of memory: %s", self.job_id, exc)
                return self._fail("out_of_memory", OUT_OF_MEMORY_ADVICE)
            log.exception("job %s: unexpected failure", self.job_id)
            return self._fail("internal_error", "training failed; the operator can see the logs")
        finally:
            heartbeat.stop()
            release_accelerator_memory()

    # -- stages ----------------------------------------------------------------------------
    def _run_leased(self, job: Job, heartbeat: Heartbeat) -> Outcome:
        base_model = self._base_model_path(job.base_model)
        spec = job_spec(job, base_model)
        with tempfile.TemporaryDirectory(prefix=f"adalora-{job.id}-") as tmp_name:
            tmp = Path(tmp_name)
            resumed = self._restore_checkpoint(job, tmp / CHECKPOINT_DIR)
            tracking = start_tracking(job, self.store, tmp, resumed["step"] if resumed else None)
            try:
                return self._train(job, spec, base_model, heartbeat, tmp, resumed, tracking)
            finally:
                if tracking is not None:  # not already closed by a success: a failure
                    self._end_tracking(tracking, FAILED)

    def _train(
        self,
        job: Job,
        spec: JobSpec,
        base_model: str,
        heartbeat: Heartbeat,
        tmp: Path,
        resumed: dict[str, Any] | None,
        tracking: Tracking | None,
    ) -> Outcome:
        train_rows, eval_rows = self._read_datasets(job, tmp)
        checkpoint_dir = tmp / CHECKPOINT_DIR
        init_from = self._starting_adapter(job, tmp / "init-from")
        callbacks = JobCallbacks(
            self.sessions,
            self.store,
            job.id,
            self.owner,
            heartbeat,
            budget=job.budget or {},
            progress_write_interval_s=self.settings.progress_write_interval_s,
            checkpoint=resumed,
            tracking=tracking,
        )
        # torch loads only in the worker; one device is the same call as the plain trainer.
        from adalora_core.launcher import train_data_parallel

        result = train_data_parallel(
            spec.devices,
            base_model=base_model,
            base_model_name=job.base_model,
            task=spec.task,
            train_rows=train_rows,
            eval_rows=eval_rows,
            plan=spec.plan,
            output_dir=tmp / "adapter",
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            precision=spec.precision,
            init_from=init_from,
        )
        if heartbeat.lost.is_set():
            log.warning("job %s: lease lost during training; leaving it to its owner", job.id)
            return Outcome("lost")
        if result.cancelled:
            if tracking is not None:
                self._end_tracking(tracking, CANCELLED)
            return self._finish_cancelled()
        return self._publish(job, spec, base_model, result, tmp, tracking)

    def _end_tracking(self, tracking: Tracking, status: str) -> None:
        """Close the trackers of a job that did not succeed and record what they noted (best
        effort: the job's own end matters more)."""
        tracking.close(status)
        values, events = tracking.take()
        if not values and not events:
            return
        try:
            with self.sessions() as session:
                written = write_progress(session, self.job_id, self.owner, values, events)
        except Exception:
            log.warning("job %s: could not record the trackers' notes", self.job_id, exc_info=True)
            return
        if written and "tracking" in values:
            drop_stale_snapshots(self.store, self.job_id, values["tracking"])

    def _base_model_path(self, name: str) -> str:
        path = self.settings.base_models.get(name)
        if path is None:
            raise JobFailure("unknown_base_model", f"base model {name!r} is not registered here")
        return local_model_dir(path, self.settings.home)

    def _read_datasets(
        self, job: Job, tmp: Path
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        with self.sessions() as session:
            train_ds = session.get(Dataset, job.dataset_id) if job.dataset_id else None
            eval_ds = (
                session.get(Dataset, job.validation_dataset_id)
                if job.validation_dataset_id
                else None
            )
        if train_ds is None:
            raise JobFailure("dataset_missing", "the training data set no longer exists")
        if job.validation_dataset_id and eval_ds is None:
            raise JobFailure("dataset_missing", "the validation data set no longer exists")
        train_rows = self._read_dataset(train_ds, tmp)
        return train_rows, (self._read_dataset(eval_ds, tmp) if eval_ds is not None else None)

    def _read_dataset(self, dataset: Dataset, tmp: Path) -> list[dict[str, Any]]:
        path = tmp / f"{dataset.id}.{dataset.format}"
        try:
            self.store.get_file(dataset.storage_key, path, dataset.sha256)
        except ChecksumMismatch as exc:
            raise JobFailure(
                "dataset_corrupt", f"data set {dataset.id} does not match its checksum"
            ) from exc
        except StoreError as exc:
            # The store's message names the storage key: it goes to the log, not to the user.
            log.warning("job %s: data set %s unreadable: %s", self.job_id, dataset.id, exc)
            raise JobFailure(
                "dataset_unreadable", f"data set {dataset.id} cannot be read from the store"
            ) from exc
        try:
            return read_rows(path, dataset.format, header=dataset.has_header)
        except DatasetError as exc:
            raise JobFailure("invalid_dataset", f"data set {dataset.id}: {exc}") from exc

    def _starting_adapter(self, job: Job, dest: Path) -> Path | None:
        """A continued job's starting adapter (``init_from``), unpacked from the store."""
        source = (job.hyperparameters or {}).get("init_from")
        if not source:
            return None
        from adalora_core.formats.bundle import unzip_bundle

        try:
            data = self.store.open_read(source["storage_key"], source.get("sha256"))
        except ChecksumMismatch as exc:
            raise JobFailure(
                "init_from_corrupt", "the adapter to continue from does not match its checksum"
            ) from exc
        except StoreError as exc:
            log.warning("job %s: starting adapter unreadable: %s", job.id, exc)
            raise JobFailure(
                "init_from_missing", "the adapter to continue from is no longer in the store"
            ) from exc
        return unzip_bundle(data, dest)

    def _restore_checkpoint(self, job: Job, checkpoint_dir: Path) -> dict[str, Any] | None:
        """Fetch the last uploaded checkpoint so ``train`` resumes from it."""
        record = (job.progress or {}).get("checkpoint")
        if not job.checkpoint_key or not isinstance(record, dict):
            return None
        if record.get("key") != job.checkpoint_key:
            return None
        try:
            restore_checkpoint(
                self.store,
                job.checkpoint_key,
                record.get("sha256"),
                checkpoint_dir / str(record["dir"]),
            )
        except (StoreError, KeyError, ValueError) as exc:
            log.warning("job %s: checkpoint unusable (%s); starting over", job.id, exc)
            return None
        log.info("job %s: resuming from %s", job.id, job.checkpoint_key)
        with self.sessions() as session:
            write_progress(
                session,
                job.id,
                self.owner,
                {},
                [("log", {"message": "resumed", "step": record.get("step"), "key": record["key"]})],
            )
        return record

    def _publish(
        self,
        job: Job,
        spec: JobSpec,
        base_model: str,
        result: Any,
        tmp: Path,
        tracking: Tracking | None,
    ) -> Outcome:
        with self.sessions() as session:
            owned = load_owned_job(session, job.id, self.owner)
            if owned is None:
                return Outcome("lost")
            cancelled = owned.status == JobStatus.CANCELLING.value
            if not cancelled:
                transition(owned, JobStatus.UPLOADING)
                session.commit()
        if cancelled:  # asked after the trainer's last poll (final evaluation or save)
            if tracking is not None:
                self._end_tracking(tracking, CANCELLED)
            return self._finish_cancelled()

        stored = store_artifacts(
            self.store,
            job.tenant_id,
            Path(result.adapter_dir),
            tmp,
            merged_base=base_model if spec.merged else None,
        )
        notes: tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]] = ({}, [])
        if tracking is not None:
            tracking.publish(published_record(job, stored, tmp / "peft.zip"))
            tracking.close(SUCCEEDED)
            notes = tracking.take()
        try:
            outcome = self._commit_adapter(job, result, stored, notes)
        except BaseException:
            discard_artifacts(self.store, stored.formats)
            raise
        if outcome.status != "succeeded":
            discard_artifacts(self.store, stored.formats)
        return outcome

    def _commit_adapter(
        self,
        job: Job,
        result: Any,
        stored: StoredArtifacts,
        notes: tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]],
    ) -> Outcome:
        """The adapter row and the job's success (with what its trackers noted), in one
        transaction, if we still hold it."""
        meta, adapter_id = stored.weights.meta, stored.adapter_id
        with self.sessions() as session:
            owned = load_owned_job(session, job.id, self.owner)
            if owned is None or owned.status != JobStatus.UPLOADING.value:
                log.warning("job %s: lease lost while uploading; artifacts discarded", job.id)
                return Outcome("lost")
            name = owned.name
            if name is not None and find_by_name(session, owned.tenant_id, name) is not None:
                # Names are unique per tenant; one taken since submission (an import, another
                # job) leaves this adapter nameless rather than failing a finished run.
                message = f"an adapter named {name!r} exists; this one is published without a name"
                add_event(session, owned, EventKind.WARNING, {"message": message})
                name = None
            adapter = add_adapter_row(
                session,
                stored,
                tenant_id=owned.tenant_id,
                base_model=owned.base_model,
                job_id=owned.id,
                name=name,
            )
            owned.adapter_id = adapter_id
            current = stored.weights.total_rank
            owned.budget = {**(owned.budget or {}), **meta.budget, "current": current}
            owned.metrics = {**(owned.metrics or {}), **eval_metrics(meta.metrics)}
            if result.best_step is not None:  # the best evaluation's adapter, not the last
                owned.metrics["best_step"] = result.best_step
                adapter.metrics = {**adapter.metrics, "best_step": result.best_step}
            if result.trained_tokens is not None:
                owned.metrics["trained_tokens"] = result.trained_tokens
            owned.progress = {**(owned.progress or {}), "step": result.steps}
            values, events = notes
            if result.stopped_early:
                patience = owned.hyperparameters["training"]["early_stop_patience"]
                message = (
                    f"stopped early at update {result.steps}: {patience} evaluations in a row "
                    "did not lower the validation loss"
                )
                events = [*events, (EventKind.LOG, {"message": message, "step": result.steps})]
            if "tracking" in values:
                owned.tracking = values["tracking"]
            for kind, data in events:
                add_event(session, owned, kind, data)
            transition(owned, JobStatus.SUCCEEDED, adapter_id=adapter_id)
            session.commit()
        self._drop_checkpoints()
        if owned.tracking:
            drop_stale_snapshots(self.store, job.id, owned.tracking)
        log.info("job %s: succeeded, adapter %s", job.id, adapter_id)
        return Outcome("succeeded", adapter_id)

    def _finish_cancelled(self) -> Outcome:
        with self.sessions() as session:
            job = load_owned_job(session, self.job_id, self.owner)
            if job is None:
                return Outcome("lost")
            if job.status == JobStatus.RUNNING.value:
                transition(job, JobStatus.CANCELLING)
            transition(job, JobStatus.CANCELLED)
            session.commit()
        self._drop_checkpoints()
        log.info("job %s: cancelled", self.job_id)
        return Outcome("cancelled")

    def _fail(self, code: str, message: str) -> Outcome:
        log.warning("job %s failed: %s: %s", self.job_id, code, message)
        with self.sessions() as session:
            job = load_owned_job(session, self.job_id, self.owner)
            if job is None:
                return Outcome("lost")
            add_event(session, job, "error", {"code": code, "message": message})
            if job.status == JobStatus.CANCELLING.value:
                transition(job, JobStatus.CANCELLED)
                status = "cancelled"
            else:
                job.error = {"code": code, "message": message}
                transition(job, JobStatus.FAILED, code=code)
                status = "failed"
            session.commit()
        self._drop_checkpoints()  # a failed job is not resumed
        return Outcome(status)

    def _drop_checkpoints(self) -> None:
        """A finished job never resumes, so its training state only takes space: everything
        under its checkpoint prefix goes but the adapters its checkpoint rows keep. Not just the
        recorded key: a run killed between uploading a checkpoint and recording it leaves one
        that no row names."""
        prefix = checkpoint_prefix(self.job_id)
        try:
            with self.sessions() as session:
                kept = {
                    info["storage_key"]
                    for row in checkpoint_rows.job_checkpoints(session, self.job_id)
                    for info in (row.formats or {}).values()
                }
            for obj in list(self.store.list_objects(prefix + "/")):
                if obj.key not in kept:
                    self.store.delete(obj.key)
        except (StoreError, SQLAlchemyError):
            log.warning("job %s: could not delete checkpoints under %s", self.job_id, prefix)


def published_record(job: Job, stored: StoredArtifacts, bundle: Path) -> Published:
    """What the trackers get on success: the adapter's id, name, formats and sha256 as tags,
    the final ranks JSON, and the PEFT bundle."""
    meta = stored.weights.meta
    tags = {
        "adapter.id": stored.adapter_id,
        "adapter.name": job.name or "",
        "adapter.formats": ",".join(stored.formats),
    }
    tags.update({f"adapter.sha256.{fmt}": info["sha256"] for fmt, info in stored.formats.items()})
    ranks = {"budget": dict(meta.budget), "modules": list(meta.modules), "history": meta.history}
    return Published(tags=tags, ranks=ranks, bundle=bundle if bundle.exists() else None)
