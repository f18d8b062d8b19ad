"""A job's experiment trackers (TensorBoard, MLflow, Weights & Biases), fed by the training
callbacks through each library's own client.

A tracker never holds the training up: each has its own thread and a bounded queue; the
training thread only puts records and never waits (a full queue drops the point and counts
it). A tracker that raises is switched off with one ``warning`` event on the job, and the run
goes on. What the job row must remember (the run ids, so a resumed job continues the same
runs; where the TensorBoard event files are stored) comes back through :meth:`Tracking.take`,
which the training thread drains into its own writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import queue
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adalora_core.inject import rank_modules
from application.heatmap import draw_rank_heatmap
from service.store import tensorboard_key, tensorboard_prefix
from service.store.base import ArtifactStore, StoreError

log = logging.getLogger(__name__)

QUEUE_SIZE = 2000  # records waiting per tracker; more are dropped and counted
CLOSE_TIMEOUT_S = 60.0  # how long the end of a job waits for a tracker to finish
# MLflow retries a refused connection for minutes by default; a job's tracker gives up sooner.
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"

Scalar = str | int | float | bool


# -- what the trackers are told ----------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    job_id: str
    run_name: str  # the job's name, or its id
    params: dict[str, Scalar]
    init_r: int
    resumed_step: int | None  # a resumed job restarts after this step
    previous: dict[str, Any]  # the job row's ``tracking`` from an earlier attempt


@dataclass(frozen=True)
class Step:
    step: int
    values: dict[str, Any]  # name -> float or a 0-d tensor (read on the tracker's thread)


@dataclass(frozen=True)
class Eval:
    step: int
    metrics: dict[str, float | None]


class Allocation:
    """The ranks after a masking step: per-kind and per-layer totals, and the heatmap (drawn
    once, by whichever tracker asks first)."""

    def __init__(self, step: int, ranks: Mapping[str, int], init_r: int) -> None:
        self.step = step
        self.modules = rank_modules(dict(ranks))
        self.init_r = init_r
        self._png: bytes | None = None
        self._lock = threading.Lock()

    def scalars(self) -> dict[str, float]:
        totals: dict[str, float] = {"allocation/total_rank": 0.0}
        for module in self.modules:
            layer = "-" if module["layer"] is None else module["layer"]
            for name in (f"allocation/kind/{module['kind']}", f"allocation/layer/{layer}"):
                totals[name] = totals.get(name, 0.0) + module["rank"]
            totals["allocation/total_rank"] += module["rank"]
        return totals

    def png(self) -> bytes:
        with self._lock:
            if self._png is None:
                title = f"ranks after step {self.step}"
                self._png = draw_rank_heatmap(self.modules, self.init_r, title)
            return self._png


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint was saved: keep what a resumed run needs (TensorBoard's event files)."""

    step: int


@dataclass(frozen=True)
class Published:
    tags: dict[str, str]
    ranks: dict[str, Any]  # the final ranks JSON: budget, modules, history
    bundle: Path | None  # the PEFT bundle's zip


@dataclass(frozen=True)
class Close:
    status: str


# -- the trackers --------------------------------------------------------------------------
class Tracker:
    """One library's client. Every method runs on the tracker's own thread."""

    name = ""

    def open(self, run: RunInfo) -> dict[str, Any]:
        """Start (or continue) the run; what the job row must remember about it."""
        raise NotImplementedError

    def scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def image(self, step: int, tag: str, png: bytes) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any] | None:
        return None

    def published(self, record: Published) -> None:
        raise NotImplementedError

    def close(self, status: str) -> dict[str, Any] | None:
        raise NotImplementedError


def _image(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


class TensorBoardTracker(Tracker):
    """Event files written by ``SummaryWriter`` into a local directory, stored with the job
    (a zip in the artifact store) at every checkpoint and at the end."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, store: ArtifactStore, job_id: str, attempt: int) -> None:
        self.log_dir = log_dir
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.step = 0  # the last step written
        self.writer: Any = None

    def open(self, run: RunInfo) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        stored = run.previous.get("tensorboard")
        if run.resumed_step is not None and stored:
            from adalora_core.formats.bundle import unzip_bundle

            unzip_bundle(self.store.open_read(stored["key"], stored.get("sha256")), self.log_dir)
        purge = run.resumed_step + 1 if run.resumed_step is not None else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        if run.resumed_step is None:
            # The HParams dashboard's records, in this run's own event file (add_hparams would
            # start a second run in a subdirectory).
            for summary in hparams(run.params, {}):
                self.writer.file_writer.add_summary(summary)
        return {}

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.step = max(self.step, step)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, png: bytes) -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(_image(png)), step, dataformats="HWC")

    def snapshot(self) -> dict[str, Any] | None:
        from adalora_core.formats.bundle import zip_bundle

        self.writer.flush()
        key = tensorboard_key(self.job_id, self.attempt, self.step)
        with tempfile.TemporaryDirectory() as tmp:
            archive = zip_bundle(self.log_dir, Path(tmp) / "events.zip")
            sha256, size = self.store.put_file(key, archive)
        return {"tensorboard": {"key": key, "sha256": sha256, "size_bytes": size}}

    def published(self, record: Published) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in record.tags.items())
        self.writer.add_text("adapter", f"| tag | value |\n|---|---|\n{table}")
        ranks = json.dumps(record.ranks, indent=1)
        self.writer.add_text("allocation/final_ranks", f"```\n{ranks}\n```")

    def close(self, status: str) -> dict[str, Any] | None:
        stored = self.snapshot()
        self.writer.close()
        return stored


class MlflowTracker(Tracker):
    """An MLflow run through ``MlflowClient`` (a server, or a file or SQLite store)."""

    name = "mlflow"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.client: Any = None
        self.run_id = ""

    def open(self, run: RunInfo) -> dict[str, Any]:
        for name, value in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.settings.get("tracking_uri"))
        previous = (run.previous.get("mlflow") or {}).get("run_id")
        if previous:
            self.client.update_run(previous, status="RUNNING")
            self.run_id = previous
            return {"mlflow": {"run_id": previous}}
        name = self.settings["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        created = self.client.create_run(
            experiment_id,
            run_name=self.settings.get("run_name") or run.run_name,
            tags={"adalora.job_id": run.job_id},
        )
        self.run_id = created.info.run_id
        params = [Param(k, str(v)) for k, v in run.params.items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        return {"mlflow": {"run_id": self.run_id}}

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, step: int, tag: str, png: bytes) -> None:
        self.client.log_image(self.run_id, _image(png), key=tag.replace("/", "_"), step=step)

    def published(self, record: Published) -> None:
        for key, value in record.tags.items():
            self.client.set_tag(self.run_id, key, value)
        self.client.log_dict(self.run_id, record.ranks, "allocation/final_ranks.json")
        if record.bundle is not None:
            self.client.log_artifact(self.run_id, str(record.bundle), "adapter")

    def close(self, status: str) -> dict[str, Any] | None:
        ending = {SUCCEEDED: "FINISHED", CANCELLED: "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, ending)
        return None


class WandbTracker(Tracker):
    """A W&B run through ``wandb.init`` (online, or offline into ``WANDB_DIR``)."""

    name = "wandb"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.run: Any = None

    def open(self, run: RunInfo) -> dict[str, Any]:
        import wandb

        run_id = (run.previous.get("wandb") or {}).get("run_id") or secrets.token_hex(8)
        self.run = wandb.init(
            project=self.settings["project"],
            entity=self.settings.get("entity"),
            name=self.settings.get("name") or run.run_name,
            tags=list(self.settings.get("tags") or []),
            mode=self.settings["mode"],
            id=run_id,
            resume="allow",
            config=dict(run.params),
            # wandb reads WANDB_DIR once per process; a long-lived worker reads it per job.
            dir=os.environ.get("WANDB_DIR"),
            reinit="create_new",
            settings=wandb.Settings(
                console="off",
                x_disable_stats=True,
                disable_git=True,
                save_code=False,
                silent=True,
            ),
        )
        return {"wandb": {"run_id": run_id}}

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, tag: str, png: bytes) -> None:
        import wandb

        self.run.log({tag: wandb.Image(_image(png))}, step=step)

    def published(self, record: Published) -> None:
        self.run.summary.update(record.tags)
        self.run.tags = (*self.run.tags, f"adapter:{record.tags['adapter.id']}")
        path = Path(self.run.dir) / "final_ranks.json"
        path.write_text(json.dumps(record.ranks))
        self.run.save(str(path), base_path=self.run.dir, policy="now")

    def close(self, status: str) -> dict[str, Any] | None:
        self.run.finish(exit_code=0 if status == SUCCEEDED else 1)
        return None


# -- the threads ---------------------------------------------------------------------------
def redact(text: str) -> str:
    """An error's words without credentials a URL may carry (user:password@host)."""
    return re.sub(r"(?<=//)[^/@\s]+@", "", text)[:500]


@dataclass
class _Notes:
    """What the trackers' threads hand back to the training thread (under a lock)."""

    tracking: dict[str, Any]
    changed: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class _Channel:
    def __init__(self, tracker: Tracker, run: RunInfo, tracking: Tracking) -> None:
        self.tracker = tracker
        self.run = run
        self.tracking = tracking
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped = 0
        self.failed = False
        self.thread = threading.Thread(
            target=self._work, name=f"tracking-{tracker.name}", daemon=True
        )

    def put(self, record: Any) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        self._call(lambda: self.tracker.open(self.run))
        while True:
            record = self.queue.get()
            if isinstance(record, Close):
                if self.failed:
                    return
                self._call(lambda status=record.status: self.tracker.close(status))
                return
            if not self.failed:
                self._call(lambda record=record: self._handle(record))

    def _handle(self, record: Any) -> dict[str, Any] | None:
        tracker = self.tracker
        if isinstance(record, Step):
            values = {k: _number(v) for k, v in record.values.items()}
            tracker.scalars(record.step, {k: v for k, v in values.items() if v is not None})
        elif isinstance(record, Eval):
            metrics = record.metrics.items()
            values = {f"eval/{k.removeprefix('eval_')}": v for k, v in metrics if _finite(v)}
            tracker.scalars(record.step, values)  # type: ignore[arg-type]
        elif isinstance(record, Allocation):
            tracker.scalars(record.step, record.scalars())
            tracker.image(record.step, "allocation/ranks", record.png())
        elif isinstance(record, Snapshot):
            return tracker.snapshot()
        elif isinstance(record, Published):
            tracker.published(record)
        return None

    def _call(self, work: Any) -> None:
        try:
            remembered = work()
        except Exception as exc:
            self.failed = True
            log.warning("job %s: %s failed", self.run.job_id, self.tracker.name, exc_info=True)
            self.tracking.warn(
                f"{self.tracker.name}: {redact(f'{type(exc).__name__}: {exc}')}; the job goes "
                f"on without reporting to {self.tracker.name}"
            )
            return
        if remembered:
            self.tracking.remember(remembered)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)  # a device tensor is read here, off the training thread
    return number if math.isfinite(number) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class Tracking:
    """A job's trackers, each on its own thread. The training thread calls :meth:`step`,
    :meth:`eval`, :meth:`snapshot`; the end of the job :meth:`publish` and :meth:`close`."""

    def __init__(self, trackers: list[Tracker], run: RunInfo) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._notes = _Notes(tracking=dict(run.previous))
        self._channels = [_Channel(tracker, run, self) for tracker in trackers]
        self._closed = False
        for channel in self._channels:
            channel.thread.start()

    # called from the trackers' threads
    def warn(self, message: str) -> None:
        with self._lock:
            self._notes.events.append(("warning", {"message": message}))

    def remember(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._notes.tracking.update(values)
            self._notes.changed = True

    # called from the training thread
    def take(self) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """Row values (``tracking``, when it changed) and events to write with the next write."""
        with self._lock:
            values = {"tracking": dict(self._notes.tracking)} if self._notes.changed else {}
            events, self._notes.events = self._notes.events, []
            self._notes.changed = False
        return values, events

    def step(self, event: Any) -> None:
        values = {
            "train/loss": event.loss_value,
            "train/learning_rate": event.learning_rate,
            "train/budget": event.budget,
            "train/grad_norm": event.grad_norm_value,
            "train/token_accuracy": event.token_accuracy_value,
        }
        self._put(Step(int(event.step), {k: v for k, v in values.items() if v is not None}))
        if event.ranks is not None:
            self._put(Allocation(int(event.step), event.ranks, self.run.init_r))

    def eval(self, step: int, metrics: dict[str, float | None]) -> None:
        self._put(Eval(int(step), dict(metrics)))

    def snapshot(self, step: int) -> None:
        self._put(Snapshot(int(step)))

    def publish(self, record: Published) -> None:
        self._put(record)

    def close(self, status: str, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Let every tracker finish (at most ``timeout_s`` in all); a tracker that does not, or
        that dropped points, is reported as a warning."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        for channel in self._channels:
            with contextlib.suppress(queue.Full):
                channel.queue.put(Close(status), timeout=max(0.0, deadline - time.monotonic()))
        for channel in self._channels:
            channel.thread.join(max(0.0, deadline - time.monotonic()))
            name = channel.tracker.name
            if channel.thread.is_alive():
                self.warn(f"{name}: still busy after {timeout_s:.0f} s; the job ended without it")
            if channel.dropped:
                self.warn(
                    f"{name}: {channel.dropped} point(s) dropped: the tracker fell behind "
                    f"(more than {QUEUE_SIZE} waiting)"
                )

    def _put(self, record: Any) -> None:
        for channel in self._channels:
            channel.put(record)


def flat_params(hyperparameters: Mapping[str, Any]) -> dict[str, Scalar]:
    """Every resolved setting as ``section.name`` -> a scalar, with the ones the service chose
    (``chosen_by_service``, comma-separated)."""
    skip = {"tracking", "warnings", "validation"}
    flat: dict[str, Scalar] = {}
    for key, value in hyperparameters.items():
        if key in skip:
            continue
        if isinstance(value, Mapping):
            for name, inner in value.items():
                flat[f"{key}.{name}"] = _scalar(inner)
        else:
            flat[key] = _scalar(value)
    return flat


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else json.dumps(value, sort_keys=True)


def start_tracking(
    job: Any, store: ArtifactStore, work_dir: Path, resumed_step: int | None
) -> Tracking | None:
    """The job's trackers, started (None when its settings name none)."""
    hyper = job.hyperparameters or {}
    settings = hyper.get("tracking")
    if not settings:
        return None
    trackers: list[Tracker] = []
    for name in settings["report_to"]:
        if name == "tensorboard":
            log_dir = work_dir / "tensorboard"
            trackers.append(TensorBoardTracker(log_dir, store, job.id, int(job.attempts)))
        elif name == "mlflow":
            trackers.append(MlflowTracker(settings["mlflow"]))
        elif name == "wandb":
            trackers.append(WandbTracker(settings["wandb"]))
    run = RunInfo(
        job_id=job.id,
        run_name=job.name or job.id,
        params=flat_params(hyper),
        init_r=int(hyper["adalora"]["init_r"]),
        resumed_step=resumed_step,
        previous=dict(job.tracking or {}),
    )
    return Tracking(trackers, run)


def drop_stale_snapshots(store: ArtifactStore, job_id: str, tracking: Mapping[str, Any]) -> None:
    """Delete the job's TensorBoard snapshots other than the one its row records (a failure
    costs space only: the store's garbage collection finds them)."""
    keep = (tracking.get("tensorboard") or {}).get("key")
    try:
        for stored in list(store.list_objects(tensorboard_prefix(job_id) + "/")):
            if stored.key != keep:
                store.delete(stored.key)
    except StoreError:
        log.warning("job %s: could not delete old TensorBoard snapshots", job_id)
