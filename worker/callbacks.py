"""Training callbacks that report into the job row: progress, evals, checkpoints, cancellation."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.checkpoint import ADAPTER_DIR
from adalora_core.formats.bundle import zip_bundle
from service import checkpoints as checkpoint_rows
from service.leases import cancel_requested, write_progress
from service.store import checkpoint_bundle_key, checkpoint_key
from service.store.base import ArtifactStore, StoreError
from service.tables import Job
from service.vocabulary import ArtifactFormat
from worker.heartbeat import Heartbeat
from worker.tracking import Tracking

log = logging.getLogger(__name__)
DB_RETRY_S = 1.0  # after a failed write, train on for this long before trying the database again


SINGLE_CLASS_WARNING = (
    "the finished adapter gives the same label to every validation row: it has not learned the "
    "task. This usually means the learning rate is too high for this data set; resubmit with a "
    "lower training.learning_rate (half of this job's is a good first try)"
)


def eval_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Eval results as the job row shows them: ``eval_<name>``, next to ``train_loss``."""
    return {k if k.startswith("eval_") else f"eval_{k}": v for k, v in metrics.items()}


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class JobCallbacks:
    """Implements adalora_core's TrainCallbacks for one leased job.

    Progress is written at most every ``progress_write_interval_s`` (and always for the last
    step); eval results and checkpoints are written as they come. While the database is
    unreachable, training goes on: row values and events are kept in memory and written with
    the first write that succeeds (the lease, renewed by the heartbeat, bounds how long).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        job_id: str,
        owner: str,
        heartbeat: Heartbeat,
        budget: dict[str, Any],
        progress_write_interval_s: float,
        checkpoint: dict[str, Any] | None = None,
        tracking: Tracking | None = None,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._job_id = job_id
        self._owner = owner
        self._heartbeat = heartbeat
        self._budget = dict(budget)
        self._interval = progress_write_interval_s
        self._last_write = -math.inf
        self._metrics: dict[str, Any] = {}
        self.checkpoint = checkpoint  # the last uploaded one: {key, dir, step, sha256, size}
        self._progress: dict[str, Any] = {}
        self.cancel_seen = False
        self._pending_values: dict[str, Any] = {}
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._retry_at = -math.inf
        self._superseded: list[str] = []  # checkpoint keys to delete once the row moves on
        self._new_checkpoints: list[dict[str, Any]] = []  # rows to record with the next write
        self._tracking = tracking  # every step goes to the trackers; their notes come back

    def on_progress(self, event: Any) -> None:
        if self._tracking is not None:
            self._tracking.step(event)
        if event.budget is not None:
            self._budget["current"] = int(event.budget)
        for name in ("initial", "target"):
            value = getattr(event, f"{name}_budget", None)
            if value is not None:
                self._budget[name] = int(value)
        self._progress = {
            "step": int(event.step),
            "total_steps": int(event.total_steps),
            "epoch": float(event.epoch),
        }
        if self.checkpoint is not None:
            self._progress["checkpoint"] = self.checkpoint
        now = time.monotonic()
        last = event.step >= event.total_steps
        if now - self._last_write < self._interval and not last:
            return
        self._last_write = now
        progress = dict(self._progress)
        loss = _finite(event.loss)
        data = {
            "step": int(event.step),
            "total_steps": int(event.total_steps),
            "epoch": float(event.epoch),
            "loss": loss,
            "budget": self._budget.get("current"),
            "learning_rate": _finite(event.learning_rate),
        }
        self._metrics["train_loss"] = loss
        accuracy = event.token_accuracy
        if accuracy is not None:  # language-model tasks
            data["token_accuracy"] = self._metrics["train_mean_token_accuracy"] = _finite(accuracy)
        values = {
            "progress": progress,
            "budget": dict(self._budget),
            "metrics": dict(self._metrics),
        }
        held = self._write(values, [("progress", data)]) is None
        # The run's record must be complete before it is published: wait out an outage.
        while last and held and not self._heartbeat.lost.is_set():
            time.sleep(max(0.0, self._retry_at - time.monotonic()))
            held = self._write({}, []) is None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: _finite(v) for k, v in metrics.items()}
        if self._tracking is not None:
            self._tracking.eval(step, clean)
        self._metrics.update(eval_metrics(clean))
        events: list[tuple[str, dict[str, Any]]] = [("eval", {"step": int(step), "metrics": clean})]
        final = step >= int(self._progress.get("total_steps") or 0) > 0
        if final and clean.get("predicted_classes") == 1.0:
            events.append(("warning", {"message": SINGLE_CLASS_WARNING, "step": int(step)}))
        self._write({"metrics": dict(self._metrics)}, events)

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Upload the checkpoint so a re-delivered job resumes from it; the one it replaces goes
        once the row names the new one."""
        path = Path(path)
        key = checkpoint_key(self._job_id, step)
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                archive = Path(tmp) / "ckpt.zip"
                zip_bundle(path, archive)
            else:
                archive = path
            sha256, size = self._store.put_file(key, archive)
            if (path / ADAPTER_DIR).is_dir():
                self._new_checkpoints.append(
                    self._checkpoint_row(step, path / ADAPTER_DIR, Path(tmp) / "peft.zip")
                )
        if self._tracking is not None:
            self._tracking.snapshot(step)
        previous = self.checkpoint["key"] if self.checkpoint else None
        self.checkpoint = {
            "key": key,
            "dir": path.name,
            "step": int(step),
            "sha256": sha256,
            "size_bytes": size,
        }
        if previous and previous != key:
            self._superseded.append(previous)
        progress = {**self._progress, "checkpoint": self.checkpoint}
        self._write(
            {"checkpoint_key": key, "progress": progress},
            [("log", {"message": "checkpoint saved", "step": int(step), "key": key})],
        )

    def _checkpoint_row(self, step: int, bundle: Path, archive: Path) -> dict[str, Any]:
        """Store the step's adapter; the checkpoint row that will name it."""
        key = checkpoint_bundle_key(self._job_id, step, ArtifactFormat.PEFT)
        sha256, size = self._store.put_file(key, zip_bundle(bundle, archive))
        return {
            "id": checkpoint_rows.checkpoint_id(),
            "step": int(step),
            "metrics": dict(self._metrics),
            "budget": dict(self._budget),
            "formats": {
                ArtifactFormat.PEFT: {"storage_key": key, "sha256": sha256, "size_bytes": size}
            },
            "size_bytes": size,
        }

    def _record_checkpoints(self, session: Session, job: Job) -> None:
        """Inside the progress write: the new checkpoint rows, then the job's keep policy (the
        artifacts of rows it drops go once this commits)."""
        if not self._new_checkpoints:
            return
        for row in self._new_checkpoints:
            checkpoint_rows.record_checkpoint(
                session,
                job.tenant_id,
                job.id,
                {**row, "base_model": job.base_model, "task": job.task},
            )
        keep = ((job.hyperparameters or {}).get("checkpoints") or {}).get("keep")
        self._superseded.extend(checkpoint_rows.prune(session, job.id, keep))

    def _drop_superseded(self) -> None:
        """Delete checkpoints replaced by one the row now records. Until a write lands they
        stay: the row still names one of them, and a resumed run would need it. A failed
        delete costs space, not the run: the job's end deletes its whole checkpoint prefix."""
        for key in self._superseded:
            try:
                self._store.delete(key)
            except StoreError:
                log.warning("job %s: could not delete checkpoint %s", self._job_id, key)
        self._superseded.clear()

    def _write(
        self, values: dict[str, Any], events: list[tuple[str, dict[str, Any]]]
    ) -> bool | None:
        """Write ``values``/``events`` together with anything an outage held back. False when
        the lease is gone; None when the database is unreachable (they wait for the next
        write)."""
        self._pending_values.update(values)
        self._pending_events.extend(events)
        if self._tracking is not None:  # the trackers' run ids and warnings go with it
            noted, warnings = self._tracking.take()
            self._pending_values.update(noted)
            self._pending_events.extend(warnings)
        if time.monotonic() < self._retry_at:
            return None
        try:
            with self._sessions() as session:
                written = write_progress(
                    session,
                    self._job_id,
                    self._owner,
                    dict(self._pending_values),
                    list(self._pending_events),
                    also=self._record_checkpoints,
                )
        except OperationalError as exc:
            self._retry_at = time.monotonic() + DB_RETRY_S
            log.warning(
                "job %s: database unreachable (%s); %d event(s) held until it is back",
                self._job_id,
                exc.__class__.__name__,
                len(self._pending_events),
            )
            return None
        self._pending_values.clear()
        self._pending_events.clear()
        self._new_checkpoints.clear()
        self._retry_at = -math.inf
        if written:
            self._drop_superseded()  # the row now names the newest checkpoint
        return written

    def should_stop(self) -> bool:
        if self._heartbeat.lost.is_set():
            return True
        if time.monotonic() < self._retry_at:
            return self.cancel_seen
        try:
            with self._sessions() as session:
                if cancel_requested(session, self._job_id):
                    self.cancel_seen = True
        except OperationalError:  # the database is down: keep training, the lease decides
            self._retry_at = time.monotonic() + DB_RETRY_S
        return self.cancel_seen


def restore_checkpoint(store: ArtifactStore, key: str, sha256: str | None, dest: Path) -> Path:
    """Unpack a stored checkpoint zip into ``dest`` (emptied first)."""
    from adalora_core.formats.bundle import unzip_bundle

    if dest.exists():
        shutil.rmtree(dest)
    data = store.open_read(key, sha256)
    return unzip_bundle(data, dest)
