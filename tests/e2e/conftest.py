from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

from service_fixtures import save_tiny_bert, write_sentiment_csv  # noqa: E402

from tests.conftest import require_service  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def train_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "train.csv", 48)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away database on the shared server, dropped afterwards."""
    import psycopg

    name = f"adalora_e2e_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", str(exc))
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database number of our own, so parallel runs never share a queue."""
    import redis

    try:
        redis.Redis(host=REDIS_HOST, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        require_service("Redis", str(exc))
    for db in secrets.SystemRandom().sample(range(1, 16), 15):
        client = redis.Redis(host=REDIS_HOST, db=db)
        # Claim the number with a marker key; another run's marker means "taken".
        if client.dbsize() == 0 and client.set("adalora-e2e-claim", "1", nx=True, ex=3600):
            yield f"redis://{REDIS_HOST}:6379/{db}"
            client.flushdb()
            return
    pytest.fail("no free Redis database number")
