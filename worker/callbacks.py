"""Training callbacks that report into the job row: progress, evals, checkpoints, cancellation."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from adalora_core.formats.bundle import zip_bundle
from registry.store import checkpoint_key
from registry.store.base import ArtifactStore
from worker.heartbeat import Heartbeat
from worker.leases import cancel_requested, write_progress

log = logging.getLogger(__name__)


def eval_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Eval results as the job row shows them: ``eval_<name>``, next to ``train_loss``."""
    return {k if k.startswith("eval_") else f"eval_{k}": v for k, v in metrics.items()}


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class JobCallbacks:
    """Implements adalora_core's TrainCallbacks for one leased job.

    Progress is written at most every ``progress_write_interval_s`` (and always for the last
    step); eval results and checkpoints are written as they come.
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

    def on_progress(self, event: Any) -> None:
        if event.budget is not None:
            self._budget["current"] = int(event.budget)
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
        with self._sessions() as session:
            write_progress(
                session,
                self._job_id,
                self._owner,
                {
                    "progress": progress,
                    "budget": dict(self._budget),
                    "metrics": dict(self._metrics),
                },
                [("progress", data)],
            )

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: _finite(v) for k, v in metrics.items()}
        self._metrics.update(eval_metrics(clean))
        with self._sessions() as session:
            write_progress(
                session,
                self._job_id,
                self._owner,
                {"metrics": dict(self._metrics)},
                [("eval", {"step": int(step), "metrics": clean})],
            )

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Upload the checkpoint so a re-delivered job resumes from it, then drop the old one."""
        path = Path(path)
        key = checkpoint_key(self._job_id, step)
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                archive = Path(tmp) / "ckpt.zip"
                zip_bundle(path, archive)
            else:
                archive = path
            sha256, size = self._store.put_file(key, archive)
        previous = self.checkpoint["key"] if self.checkpoint else None
        self.checkpoint = {
            "key": key,
            "dir": path.name,
            "step": int(step),
            "sha256": sha256,
            "size_bytes": size,
        }
        progress = {**self._progress, "checkpoint": self.checkpoint}
        with self._sessions() as session:
            written = write_progress(
                session,
                self._job_id,
                self._owner,
                {"checkpoint_key": key, "progress": progress},
                [("log", {"message": "checkpoint saved", "step": int(step), "key": key})],
            )
        if written and previous and previous != key:
            self._store.delete(previous)

    def should_stop(self) -> bool:
        if self._heartbeat.lost.is_set():
            return True
        with self._sessions() as session:
            if cancel_requested(session, self._job_id):
                self.cancel_seen = True
        return self.cancel_seen


def restore_checkpoint(store: ArtifactStore, key: str, sha256: str | None, dest: Path) -> Path:
    """Unpack a stored checkpoint zip into ``dest`` (emptied first)."""
    from adalora_core.formats.bundle import unzip_bundle

    if dest.exists():
        shutil.rmtree(dest)
    data = store.open_read(key, sha256)
    return unzip_bundle(data, dest)
