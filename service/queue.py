"""The producer side of the training queue: tasks are sent by name, the worker is never imported."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from service.settings import Settings
from service.vocabulary import TRAIN_TASK, TRAINING_QUEUE


def _ensure_sqlite_broker_dir(broker_url: str) -> None:
    """kombu's SQLAlchemy transport on SQLite needs the file's directory to exist."""
    prefix = "sqla+sqlite:///"
    if broker_url.startswith(prefix):
        path = broker_url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


class TaskProducer:
    """Sends ``adalora.train_job`` to the ``training`` queue of ``broker_url``."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._app: Any | None = None
        self._lock = threading.Lock()

    @property
    def celery(self) -> Any:
        with self._lock:
            if self._app is None:
                from celery import Celery

                _ensure_sqlite_broker_dir(self.broker_url)
                self._app = Celery("adalora-producer", broker=self.broker_url)
                self._app.conf.broker_connection_retry_on_startup = False
                # Fail fast instead of blocking a request for seconds: a job that could not be
                # sent stays queued and the reconciler sends it again.
                self._app.conf.broker_transport_options = {"max_retries": 0}
            return self._app

    def send_train_job(self, job_id: str) -> None:
        """Enqueue one job; raises if the broker cannot be reached (the job row stays queued)."""
        self.celery.send_task(TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE, retry=False)

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection within ``timeout`` seconds."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None


_producers: dict[str, TaskProducer] = {}
_producers_lock = threading.Lock()


def producer_for(broker_url: str) -> TaskProducer:
    """One shared producer per broker URL in this process."""
    with _producers_lock:
        producer = _producers.get(broker_url)
        if producer is None:
            producer = _producers[broker_url] = TaskProducer(broker_url)
        return producer


def enqueue_training_job(job_id: str, settings: Settings) -> None:
    """Send ``adalora.train_job(job_id)`` to the training queue (raises if the broker is down)."""
    producer_for(settings.broker_url).send_train_job(job_id)
