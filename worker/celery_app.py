"""The Celery app that consumes training jobs.

The SQL job row is the truth, so there is no result backend. Delivery is at-least-once
(late acks, unacked tasks go back to the queue when a worker dies); the SQL lease in
``service.leases`` makes a second delivery of the same job harmless.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings, get_settings
from service.vocabulary import TRAIN_TASK, TRAINING_QUEUE

# Redis hands an unacked task to another worker once this many seconds pass without an ack.
# A training job can run for hours, so keep it well above the longest job; a lost worker is
# found sooner by the reconciler (SQL lease expiry), which re-queues the job itself.
REDIS_VISIBILITY_TIMEOUT_S = 12 * 3600


def is_sql_broker(broker_url: str) -> bool:
    """kombu's SQLAlchemy transport has no fanout exchange, so remote control must be off."""
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("adalora", broker=settings.broker_url, include=["worker.consumer"])
    sql_broker = is_sql_broker(settings.broker_url)
    app.conf.update(
        task_default_queue=TRAINING_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=(
            {} if sql_broker else {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
        ),
        worker_enable_remote_control=not sql_broker,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery()
