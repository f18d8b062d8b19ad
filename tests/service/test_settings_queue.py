"""Settings defaults/env and the queue producer against real brokers (SQLite transport, Redis)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.queue import TaskProducer, enqueue_training_job
from service.settings import Settings, get_settings
from service.vocabulary import TRAIN_TASK, TRAINING_QUEUE


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h")
    assert settings.database_url == f"sqlite:///{tmp_path / 'h' / 'adalora.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'h' / 'broker.sqlite'}"
    assert settings.store_dir == tmp_path / "h" / "artifacts"
    assert settings.store_backend == "local"


def test_env_prefix_and_json_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADALORA_HOME", str(tmp_path))
    monkeypatch.setenv("ADALORA_BASE_MODELS", '{"bert-tiny": "/models/bert-tiny"}')
    monkeypatch.setenv("ADALORA_MAX_COLUMNS", "7")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.home == tmp_path
        assert settings.base_models["bert-tiny"] == "/models/bert-tiny"
        assert settings.max_columns == 7
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()


def test_bundled_minilm_is_registered_when_installed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert Path(settings.base_models["all-MiniLM-L6-v2"]).is_dir()


def _drain(broker_url: str) -> list[tuple[str, list[str]]]:
    """Read what the producer sent, the way a Celery worker would see it."""
    from kombu import Connection, Queue

    received: list[tuple[str, list[str]]] = []
    with Connection(broker_url) as connection:
        queue = Queue(TRAINING_QUEUE, routing_key=TRAINING_QUEUE)
        with connection.SimpleQueue(queue) as simple:
            while True:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    break
                body = message.decode()
                received.append((message.headers["task"], body[0]))
                message.ack()
    return received


def test_sends_task_by_name_on_sqlite_transport(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    enqueue_training_job("job_1", settings)
    producer = TaskProducer(settings.broker_url)
    producer.send_train_job("job_2")
    producer.ping()
    assert _drain(settings.broker_url) == [(TRAIN_TASK, ["job_1"]), (TRAIN_TASK, ["job_2"])]


def test_sends_task_on_redis(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/15"
    producer = TaskProducer(url)
    job_id = f"job_{uuid.uuid4().hex}"
    producer.send_train_job(job_id)
    assert (TRAIN_TASK, [job_id]) in _drain(url)


def test_unreachable_broker_raises() -> None:
    producer = TaskProducer("redis://127.0.0.1:1/0")
    with pytest.raises(Exception):  # noqa: B017 - kombu raises OperationalError subclasses
        producer.ping(timeout=0.5)


def test_unreachable_broker_fails_send_without_retrying() -> None:
    producer = TaskProducer("redis://127.0.0.1:1/0")
    with pytest.raises(Exception) as info:  # noqa: B017
        producer.send_train_job("job_x")
    assert "Connection refused" in str(info.value) or "Error" in type(info.value).__name__
